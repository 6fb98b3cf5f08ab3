"""Any dataset in: water clusters and periodic alloys of different sizes and species, trained from an
extxyz file through the command line, evaluated, and checked frame by frame through the ASE calculator."""

import json

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from scalepool.cli import main
from scalepool.data import PredictionCache
from scalepool.md import ScalepoolCalculator
from scalepool.units import EV_TO_MEV

TINY = ["--model-option", "n_features=4", "--model-option", "n_interactions=1", "--model-option", "n_rbf=4",
        "--cutoff", "3.0", "--no-progress"]  # fmt: skip
WATER = np.array([[0.0, 0.0, 0.0], [0.757, 0.586, 0.0], [-0.757, 0.586, 0.0]])  # Å, O H H


def water_cluster(n_molecules: int, rng) -> Atoms:
    """``n_molecules`` randomly oriented waters, centres at least 2.9 Å apart, open boundaries."""
    centres: list[np.ndarray] = []
    while len(centres) < n_molecules:
        c = rng.uniform(-1, 1, 3) * 2.2 * n_molecules ** (1 / 3)
        if all(np.linalg.norm(c - p) > 2.9 for p in centres):
            centres.append(c)
    atoms = Atoms()
    for c in centres:
        rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        atoms += Atoms("OH2", positions=WATER @ rotation.T + c)
    return atoms


def labelled(atoms: Atoms, seed: int) -> Atoms:
    """``atoms`` rattled and labelled by ASE's EMT as REF_energy / REF_forces (MACE's key names)."""
    atoms.rattle(0.02, seed=seed)
    atoms.calc = EMT()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = None
    atoms.info["REF_energy"] = energy
    atoms.arrays["REF_forces"] = forces
    return atoms


