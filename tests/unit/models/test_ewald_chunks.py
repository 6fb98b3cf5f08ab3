"""Latent-charge Ewald head: the chunked real-space sum against the unchunked one
(float64 round-off: energies, forces, stress, force-loss gradients), and a frozen
P3M mesh (energy continuous across a mesh-size boundary, stress = dE/d strain)."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from torchpme.lib import get_ns_mesh

from scalepool.models import AtomsBatch, LatentChargeEwald
from scalepool.models._electrostatics import mesh_spacing_for_shape
from scalepool.testing import TOLERANCES, random_frames

N_FEATURES = 6


def _batch(n_atoms=48, box=9.5, n_frames=2, seed=4) -> AtomsBatch:
    frames = random_frames(n_atoms=n_atoms, box=box, n_frames=n_frames, seed=seed, min_distance=1.5)
    return AtomsBatch.from_frameset(frames, dtype=torch.float64)


def _features(positions: torch.Tensor) -> torch.Tensor:
    """(n, N_FEATURES) smooth features of the positions, so latent charges move with the atoms."""
    w = torch.linspace(-0.7, 0.9, 3 * N_FEATURES, dtype=positions.dtype).reshape(3, N_FEATURES)
    return torch.sin(positions @ w)


def _evaluate(head: LatentChargeEwald, batch: AtomsBatch, create_graph: bool = False):
    """Per-atom energies (n,) eV, forces (n, 3) eV/Å, dE/d strain (F, 3, 3) eV, all in the graph."""
    positions = batch.positions.clone().requires_grad_(True)
    strain = torch.zeros(batch.n_frames, 3, 3, dtype=positions.dtype, requires_grad=True)
    strained = dataclasses.replace(batch, positions=positions).strained(strain)
    energies = head(strained, _features(strained.positions))
    grad_x, grad_s = torch.autograd.grad(energies.sum(), (positions, strain), create_graph=create_graph)
    return energies, -grad_x, grad_s


def _pair(edge_chunk: int, **options):
    torch.manual_seed(0)
    chunked = LatentChargeEwald(n_features=N_FEATURES, edge_chunk=edge_chunk, **options).double()
    with torch.no_grad():  # charges of order 1 e (the head starts near zero)
        for param in chunked.charge_head.parameters():
            param.copy_(torch.randn_like(param))
    plain = copy.deepcopy(chunked)
    plain.options["edge_chunk"] = 0
    return chunked, plain


@pytest.mark.parametrize("method", ["p3m", "ewald"])
def test_chunked_real_space_equals_unchunked_in_float64(method):
    batch = _batch()
    n_pairs = batch.neighbors(7.0, full_list=False)[0].shape[0]
    assert n_pairs > 2000  # ~1,600 pairs per frame: many chunks of 97
    chunked, plain = _pair(edge_chunk=97, method=method)
    tol = dict(rtol=0, atol=TOLERANCES[torch.float64]["atol"])
    e_c, f_c, s_c = _evaluate(chunked, batch, create_graph=True)
    e_p, f_p, s_p = _evaluate(plain, batch, create_graph=True)
    assert e_p.abs().max() > 1e-2 and f_p.abs().max() > 1e-2 and s_p.abs().max() > 1e-2
    torch.testing.assert_close(e_c, e_p, **tol)
    torch.testing.assert_close(f_c, f_p, **tol)
    torch.testing.assert_close(s_c, s_p, **tol)
    # Force loss (double backward) to the charge head's parameters.
    reference = torch.randn_like(f_p)
    grads = [
        torch.autograd.grad(((f - reference) ** 2).sum(), list(head.parameters()))
        for head, f, s in ((chunked, f_c, s_c), (plain, f_p, s_p))
    ]
    assert max(float(g.abs().max()) for g in grads[1]) > 1e-2
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_chunked_real_space_forces_match_finite_differences():
    """Independent of the unchunked path: central differences of the chunked energy."""
    batch = _batch(n_atoms=24, box=8.0, n_frames=1, seed=2)
    head, _ = _pair(edge_chunk=50)
    _, forces, _ = _evaluate(head, batch)
    h = 1e-5
    for atom, axis in ((0, 0), (5, 1), (17, 2)):
        shifted = []
        for sign in (1, -1):
            pos = batch.positions.clone()
            pos[atom, axis] += sign * h
            moved = dataclasses.replace(batch, positions=pos)
            shifted.append(float(head(moved, _features(pos)).sum().detach()))
        fd = -(shifted[0] - shifted[1]) / (2 * h)
        assert abs(fd - float(forces[atom, axis])) < 1e-7, (atom, axis, fd, float(forces[atom, axis]))


def test_small_frames_keep_the_unchunked_path(monkeypatch):
    from scalepool.models import _electrostatics

    calls = []
    monkeypatch.setattr(_electrostatics, "chunked_edge_sum", lambda *a, **k: calls.append(1) / 0)
    head = LatentChargeEwald(n_features=N_FEATURES).double()  # default edge_chunk: 262,144 pairs
    batch = _batch(n_frames=1)
    head(batch, _features(batch.positions))
    assert not calls
    with pytest.raises(ValueError, match="edge_chunk must be a non-negative"):
        LatentChargeEwald(edge_chunk=-1)


# ------------------------------------------------------------------ frozen mesh
def _cubic(box: float) -> AtomsBatch:
    """Na/Cl/O/H point charges at fixed fractional coordinates in a cubic box of edge ``box`` Å."""
    frames = random_frames(n_atoms=16, box=1.0, n_frames=1, seed=7, min_distance=0.15, triclinic=False)
    frac = torch.as_tensor(frames.positions[0], dtype=torch.float64)
    return AtomsBatch(
        positions=frac * box,
        numbers=torch.as_tensor(frames.numbers, dtype=torch.long),
        frame_index=torch.zeros(16, dtype=torch.long),
        cell=torch.eye(3, dtype=torch.float64)[None] * box,
        n_frames=1,
    )


def _energy(head, box: float) -> float:
    return float(head(_cubic(box)).sum())


def test_frozen_mesh_makes_the_energy_continuous_across_a_mesh_boundary():
    # h = 1.2 Å: 2 L / h + 1 = 16 at L = 9 Å, so the default mesh goes from 16 to 32 points there.
    boxes = 9.0 + 1e-4 * np.arange(-5, 6)  # Å
    free = LatentChargeEwald(fixed_charges=True).double()
    frozen = LatentChargeEwald(fixed_charges=True).double()
    assert frozen.freeze_mesh(_cubic(8.95).cell[0]) == (16, 16, 16)
    e_free = np.array([_energy(free, b) for b in boxes])
    e_frozen = np.array([_energy(frozen, b) for b in boxes])
    coarse = np.array([int(get_ns_mesh(_cubic(b).cell[0], 1.2)[0]) == 16 for b in boxes])
    assert coarse.any() and not coarse.all()  # the scan crosses the boundary
    # Same numbers wherever the default mesh is the frozen one.
    np.testing.assert_allclose(e_frozen[coarse], e_free[coarse], rtol=0, atol=1e-12)
    step_free, step_frozen = np.diff(e_free), np.diff(e_frozen)
    smooth = np.abs(step_frozen).max()
    assert smooth > 1e-6  # E changes with L (eV per 0.1 mÅ)
    assert np.abs(np.diff(step_frozen)).max() < 0.05 * smooth  # no jump: steps change little
    # The default mesh jumps at the boundary by more than the smooth change (the test can fail).
    jump = np.abs(step_free - step_frozen).max()
    assert jump > 3 * smooth, (jump, smooth)


@pytest.mark.parametrize("box", [8.99, 9.02])
def test_frozen_mesh_stress_is_the_energy_derivative_on_both_sides(box):
    head = LatentChargeEwald(fixed_charges=True).double()
    head.freeze_mesh(_cubic(8.9).cell[0])
    batch = _cubic(box)
    strain = torch.zeros(1, 3, 3, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(head(batch.strained(strain)).sum(), strain)
    h = 1e-6
    for i, j in ((0, 0), (1, 2)):
        direction = torch.zeros(1, 3, 3, dtype=torch.float64)
        direction[0, i, j] = direction[0, j, i] = 1.0  # a symmetric strain
        values = [float(head(batch.strained(sign * h * direction)).sum()) for sign in (1, -1)]
        fd = (values[0] - values[1]) / (2 * h)
        want = float((grad * direction).sum())  # dE along that strain, from autograd
        assert abs(want) > 1e-2
        assert abs(fd - want) < 1e-7 * max(1.0, abs(want)), (i, j, fd, want)


def test_freeze_mesh_options_and_errors():
    head = LatentChargeEwald(fixed_charges=True, mesh_shape=(16, 16, 32))
    assert head.mesh_shape == (16, 16, 32) and head.options["mesh_shape"] == [16, 16, 32]
    assert head.freeze_mesh() is None and head.mesh_shape is None
    with pytest.raises(ValueError, match="powers of two"):
        head.freeze_mesh(shape=(12, 16, 16))
    with pytest.raises(ValueError, match="needs a mesh method"):
        LatentChargeEwald(method="ewald").freeze_mesh(torch.eye(3) * 9)
    with pytest.raises(ValueError, match="does not fit cell lengths"):
        mesh_spacing_for_shape(torch.diag(torch.tensor([9.0, 9.0, 40.0])), (16, 16, 16))
    spacing = mesh_spacing_for_shape(torch.eye(3, dtype=torch.float64) * 30.0, (16, 16, 16))
    assert 2 * 30 / 15 <= spacing < 2 * 30 / 7
