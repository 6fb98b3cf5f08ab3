"""Hessian helpers: double backprop through MuSE, finite differences, spectra, constraints, blocks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from scalepool import testing
from scalepool.md import (
    EV_PER_A2_AMU_TO_WAVENUMBER,
    block_errors,
    constraint_tangent_basis,
    finite_difference_hessian,
    model_hessian,
    select_around_ion_pair,
    spectrum,
    water_molecules,
)
from scalepool.models import AtomsBatch, MuSE, PaiNN
from scalepool.units import CHLORINE, HYDROGEN, OXYGEN, SODIUM


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny systems gain nothing from threads, and spinning threads stall on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cluster() -> AtomsBatch:
    """Two waters and an ion pair, open boundaries, float64 (8 atoms)."""
    frames = testing.water_box(box=12.0, n_ion_pairs=1, seed=4)
    atoms = select_around_ion_pair(frames.positions[0], frames.numbers, frames.cell[0], n_atoms=8)
    return AtomsBatch(
        positions=torch.as_tensor(frames.positions[0][atoms]),
        numbers=torch.as_tensor(frames.numbers[atoms]),
        frame_index=torch.zeros(len(atoms), dtype=torch.long),
        cell=None,
        n_frames=1,
    )


def test_model_hessian_is_symmetric_and_matches_finite_differences(cluster):
    torch.manual_seed(0)
    model = MuSE(
        PaiNN(cutoff=4.0, n_features=8, n_interactions=2, n_rbf=8),
        coarse_cutoff=6.0,
        n_coarse_interactions=1,
        n_rbf=8,
    )
    with torch.no_grad():
        for level in model.levels:
            level.unpool_scalar.weight.normal_(std=0.3)
    model = model.double().eval()
    raw = model_hessian(model, cluster, symmetric=False)
    assert raw.shape == (3 * cluster.n_atoms,) * 2 and np.isfinite(raw).all()
    scale = np.abs(raw).max()
    assert scale > 1e-3 and np.abs(raw - raw.T).max() < 1e-10 * scale

    def forces(x):
        return testing.evaluate(model, dataclasses.replace(cluster, positions=torch.as_tensor(x)))[1].numpy()

    atoms = np.array([0, 1, 3])
    numeric = finite_difference_hessian(forces, cluster.positions.numpy(), atoms, step=1e-4)
    sub = np.concatenate([np.arange(3 * a, 3 * a + 3) for a in atoms])
    np.testing.assert_allclose(model_hessian(model, cluster, atoms), raw[np.ix_(sub, sub)], atol=1e-10)
    np.testing.assert_allclose(numeric, raw[np.ix_(sub, sub)], atol=1e-6 * scale)
    # translating the whole cluster costs no energy: rows of the full Hessian sum to zero per component
    assert np.abs(raw.reshape(-1, cluster.n_atoms, 3).sum(axis=1)).max() < 1e-8 * scale


def test_diatomic_wavenumber():
    """A spring k between two atoms: one mode at sqrt(k / mu), five at zero."""
    k, masses = 30.0, np.array([15.9994, 1.00794])  # eV/Å^2, amu
    h = np.zeros((6, 6))
    block = k * np.array([[1.0, -1.0], [-1.0, 1.0]])
    h[np.ix_([0, 3], [0, 3])] = block
    out = spectrum(h, masses=masses)
    mu = masses.prod() / masses.sum()
    assert out["wavenumbers"][-1] == pytest.approx(EV_PER_A2_AMU_TO_WAVENUMBER * np.sqrt(k / mu), rel=1e-10)
    assert np.abs(out["wavenumbers"][:-1]).max() < 1e-3  # sqrt of round-off
    # O-H stretch scale: k ~ 48 eV/Å^2 gives ~3,700 cm^-1
    assert 3500 < spectrum(48.0 / k * h, masses=masses)["wavenumbers"][-1] < 3900


def test_constraint_tangent_basis(cluster):
    numbers = cluster.numbers.numpy()
    positions = cluster.positions.numpy()
    waters = water_molecules(numbers)
    assert len(waters) == 2 and (numbers[waters] == [OXYGEN, HYDROGEN, HYDROGEN]).all()
    masses = np.where(numbers == HYDROGEN, 1.008, 16.0)
    for m in (None, masses):
        q = constraint_tangent_basis(positions, waters, m)
        assert q.shape == (3 * len(numbers), 3 * len(numbers) - 3 * len(waters))
        np.testing.assert_allclose(q.T @ q, np.eye(q.shape[1]), atol=1e-12)
    q = constraint_tangent_basis(positions, waters)
    rigid = np.zeros((len(numbers), 3))  # rotate the first water about its oxygen
    o, h1, h2 = waters[0]
    axis = np.array([0.3, -0.5, 0.8])
    for a in (h1, h2):
        rigid[a] = np.cross(axis, positions[a] - positions[o])
    rigid = rigid.reshape(-1)
    assert np.linalg.norm(q @ (q.T @ rigid) - rigid) < 1e-10 * np.linalg.norm(rigid)
    stretch = np.zeros((len(numbers), 3))
    stretch[h1] = positions[h1] - positions[o]
    stretch = stretch.reshape(-1)
    assert np.linalg.norm(q.T @ stretch) < 0.9 * np.linalg.norm(stretch)


def test_block_errors_and_selection():
    frames = testing.water_box(box=14.0, n_ion_pairs=2, seed=6)
    atoms = select_around_ion_pair(frames.positions[0], frames.numbers, frames.cell[0], n_atoms=14)
    numbers = frames.numbers[atoms]
    assert len(atoms) == 14 and (numbers == SODIUM).sum() == 1 and (numbers == CHLORINE).sum() == 1
    assert len(water_molecules(numbers)) == 4  # whole waters only
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(42, 42))
    model = reference.copy()
    ions = np.flatnonzero(np.isin(numbers, [SODIUM, CHLORINE]))
    rows = np.concatenate([np.arange(3 * a, 3 * a + 3) for a in ions])
    model[np.ix_(rows, rows)] += 1.0  # error only in the ion-ion block
    molecule = np.arange(14)
    errors = block_errors(model, reference, numbers, molecule)
    assert errors["ion-ion"]["mae"] == pytest.approx(1.0) and errors["ion-ion"]["n"] == 36
    assert errors["ion-water"]["mae"] == 0.0 and errors["water-water"]["mae"] == 0.0
    assert errors["all"]["n"] == 42 * 42


@pytest.mark.slow
def test_study_end_to_end(tmp_path):
    """The hessian study (``scalepool study hessian`` = ``studies/hessian.py``) on a 19 Å box:
    OpenMM reference, an untrained MuSE run, results, report section and figure."""
    import json

    from scalepool.models import save_model
    from scalepool.studies import study_main

    data = testing.water_box(box=19.0, n_ion_pairs=1, seed=2).save(tmp_path / "box.npz")
    torch.manual_seed(0)
    model = MuSE(PaiNN(cutoff=3.0, n_features=4, n_interactions=1, n_rbf=4), n_coarse_interactions=1, n_rbf=4)
    save_model(model, tmp_path / "tiny.pt")
    out = tmp_path / "results" / "hessian"
    assert (
        study_main(
            "hessian",
            ["--data", str(data), "--run", str(tmp_path / "tiny.pt"), "--out", str(out), "--n-atoms", "5"],
        )
        == 0
    )
    summary = json.loads((out / "hessian.json").read_text())
    assert summary["n_selected"] == 5 and summary["rigid_water"] is True
    assert summary["n_modes"] == 3 * 5 - 3  # one rigid water: three constraints
    tiny = summary["models"]["tiny"]
    assert tiny["asymmetry_max_abs"] < 1e-8 and np.isfinite(tiny["blocks"]["all"]["rmse"])
    with np.load(out / "hessian.npz") as arrays:
        assert arrays["hessian_reference"].shape == (15, 15)
        assert len(arrays["eigenvalues_reference"]) == 12
    assert (out / "provenance.json").exists()
    # the reproduction's report section and figure read the same saved files
    from scalepool.plots import make_figures
    from scalepool.studies._report import _section_hessian

    section = "\n".join(_section_hessian(out.parent))
    assert "## Hessian benchmark (5 atoms" in section and "| tiny |" in section
    assert set(make_figures(out.parent, tmp_path / "figures", ["hessian"])) == {"hessian"}
