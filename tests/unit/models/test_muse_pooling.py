"""Soft coarse-graining pooling: rows of S, symmetry covariance, periodic images, smoothness."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from scalepool.models._batch import AtomsBatch
from scalepool.models._pooling import SoftCoarseGraining, assignment_envelope
from scalepool.testing._systems import water_box
from scalepool.units import CHLORINE, HYDROGEN, OXYGEN, SODIUM


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny systems gain nothing from threads, and spinning threads stall on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _rotation(seed: int) -> torch.Tensor:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return torch.as_tensor(q)


@pytest.fixture(scope="module")
def water() -> AtomsBatch:
    """A periodic 10 Å water box with two ion pairs, float64 (about 100 atoms)."""
    return AtomsBatch.from_frameset(water_box(box=10.0, n_ion_pairs=2, seed=3), dtype=torch.float64)


@pytest.fixture(scope="module")
def pooling() -> SoftCoarseGraining:
    torch.manual_seed(0)
    module = SoftCoarseGraining(sigma=1.2, cutoff=3.5, n_features=4).double()
    with torch.no_grad():  # non-trivial centre weights and feature score
        module.species_bias[[OXYGEN, SODIUM, CHLORINE]] = torch.tensor([0.0, 0.7, -0.4], dtype=torch.float64)
        module.score.weight.normal_()
    return module


def _features(batch: AtomsBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-species scalars (n, 4) and vectors (n, 3, 4) pointing at the frame's first atom."""
    gen = torch.Generator().manual_seed(1)
    table = torch.randn(119, 4, generator=gen, dtype=torch.float64)
    scalar = table[batch.numbers]
    vector = (batch.positions - batch.positions[:1]).unsqueeze(-1) * scalar.unsqueeze(1)
    return scalar, vector


def test_rows_sum_to_one_and_nodes_follow_species(water, pooling):
    a = pooling(water, _features(water)[0])
    heavy = water.numbers != HYDROGEN
    assert a.n_nodes == int(heavy.sum())
    assert torch.equal(a.seeds, torch.nonzero(heavy).squeeze(-1))
    torch.testing.assert_close(
        a.row_sums(), torch.ones(water.n_atoms, dtype=torch.float64), atol=1e-12, rtol=0
    )
    dense = a.dense()
    assert dense.shape == (water.n_atoms, a.n_nodes) and (dense >= 0).all()
    torch.testing.assert_close(dense.sum(0), a.mass)
    # a seed is mostly its own node: water O keeps more than half of itself
    assert (dense[a.seeds, torch.arange(a.n_nodes)] > 0.5).all()
    # a water's node mass is about 3 (O and both H), minus what leaks to neighbours
    assert 2.0 < float(a.mass.detach()[water.numbers[a.seeds] == OXYGEN].mean()) < 3.5


def test_centroids_and_pooled_features_by_hand(water, pooling):
    scalar, vector = _features(water)
    a = pooling(water, scalar)
    dense = a.dense()
    k = 5
    seed = water.positions[a.seeds[k]]
    frac = torch.linalg.solve(water.cell[0].T, (water.positions - seed).T).T
    unwrapped = seed + (frac - torch.round(frac)) @ water.cell[0]  # minimum image around the seed
    centroid = (dense[:, k, None] * unwrapped).sum(0) / dense[:, k].sum()
    torch.testing.assert_close(a.positions[k], centroid)
    torch.testing.assert_close(a.pool(scalar), dense.T @ scalar / a.mass[:, None])
    torch.testing.assert_close(a.unpool(a.pool(scalar)), dense @ (dense.T @ scalar / a.mass[:, None]))
    assert a.pool(vector).shape == (a.n_nodes, 3, 4)


def test_rotation_and_translation(water, pooling):
    scalar, vector = _features(water)
    a = pooling(water, scalar)
    rot, shift = _rotation(7), torch.tensor([0.3, -2.1, 7.4], dtype=torch.float64)
    moved = dataclasses.replace(water, positions=water.positions @ rot.T + shift, cell=water.cell @ rot.T)
    b = pooling(moved, scalar)
    torch.testing.assert_close(b.dense(), a.dense())
    torch.testing.assert_close(b.positions, a.positions @ rot.T + shift)
    rotated_vectors = torch.einsum("ij,njf->nif", rot, vector)
    torch.testing.assert_close(b.pool(rotated_vectors), torch.einsum("ij,njf->nif", rot, a.pool(vector)))


def test_permutation(water, pooling):
    scalar, _ = _features(water)
    a = pooling(water, scalar)
    perm = torch.randperm(water.n_atoms, generator=torch.Generator().manual_seed(2))
    permuted = dataclasses.replace(water, positions=water.positions[perm], numbers=water.numbers[perm])
    b = pooling(permuted, scalar[perm])
    # node order follows seed order: node of old seed s sits where perm puts s
    old_node_of_new = torch.argsort(torch.argsort(perm)[a.seeds])
    torch.testing.assert_close(b.dense(), a.dense()[perm][:, old_node_of_new])
    torch.testing.assert_close(b.positions, a.positions[old_node_of_new])


