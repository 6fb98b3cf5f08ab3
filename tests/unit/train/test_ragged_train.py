"""Training and prediction on ragged datasets: frames of different atoms, open beside periodic."""

import json

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from scalepool.data import FrameSet
from scalepool.models import AtomsBatch, build_branch, fit_species_statistics, load_model
from scalepool.testing import TOLERANCES
from scalepool.train import TrainError, evaluate_forces, predict_cache, predict_forces, train
from scalepool.units import EV_TO_MEV

TINY = {"n_features": 4, "n_interactions": 1, "n_rbf": 4, "cutoff": 3.0}


def ragged_frames(n=8) -> FrameSet:
    """Open molecules and periodic Cu-Ni cells, every frame labelled by ASE's EMT."""
    images = []
    for i in range(n):
        if i % 2:
            atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1 + i % 3, 1, 1))
            atoms.numbers[0] = 28
        else:
            atoms = molecule(["H2O", "CH4", "NH3", "C2H6"][(i // 2) % 4])
        atoms.rattle(0.03, seed=i)
        atoms.calc = EMT()
        atoms.get_forces()
        images.append(atoms)
    frames = FrameSet.from_atoms(images)
    assert frames.ragged
    return frames


@pytest.fixture(scope="module")
def frames():
    return ragged_frames()


def tiny_model(dtype=torch.float64):
    torch.manual_seed(0)
    return build_branch("short", **TINY).to(dtype)


def test_batched_prediction_matches_each_frame_alone(frames):
    model = tiny_model()
    pred = predict_forces(model, frames, batch_size=4, dtype=torch.float64)
    tol = TOLERANCES[torch.float64]
    for f in range(frames.n_frames):
        one = frames.frame(f)  # fixed layout, one frame: the pre-existing batching path
        alone = model(AtomsBatch.from_frameset(one, device="cpu", dtype=torch.float64))
        rows = slice(pred["offsets"][f], pred["offsets"][f + 1])
        np.testing.assert_allclose(pred["forces"][rows], alone["forces"].detach().numpy(), atol=1e-6)
        assert pred["energy"][f] == pytest.approx(
            float(alone["energy"].detach()), abs=tol["atol"], rel=tol["rtol"]
        )


def test_evaluate_forces_matches_brute_force(frames):
    model = tiny_model()
    idx = np.array([5, 0, 3])
    scores = evaluate_forces(model, frames, idx, batch_size=2, dtype=torch.float64)
    errors, energy = [], []
    for f in idx:
        one = frames.frame(f)
        out = model(AtomsBatch.from_frameset(one, dtype=torch.float64))
        errors.append(np.abs(out["forces"].detach().numpy() - one.forces[0]).ravel())
        energy.append(abs(float(out["energy"].detach()) - one.energy[0]) / one.n_atoms)
    assert scores["force_mae_meV_A"] == pytest.approx(np.concatenate(errors).mean() * EV_TO_MEV, rel=1e-6)
    assert scores["energy_mae_meV_atom"] == pytest.approx(np.mean(energy) * EV_TO_MEV, rel=1e-6)


def test_species_statistics_of_ragged_frames(frames):
    model = tiny_model()
    stats = fit_species_statistics(model, frames)
    species = sorted(set(frames.numbers_flat.tolist()))
    composition = np.array(
        [[int((frames.frame(f).numbers == z).sum()) for z in species] for f in range(frames.n_frames)], float
    )
    shift, *_ = np.linalg.lstsq(composition, frames.energy, rcond=None)
    for z, value in zip(species, shift, strict=True):
        assert stats["shift"][z] == pytest.approx(value, rel=1e-8, abs=1e-8)
    rms = np.sqrt(np.mean(frames.forces_flat.astype(np.float64) ** 2))
    assert stats["scale"][species[0]] == pytest.approx(rms, rel=1e-8)


def test_mixed_boundary_batch_is_refused(frames):
    with pytest.raises(ValueError, match=r"frames \[0\] are open and frames \[1\] periodic"):
        AtomsBatch.from_frameset(frames, [0, 1])
    open_batch = AtomsBatch.from_frameset(frames, [0, 2])
    assert open_batch.cell is None and open_batch.n_atoms == int(frames.atom_counts[[0, 2]].sum())
    periodic = AtomsBatch.from_frameset(frames, [1, 3])
    assert periodic.cell.shape == (2, 3, 3)
    np.testing.assert_array_equal(periodic.frame_index.numpy(), np.repeat([0, 1], frames.atom_counts[[1, 3]]))


def test_training_on_ragged_frames_with_mixed_batches(tmp_path, frames):
    model = tiny_model(torch.float32)
    result = train(model, frames, tmp_path / "run", epochs=2, batch_size=3, split_fractions=(0.5, 0.25, 0.25),
                   split_mode="random", seed=1, progress=False)  # fmt: skip
    assert result.epochs_completed == 2 and np.isfinite(result.history["val_force_mae_meV_A"]).all()

    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["dataset"]["ragged"] and config["split"]["mode"] == "random"
    val = config["split"]["indices"]["val"]
    best = load_model(tmp_path / "run" / "best.pt")
    mae = evaluate_forces(best, frames, val)["force_mae_meV_A"]
    assert mae == pytest.approx(result.best_val_force_mae, rel=1e-5)
    from scalepool.data import PredictionCache  # ragged data give a ragged cache of the recorded split

    cache = PredictionCache.load(predict_cache([tmp_path / "run"], frames, tmp_path / "cache.npz", progress=False))
    assert cache.ragged and cache.frames("val").tolist() == list(range(len(config["split"]["indices"]["train"]),
                                                                     len(config["split"]["indices"]["train"]) + len(val)))
    val_rows = cache.atom_index(cache.frames("val"))
    np.testing.assert_allclose(cache.forces_ref[val_rows], frames.forces_flat[frames.atom_index(val)])
    assert np.abs(cache.branches["short"][val_rows] - cache.forces_ref[val_rows]).mean() * EV_TO_MEV == pytest.approx(
        mae, rel=1e-5
    )


def copper_frames(seed: int, n: int = 6) -> FrameSet:
    """Rattled 4-atom Cu cells (fixed layout), labelled by EMT."""
    images = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.05, seed=seed * 100 + i)
        atoms.calc = EMT()
        atoms.get_forces()
        images.append(atoms)
    return FrameSet.from_atoms(images)


def test_prediction_cache_of_a_new_dataset(tmp_path):
    from scalepool.data import PredictionCache

    trained, new = copper_frames(0), copper_frames(1)
    train(tiny_model(torch.float32), trained, tmp_path / "run", epochs=1, split_fractions=(0.5, 0.25, 0.25),
          progress=False)  # fmt: skip
    with pytest.raises(TrainError, match=r"trained on dataset .* checksum"):
        predict_cache([tmp_path / "run"], new, tmp_path / "refused.npz", progress=False)
    path = predict_cache([tmp_path / "run"], new, tmp_path / "new.npz", progress=False, new_data=True)
    cache = PredictionCache.load(path)
    assert cache.meta["new_dataset"] and cache.meta["split_fractions"] is None
    np.testing.assert_array_equal(cache.split, np.full(new.n_frames, 2))  # every frame a test row
    np.testing.assert_array_equal(cache.forces_ref, new.forces)
    expected = predict_forces(load_model(tmp_path / "run" / "best.pt"), new)["forces"]
    np.testing.assert_allclose(cache.branches["short"], expected, atol=1e-6)


def test_stress_labels_pass_into_the_batch():
    from ase.stress import voigt_6_to_full_3x3_stress

    images = []
    for repeat in (1, 2, 1):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((repeat, 1, 1))
        atoms.rattle(0.05, seed=repeat)
        atoms.calc = EMT()
        atoms.get_forces()
        images.append(atoms)
    frames = FrameSet.from_atoms(images, ragged=True)
    batch = AtomsBatch.from_frameset(frames, [2, 1], dtype=torch.float64)
    for row, atoms in zip((0, 1), (images[2], images[1]), strict=True):
        np.testing.assert_allclose(batch.stress[row].numpy(), voigt_6_to_full_3x3_stress(atoms.get_stress()))
