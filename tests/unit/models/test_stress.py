"""Stress and virial from the strain derivative of the energy (``ForceModel.forward(compute_stress=True)``).

Every branch, in float64 on a small triclinic periodic cell, against central
finite differences of the energy of deformed copies built here in numpy
(positions and cell times ``I + eps``, the same deformation ASE's
``calculate_numerical_stress`` applies; that comparison is in
``tests/unit/md/test_calculator_stress.py``).  Untrained models have weights
that start at zero (MuSE's unpooling map, the feature score): those are drawn
at random here so every term of the energy depends on the strain.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from standins import randomised_float64

from scalepool.models import AtomsBatch, MixedForceModel, build_branch, keys
from scalepool.testing import TOLERANCES, frames_of, random_frames

SMALL = dict(n_features=8, n_interactions=2)
#: eV/Å^3: central differences with step 1e-5 agree to ~1e-10 in float64 (measured
#: 7e-12 .. 7e-11 for these models); the stresses themselves are 4e-4 .. 5e-2 eV/Å^3.
FD_ATOL = 1e-8
FD_STEP = 1e-5

BUILDERS = {
    "short_painn": lambda: build_branch("short", **SMALL),
    "short_schnet": lambda: build_branch("short", backbone="schnet", **SMALL),
    "long_latent_p3m": lambda: build_branch("long", **SMALL),
    "long_fixed_p3m": lambda: build_branch("long", fixed_charges=True, **SMALL),
    # lr_wavelength 0.6 Å, not the default smearing / 2 = 0.7 Å: 7 Å / 0.7 Å puts the k-vector
    # count exactly on an integer step, where the energy jumps (by ~1e-9 eV) under any strain
    "long_fixed_ewald": lambda: build_branch(
        "long", fixed_charges=True, method="ewald", lr_wavelength=0.6, **SMALL
    ),
    "muse": lambda: build_branch("muse", coarse_cutoff=5.0, n_coarse_interactions=1, coarse_n_rbf=8, **SMALL),
    "mixed": lambda: MixedForceModel(build_branch("short", **SMALL), build_branch("long", **SMALL)),
}
#: Exact Ewald in place of P3M: P3M's mesh makes the energy of a triclinic cell change by
#: ~1e-4 of it under a joint rotation of atoms and cell (measured: the antisymmetric part
#: of dE/dF is 2e-6 .. 5e-6 eV/Å^3 here, 1e-7 .. 2e-7 for the orthorhombic cell; 1e-16
#: with Ewald), so P3M's symmetrised strain derivative is symmetric only by construction.
EXACT = {
    "mixed_ewald": lambda: MixedForceModel(
        build_branch("short", **SMALL), build_branch("long", method="ewald", lr_wavelength=0.6, **SMALL)
    ),
}


def make_model(name: str) -> torch.nn.Module:
    """A float64 model in eval mode whose zero-initialised weight matrices are drawn at random,
    with an energy scale of 10 eV per unit of raw output (a trained model's order of magnitude)."""
    torch.manual_seed(0)
    return randomised_float64({**BUILDERS, **EXACT}[name]())


@pytest.fixture(scope="module")
def frames():
    """Two frames of 8 atoms (O, H, Na, Cl) in a 7 Å sheared (triclinic) periodic cell."""
    return random_frames(n_atoms=8, box=7.0, n_frames=2, seed=1)


def batch_of(frames, positions=None, cell=None) -> AtomsBatch:
    return AtomsBatch.from_arrays(
        frames.positions if positions is None else positions,
        frames.numbers,
        frames.cell if cell is None else cell,
        dtype=torch.float64,
    )


def finite_difference_stress(model, frames, step: float = FD_STEP) -> np.ndarray:
    """(n_frames, 3, 3) eV/Å^3: (E(+eps) - E(-eps)) / (2 step V) per symmetric strain component."""
    pos, cell = frames.positions.astype(np.float64), frames.cell.astype(np.float64)
    volume = np.abs(np.linalg.det(cell))
    out = np.zeros((len(cell), 3, 3))
    for a in range(3):
        for b in range(a, 3):
            energies = []
            for sign in (1.0, -1.0):
                eps = np.zeros((3, 3))
                eps[a, b] += 0.5 * sign * step
                eps[b, a] += 0.5 * sign * step
                deform = np.eye(3) + eps
                with torch.no_grad():
                    e = model(batch_of(frames, pos @ deform, cell @ deform), compute_forces=False)
                energies.append(e[keys.ENERGY].numpy())
            out[:, a, b] = out[:, b, a] = (energies[0] - energies[1]) / (2 * step * volume)
    return out


@pytest.mark.parametrize("name", list(BUILDERS))
def test_stress_matches_finite_differences(name, frames):
    model = make_model(name)
    out = model(batch_of(frames), compute_stress=True)
    stress = out[keys.STRESS].detach().numpy()
    want = finite_difference_stress(model, frames)
    assert np.abs(want).max() > 1e3 * FD_ATOL, (
        f"{name}: stress too small ({np.abs(want).max():.1e}) to test anything"
    )
    err = np.abs(stress - want).max()
    assert err < FD_ATOL, f"{name}: stress vs finite differences max error {err:.2e} eV/Å^3 > {FD_ATOL}"
    volume = torch.linalg.det(batch_of(frames).cell).abs()
    torch.testing.assert_close(
        out[keys.VIRIAL], -volume[:, None, None] * out[keys.STRESS], rtol=1e-12, atol=0
    )


@pytest.mark.parametrize("name", ["short_schnet", "long_fixed_ewald", "muse", "mixed_ewald"])
def test_stress_symmetric_under_general_deformation(name, frames):
    """dE/dF for a general (not symmetrised) deformation F: its antisymmetric part is a joint
    rotation of atoms and cell, which leaves the energy unchanged, and its symmetric part is
    V times the stress.  (Not for P3M, see ``EXACT``.)"""
    model = make_model(name)
    batch = batch_of(frames)
    deform = torch.zeros(batch.n_frames, 3, 3, dtype=torch.float64, requires_grad=True)
    positions = batch.positions + torch.einsum("ni,nij->nj", batch.positions, deform[batch.frame_index])
    cell = batch.cell + torch.bmm(batch.cell, deform)
    moved = AtomsBatch(positions, batch.numbers, batch.frame_index, cell, batch.n_frames)
    (grad,) = torch.autograd.grad(model(moved, compute_forces=False)[keys.ENERGY].sum(), deform)
    volume = torch.linalg.det(batch.cell).abs()[:, None, None]
    stress = model(batch, compute_stress=True)[keys.STRESS].detach()
    scale = float(grad.abs().max())
    antisymmetric = float((grad - grad.transpose(1, 2)).abs().max())
    assert antisymmetric < 1e-10 * max(scale, 1.0), f"{name}: dE/dF antisymmetric part {antisymmetric:.2e} eV"
    torch.testing.assert_close(stress, grad / volume, **TOLERANCES[torch.float64])
    torch.testing.assert_close(stress, stress.transpose(1, 2), rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", ["long_latent_p3m", "muse", "mixed"])
def test_batch_of_two_frames_equals_frames_alone(name, frames):
    model = make_model(name)
    batch = batch_of(frames)
    both = model(batch, compute_stress=True)
    for f, single in enumerate(frames_of(batch)):
        alone = model(single, compute_stress=True)
        torch.testing.assert_close(
            both[keys.STRESS][f : f + 1], alone[keys.STRESS], **TOLERANCES[torch.float64]
        )
        torch.testing.assert_close(
            both[keys.VIRIAL][f : f + 1], alone[keys.VIRIAL], **TOLERANCES[torch.float64]
        )


def test_forces_unchanged_by_stress(frames):
    model = make_model("long_latent_p3m")
    batch = batch_of(frames)
    plain = model(batch)
    with_stress = model(batch, compute_stress=True)
    torch.testing.assert_close(with_stress[keys.FORCES], plain[keys.FORCES], **TOLERANCES[torch.float64])
    torch.testing.assert_close(with_stress[keys.ENERGY], plain[keys.ENERGY], **TOLERANCES[torch.float64])


def test_stress_only_without_forces(frames):
    model = make_model("short_painn")
    out = model(batch_of(frames), compute_forces=False, compute_stress=True)
    assert keys.FORCES not in out
    np.testing.assert_allclose(
        out[keys.STRESS].detach().numpy(), finite_difference_stress(model, frames), atol=FD_ATOL
    )


def test_create_graph_stress_is_differentiable_in_parameters(frames):
    """A stress loss back-propagates: d(sum of stress)/d(one weight) equals central differences."""
    model = make_model("short_painn")
    batch = batch_of(frames)
    weight = model.backbone.energy_head[-1].weight
    out = model(batch, compute_stress=True, create_graph=True)
    assert out[keys.STRESS].requires_grad
    (grad,) = torch.autograd.grad(out[keys.STRESS].sum(), weight)
    h, values = 1e-6, []
    with torch.no_grad():
        for sign in (1.0, -1.0):
            weight[0, 0] += sign * h
            values.append(float(model(batch, compute_stress=True)[keys.STRESS].sum()))
            weight[0, 0] -= sign * h
    fd = (values[0] - values[1]) / (2 * h)
    assert abs(float(grad[0, 0]) - fd) < 1e-8 * max(1.0, abs(fd)), (float(grad[0, 0]), fd)
    # eval mode without create_graph: detached under no_grad
    with torch.no_grad():
        assert not model(batch, compute_stress=True)[keys.STRESS].requires_grad


def test_open_boundaries_refuse_stress():
    frames = random_frames(n_atoms=6, box=7.0, n_frames=1, periodic=False)
    model = make_model("short_painn")
    batch = AtomsBatch.from_arrays(frames.positions, frames.numbers, None, dtype=torch.float64)
    with pytest.raises(ValueError, match="open boundaries"):
        model(batch, compute_stress=True)
    with pytest.raises(ValueError, match="no cell"):
        batch.strained(torch.zeros(1, 3, 3, dtype=torch.float64))


def test_batch_stress_label(frames):
    stress = np.random.default_rng(0).normal(size=(2, 3, 3))
    batch = AtomsBatch.from_arrays(frames.positions, frames.numbers, frames.cell, indices=[1], stress=stress)
    assert batch.stress.shape == (1, 3, 3) and batch.stress.dtype == torch.float32
    np.testing.assert_allclose(batch.stress.numpy()[0], stress[1], rtol=1e-6)
    assert batch.to(dtype=torch.float64).stress.dtype == torch.float64
    with pytest.raises(ValueError, match=r"stress must have shape \(2, 3, 3\)"):
        AtomsBatch.from_arrays(frames.positions, frames.numbers, frames.cell, stress=stress[:, :2])
    bad = stress.copy()
    bad[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="stress of frame 1"):
        AtomsBatch.from_arrays(frames.positions, frames.numbers, frames.cell, stress=bad)