@pytest.mark.parametrize("atom_species", [HYDROGEN, OXYGEN])
def test_lattice_translation_of_one_atom(water, pooling, atom_species):
    scalar, _ = _features(water)
    a = pooling(water, scalar)
    i = int(torch.nonzero(water.numbers == atom_species)[3])
    lattice = torch.tensor([1.0, -2.0, 1.0], dtype=torch.float64) @ water.cell[0]
    positions = water.positions.clone()
    positions[i] += lattice
    b = pooling(dataclasses.replace(water, positions=positions), scalar)
    torch.testing.assert_close(b.dense(), a.dense())
    expected = a.positions.clone()
    if atom_species != HYDROGEN:  # the moved atom seeds a node: its centroid moves by the same lattice vector
        expected[int(torch.nonzero(a.seeds == i))] += lattice
    torch.testing.assert_close(b.positions, expected)


def test_assignment_changes_linearly_with_displacement(water, pooling):
    scalar, _ = _features(water)
    direction = torch.randn(
        water.positions.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64
    )
    direction /= direction.norm()
    ratios = []
    with torch.no_grad():
        base = pooling(water, scalar).dense()
        for step in (1e-2, 1e-3, 1e-4):
            moved = dataclasses.replace(water, positions=water.positions + step * direction)
            ratios.append(float((pooling(moved, scalar).dense() - base).abs().max()) / step)
    assert 1e-3 < ratios[-1] < 10.0  # |dS| = O(|dx|), with a bounded constant
    assert ratios[1] == pytest.approx(ratios[2], rel=0.05)


def test_gradients_match_finite_differences():
    """S and centroids are differentiable in positions (gradcheck, 12 atoms, periodic)."""
    frames = water_box(box=6.0, n_ion_pairs=1, seed=5)
    batch = AtomsBatch.from_frameset(frames, dtype=torch.float64)
    batch = dataclasses.replace(
        batch, positions=batch.positions[:12], numbers=batch.numbers[:12], frame_index=batch.frame_index[:12]
    )
    module = SoftCoarseGraining(sigma=1.0, cutoff=3.0).double()

    def outputs(pos):
        a = module(dataclasses.replace(batch, positions=pos))
        return a.dense(), a.positions

    pos = batch.positions.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(outputs, (pos,), eps=1e-6, atol=1e-5)


def test_lone_point_leaves_smoothly():
    """A hydrogen walking away from its only anchor: its row sum falls from 1 to 0 with a bounded slope."""
    module = SoftCoarseGraining(sigma=1.0, cutoff=3.0).double()
    sums, slopes = [], []
    for d in np.linspace(1.0, 3.2, 111):
        x = torch.tensor(d, dtype=torch.float64, requires_grad=True)
        batch = AtomsBatch(
            positions=torch.stack(
                [torch.zeros(3, dtype=torch.float64), x * torch.tensor([1.0, 0, 0], dtype=torch.float64)]
            ),
            numbers=torch.tensor([OXYGEN, HYDROGEN]),
            frame_index=torch.zeros(2, dtype=torch.long),
            cell=None,
            n_frames=1,
        )
        row = module(batch).row_sums()[1]
        sums.append(float(row.detach()))
        slopes.append(float(torch.autograd.grad(row, x, allow_unused=True)[0] or 0.0))
    sums, slopes = np.array(sums), np.array(slopes)
    assert sums[0] == 1.0 and sums[-1] == 0.0
    assert np.all(np.diff(sums) <= 1e-12)
    # the fade spans about 1.2 Å: slope at most ~4.3 per Å, and 0 at both ends
    assert 1.0 < -slopes.min() < 5.0 and slopes[0] == 0.0 and slopes[-1] == 0.0


def test_envelope_is_c2_at_cutoff():
    r = torch.tensor([2.999999, 3.0, 3.5], dtype=torch.float64, requires_grad=True)
    f = assignment_envelope(r * r, 3.0)
    (g,) = torch.autograd.grad(f.sum(), r, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), r)
    f, g = f.detach(), g.detach()
    assert float(f.max()) < 1e-15 and float(g.abs().max()) < 1e-10 and float(h.abs().max()) < 1e-4


def test_frozen_flag_and_validation():
    frozen = SoftCoarseGraining(learnable=False, n_features=8)
    assert not list(frozen.parameters()) and frozen.score is None
    assert {"log_sigma", "species_bias"} <= set(dict(frozen.named_buffers()))
    learnable = SoftCoarseGraining(n_features=8)
    assert {"log_sigma", "species_bias", "score.weight"} == set(dict(learnable.named_parameters()))
    with pytest.raises(ValueError, match="anchor_species"):
        SoftCoarseGraining(anchor_species=[0])
    with pytest.raises(ValueError, match="sigma"):
        SoftCoarseGraining(sigma=-1.0)
