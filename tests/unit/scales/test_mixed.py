"""MixedForceModel (router-mixed branches) and the ASE calculator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalepool.md import ScalepoolCalculator
from scalepool.models import (
    AtomsBatch,
    MixedForceModel,
    build_branch,
    load_model,
    save_model,
    smooth_router_features,
)
from scalepool.scales import LeakageError, fit_router, synthetic_cache
from scalepool.testing import assert_finite_difference_forces, random_frames

ase = pytest.importorskip("ase")


def _branches(seed: int = 0):
    torch.manual_seed(seed)
    short = build_branch("short", n_features=8, n_interactions=1)
    long = build_branch("long", n_features=8, n_interactions=1, fixed_charges=True, method="ewald")
    return short, long


def _model(seed: int = 0) -> MixedForceModel:
    short, long = _branches(seed)
    model = MixedForceModel(short, long, hidden=8, layers=1)
    # spread the router so that s varies strongly with the positions
    with torch.no_grad():
        model.feature_mean.copy_(torch.tensor([1.0, 4.0, 10.0, 0.25, 0.25, 0.25, 0.25]))
        model.feature_std.copy_(torch.tensor([0.5, 1.0, 2.0, 0.5, 0.5, 0.5, 0.5]))
        for p in model.router.parameters():
            p.mul_(3.0)
    return model.eval()


@pytest.fixture(scope="module")
def frames():
    # 10 atoms (O, H, Na, Cl cycling) in a periodic ~7.5 Å box
    return random_frames(n_atoms=10, box=7.5, n_frames=2, seed=1, min_distance=1.5)


def test_router_scales_in_unit_interval_and_position_dependent(frames):
    model = _model()
    batch = AtomsBatch.from_frameset(frames)
    s = model.scales(batch).detach()
    assert s.shape == (batch.n_atoms,)
    assert bool(((s >= 0) & (s <= 1)).all())
    assert float(s.std()) > 1e-3
    hard = model.scales(batch, hard=True).detach()
    assert set(hard.unique().tolist()) <= {0.0, 1.0}


def test_smooth_features_are_differentiable(frames):
    batch = AtomsBatch.from_frameset(frames, dtype=torch.float64)
    pos = batch.positions.clone().requires_grad_(True)
    feats = smooth_router_features(
        AtomsBatch(pos, batch.numbers, batch.frame_index, batch.cell, batch.n_frames)
    )
    assert feats.shape == (batch.n_atoms, 3 + 4)
    (grad,) = torch.autograd.grad(feats[:, :3].sum(), pos)
    assert torch.isfinite(grad).all() and float(grad.abs().max()) > 0


def test_forces_are_finite_differences_of_energy_including_router(frames):
    model = _model()
    batch = AtomsBatch.from_frameset(frames, indices=[0])
    assert_finite_difference_forces(model, batch, n_checks=8, atol=1e-6, rtol=1e-5)
    # the router's own position dependence contributes to the forces
    model64 = _model().double()
    b64 = batch.to(dtype=torch.float64)
    full = model64(b64)["forces"].detach()
    pos = b64.positions.clone().requires_grad_(True)
    b = AtomsBatch(pos, b64.numbers, b64.frame_index, b64.cell, 1)
    s = model64.scales(b).detach()
    e0, e1 = model64.branch0.atomic_energies(b), model64.branch1.atomic_energies(b)
    z = b.numbers
    e1 = e1 - (model64.branch1.species_shift[z] - model64.branch0.species_shift[z])
    (grad,) = torch.autograd.grad((e0 + s * (e1 - e0)).sum(), pos)
    assert float((full + grad).abs().max()) > 1e-8


def test_save_load_round_trip(tmp_path, frames):
    model = _model()
    batch = AtomsBatch.from_frameset(frames)
    path = save_model(model, tmp_path / "mixed.pt")
    loaded = load_model(path)
    assert isinstance(loaded, MixedForceModel)
    assert loaded.config == model.config
    a, b = model(batch), loaded.eval()(batch)
    torch.testing.assert_close(a["energy"], b["energy"], rtol=0, atol=0)
    torch.testing.assert_close(a["forces"], b["forces"], rtol=0, atol=0)


def _nve(frames, model, steps: int = 20):
    """Velocity Verlet, 0.25 fs steps from 100 K.

    Returns the drift ``max_t |E_tot(t) - E_tot(0)|`` (eV) and the router logits (steps, n_atoms).
    """
    from ase import Atoms, units
    from ase.md.verlet import VelocityVerlet

    atoms = Atoms(numbers=frames.numbers, positions=frames.positions[0], cell=frames.cell[0], pbc=True)
    calc = ScalepoolCalculator(model, float64=True)
    atoms.calc = calc
    rng = np.random.default_rng(0)
    masses = atoms.get_masses()[:, None]
    atoms.set_momenta(rng.normal(size=(len(atoms), 3)) * np.sqrt(masses * units.kB * 100.0))
    dyn = VelocityVerlet(atoms, timestep=0.25 * units.fs)
    totals, logits = [atoms.get_total_energy()], []
    for _ in range(steps):
        dyn.run(1)
        totals.append(atoms.get_total_energy())
        with torch.no_grad():
            logits.append(model.logits(model.features(calc.atoms_to_batch(atoms))).numpy())
    totals = np.asarray(totals)
    assert np.isfinite(totals).all()
    return float(np.abs(totals - totals[0]).max()), np.asarray(logits)


def test_calculator_nve_conserves_energy(frames):
    drift, _ = _nve(frames, _model().double())
    assert drift < 2e-3, drift


def test_nve_check_catches_the_non_conservative_hard_router(frames):
    """Negative control: the same check fails for ``hard=True``.

    Without a flip of some atom's choice hard mixing is smooth too, so the
    router is first shifted to put the atom whose logit moves most along the
    trajectory at s = 0.5 on average; then its choice flips during the run.
    """
    _, logits = _nve(frames, _model().double())
    atom = int(logits.std(axis=0).argmax())
    offset = float(logits[:, atom].mean())
    drifts = {}
    for hard in (False, True):
        model = _model().double()
        model.hard = hard
        with torch.no_grad():
            model.router[-1].bias -= offset
        drifts[hard], logits = _nve(frames, model)
        flips = int(((logits[1:] > 0) != (logits[:-1] > 0)).sum())
        assert flips >= 1, "no atom switched branch: the control would test nothing"
    # soft: the router term keeps E_tot constant through the switch; hard: E_tot jumps at the flip
    assert drifts[False] < 2e-3, drifts
    assert drifts[True] > 2e-3 and drifts[True] > 20 * drifts[False], drifts


def test_calculator_refuses_mixed_pbc():
    from ase import Atoms

    atoms = Atoms("NaCl", positions=[[0, 0, 0], [2.8, 0, 0]], cell=np.eye(3) * 8, pbc=[True, True, False])
    atoms.calc = ScalepoolCalculator(_model())
    with pytest.raises(ValueError, match="periodic"):
        atoms.get_potential_energy()


def test_fit_router_train_only_and_improves():
    cache = synthetic_cache(n_frames=8, n_atoms=40, n_ions=4, seed=0, rule="distance")
    short, long = _branches()
    model = MixedForceModel(short, long, hidden=8, layers=1)
    with pytest.raises(LeakageError):
        fit_router(model, cache)
    metrics = fit_router(model, cache.select("train"), steps=150, lr=3e-2)
    assert metrics["mae_soft"] <= min(metrics["mae_branch0"], metrics["mae_branch1"]) + 1e-6
    assert 0.0 <= metrics["mean_scale"] <= 1.0