def dataset(n_frames: int, seed: int, alloy=("Cu", 28)) -> list[Atoms]:
    """Water clusters of 3-9 molecules (open) and rattled Cu cells with Ni (periodic)."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n_frames):
        if i % 3 == 2:
            atoms = bulk(alloy[0], "fcc", a=3.6, cubic=True).repeat((1 + i % 2, 1, 1))
            atoms.numbers[rng.choice(len(atoms), 2, replace=False)] = alloy[1]
            images.append(labelled(atoms, seed * 1000 + i))
        else:
            images.append(labelled(water_cluster(3 + i % 7, rng), seed * 1000 + i))
    return images


def calculator_mae(model_path, images) -> tuple[float, float, dict]:
    """Force MAE (meV/Å), energy MAE (meV/atom) and per-species force MAE computed frame by frame
    through the ASE calculator on the saved model."""
    calc = ScalepoolCalculator.from_file(model_path)
    errors, energy, species = [], [], {}
    for atoms in images:
        atoms = atoms.copy()
        atoms.calc = calc
        diff = np.abs(atoms.get_forces() - atoms.arrays["REF_forces"])
        errors.append(diff.ravel())
        for z in np.unique(atoms.numbers):
            species.setdefault(int(z), []).append(diff[atoms.numbers == z].ravel())
        energy.append(abs(atoms.get_potential_energy() - atoms.info["REF_energy"]) / len(atoms))
    by_species = {z: float(np.concatenate(v).mean() * EV_TO_MEV) for z, v in species.items()}
    return float(np.concatenate(errors).mean() * EV_TO_MEV), float(np.mean(energy) * EV_TO_MEV), by_species


def test_extxyz_trains_end_to_end_and_evaluate_matches_the_calculator(tmp_path, capsys):
    images = dataset(21, seed=0)
    assert len({len(a) for a in images}) > 5 and {a.pbc.all() for a in images} == {True, False}
    data = tmp_path / "mixed.extxyz"
    ase.io.write(data, images, format="extxyz")
    run = tmp_path / "run"
    argv = ["train", "--branch", "short", "--data", str(data), "--out", str(run), "--epochs", "2",
            "--batch-size", "4", "--split", "random", *TINY]  # fmt: skip
    assert main(argv) == 0
    report = tmp_path / "eval.json"
    assert (
        main(["evaluate", "--run", str(run), "--data", str(data), "--split", "all", "--json", str(report)])
        == 0
    )
    result = json.loads(report.read_text())
    overall, energy, by_species = calculator_mae(run / "best.pt", images)
    assert result["n_frames"] == len(images) and result["n_atoms"] == sum(len(a) for a in images)
    assert result["overall_mae"] == pytest.approx(overall, rel=1e-4)
    assert result["energy_mae_per_atom"] == pytest.approx(energy, rel=1e-4)
    assert result["ion_mae"] is None  # no Na or Cl here
    symbols = {1: "H", 8: "O", 28: "Ni", 29: "Cu"}
    assert set(result["species_mae"]) == set(symbols.values())
    for z, value in by_species.items():
        assert result["species_mae"][symbols[z]] == pytest.approx(value, rel=1e-4)

    # the test block alone: the frames the random split recorded
    config = json.loads((run / "config.json").read_text())
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--json", str(report)]) == 0
    test_frames = [images[i] for i in config["split"]["indices"]["test"]]
    assert json.loads(report.read_text())["overall_mae"] == pytest.approx(
        calculator_mae(run / "best.pt", test_frames)[0], rel=1e-4
    )

    # a new dataset with a species the model never saw (Au): refused, naming file and frame
    other = tmp_path / "gold.extxyz"
    ase.io.write(other, dataset(3, seed=1, alloy=("Cu", 79)), format="extxyz")
    capsys.readouterr()
    assert (
        main(["evaluate", "--run", str(run), "--data", str(other), "--split", "all", "--json", str(report)])
        == 2
    )
    err = capsys.readouterr().err
    assert "gold.extxyz: frame 2 holds species the model never saw in training: Au (Z=79)" in err

    # a ragged prediction cache: the recorded test frames, each as the calculator predicts it
    cache_path = tmp_path / "c.npz"
    assert main(["predict", "--run", str(run), "--data", str(data), "--out", str(cache_path), "--no-progress"]) == 0
    cache = PredictionCache.load(cache_path)
    assert cache.ragged and cache.meta["frame_index"][-len(test_frames):] == config["split"]["indices"]["test"]
    test_rows = cache.atom_index(cache.frames("test"))
    calc = ScalepoolCalculator.from_file(run / "best.pt")
    expected = []
    for atoms in test_frames:
        atoms = atoms.copy()
        atoms.calc = calc
        expected.append(atoms.get_forces())
    np.testing.assert_allclose(cache.branches["short"][test_rows], np.concatenate(expected), rtol=1e-4, atol=1e-5)


def test_explicit_validation_and_test_files(tmp_path):
    files = {}
    for name, seed in (("train", 2), ("valid", 3), ("test", 4)):
        files[name] = tmp_path / f"{name}.extxyz"
        ase.io.write(files[name], dataset(6, seed=seed), format="extxyz")
    run = tmp_path / "run"
    argv = ["train", "--branch", "short", "--data", str(files["train"]), "--valid-data", str(files["valid"]),
            "--test-data", str(files["test"]), "--out", str(run), "--epochs", "1", *TINY]  # fmt: skip
    assert main(argv) == 0
    split = json.loads((run / "config.json").read_text())["split"]
    assert (split["train"], split["val"], split["test"]) == ([0, 6], [6, 12], [12, 18])
    report = tmp_path / "test.json"
    argv = ["evaluate", "--model", str(run / "best.pt"), "--data", str(files["test"]), "--split", "all",
            "--json", str(report)]  # fmt: skip
    assert main(argv) == 0
    test_images = ase.io.read(files["test"], index=":")
    assert json.loads(report.read_text())["overall_mae"] == pytest.approx(
        calculator_mae(run / "best.pt", test_images)[0], rel=1e-4
    )


def test_bad_label_keys_on_the_command_line(tmp_path, capsys):
    data = tmp_path / "keys.extxyz"
    ase.io.write(data, dataset(3, seed=5), format="extxyz")
    argv = ["train", "--branch", "short", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1",
            "--forces-key", "DFT_forces", *TINY]  # fmt: skip
    assert main(argv) == 2
    assert "keys.extxyz: frame 0 has no forces (looked for 'DFT_forces'" in capsys.readouterr().err
    argv[argv.index("--forces-key") : argv.index("--forces-key") + 2] = ["--stress-key", "REF_stress"]
    assert main(argv) == 2
    assert "keys.extxyz: frame 0 is not periodic" in capsys.readouterr().err


def test_data_convert_and_info_of_a_ragged_file(tmp_path, capsys):
    images = dataset(6, seed=6)
    source = tmp_path / "mixed.extxyz"
    ase.io.write(source, images, format="extxyz")
    assert main(["data", "convert", str(source), str(tmp_path / "mixed.npz")]) == 0
    sizes = [len(a) for a in images]
    assert f"6 frames of {min(sizes)}-{max(sizes)} atoms" in capsys.readouterr().out
    assert main(["data", "info", str(tmp_path / "mixed.npz"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["layout"] == "ragged" and summary["n_atoms_total"] == sum(len(a) for a in images)
    assert summary["open_frames"] == 4 and summary["periodic_frames"] == 2
    n_h = sum(int((a.numbers == 1).sum()) for a in images)
    assert summary["species"]["H"] == n_h and summary["force_rms_meV_A"]["H"]["n_atoms"] == n_h


def test_evaluate_reads_trr_with_a_topology(tmp_path):
    from scalepool.data import FrameSet, read_frames, write_frames

    train_file = tmp_path / "train.extxyz"
    ase.io.write(train_file, dataset(6, seed=7), format="extxyz")
    run = tmp_path / "run"
    argv = ["train", "--branch", "short", "--data", str(train_file), "--out", str(run), "--epochs", "1",
            "--split", "random", *TINY]  # fmt: skip
    assert main(argv) == 0
    rng = np.random.default_rng(8)
    cluster = water_cluster(4, rng)
    frames = FrameSet.from_atoms([labelled(cluster.copy(), seed) for seed in range(3)])
    trajectory = write_frames(frames, tmp_path / "w.trr")
    (tmp_path / "w.pdb").rename(tmp_path / "top.pdb")  # not the companion name: --topology is needed
    report = tmp_path / "trr.json"
    argv = ["evaluate", "--run", str(run), "--data", str(trajectory), "--topology", str(tmp_path / "top.pdb"),
            "--split", "all", "--json", str(report)]  # fmt: skip
    assert main(argv) == 0
    back = read_frames(trajectory, topology=tmp_path / "top.pdb")  # float32 nm, as evaluate read it
    images = []
    for f in range(back.n_frames):
        atoms = Atoms(numbers=back.numbers, positions=back.positions[f])
        atoms.arrays["REF_forces"] = back.forces[f].astype(np.float64)
        images.append(atoms)
    calc = ScalepoolCalculator.from_file(run / "best.pt")
    errors = []
    for atoms in images:
        reference = atoms.arrays["REF_forces"]
        atoms.calc = calc
        errors.append(np.abs(atoms.get_forces() - reference).ravel())
    assert json.loads(report.read_text())["overall_mae"] == pytest.approx(
        np.concatenate(errors).mean() * EV_TO_MEV, rel=1e-4
    )
