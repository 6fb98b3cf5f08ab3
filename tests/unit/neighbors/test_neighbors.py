"""Neighbour lists against a brute-force image search, ASE and MDAnalysis; torch gradients."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list as ase_neighbor_list
from MDAnalysis.lib.distances import self_capped_distance
from MDAnalysis.lib.mdamath import triclinic_box, triclinic_vectors
from scipy.spatial.distance import cdist

from scalepool.neighbors import batched_neighbor_pairs, neighbor_pairs, pair_vectors


def _random_cell(rng, length=9.0):
    """A random triclinic cell (rows), tilts up to 40 % of the edge length."""
    cell = np.diag(rng.uniform(0.85, 1.15, 3) * length)
    cell[np.tril_indices(3, -1)] = rng.uniform(-0.4, 0.4, 3) * length
    return cell[rng.permutation(3)]  # not lower-triangular: any row order


def _plane_spacings(cell):
    """(3,) distances between lattice planes, Å: 1 / |b_k|."""
    return 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)


def _brute_pairs(positions, cell, cutoff):
    """Full list as a set of (i, j, s0, s1, s2) with |x_j - x_i + S @ cell| < cutoff.

    A shift S can only qualify if |S_k + df_k| <= cutoff |b_k| for the
    fractional difference df, so looping over |S_k| <= max|df_k| + cutoff |b_k|
    visits every candidate image.
    """
    inverse = np.linalg.inv(cell)
    frac = positions @ inverse
    dfrac = frac[None, :, :] - frac[:, None, :]
    reach = np.ceil(np.abs(dfrac).max(axis=(0, 1)) + cutoff * np.linalg.norm(inverse, axis=0)).astype(int)
    delta = positions[None, :, :] - positions[:, None, :]
    found = {}
    for shift in itertools.product(*[range(-m, m + 1) for m in reach]):
        distance = np.linalg.norm(delta + np.array(shift) @ cell, axis=-1)
        if not any(shift):
            np.fill_diagonal(distance, np.inf)
        for i, j in zip(*np.nonzero(distance < cutoff), strict=True):
            found[(int(i), int(j), *shift)] = distance[i, j]
    return found


def _as_dict(pairs, shifts, positions, cell):
    vectors = positions[pairs[:, 1]] - positions[pairs[:, 0]] + shifts @ cell
    distances = np.linalg.norm(vectors, axis=1)
    keys = [(i, j, *s) for (i, j), s in zip(pairs.tolist(), shifts.tolist(), strict=True)]
    assert len(set(keys)) == len(keys), "duplicate (i, j, shift) entries"
    return dict(zip(keys, distances, strict=True))


def _canonical(key):
    """One representative of (i, j, S) and (j, i, -S)."""
    i, j, *shift = key
    mirrored = (j, i, *(-s for s in shift))
    return min(tuple(key), mirrored)


# ------------------------------------------------------------ brute force
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("relative_cutoff", [0.3, 0.8, 1.6])
def test_full_list_matches_brute_force(seed, relative_cutoff):
    """Cutoffs below half the box, above it (several images of a pair), and
    above the box itself (an atom meets its own images)."""
    rng = np.random.default_rng(seed)
    cell = _random_cell(rng)
    spacing = _plane_spacings(cell)
    cutoff = relative_cutoff * spacing.max()
    positions = rng.uniform(-0.3, 1.3, (30, 3)) @ cell  # some atoms outside the cell
    expected = _brute_pairs(positions, cell, cutoff)

    pairs, shifts = neighbor_pairs(positions, cutoff, cell, full_list=True)
    got = _as_dict(pairs, shifts, positions, cell)
    assert set(got) == set(expected)
    keys = sorted(expected)
    np.testing.assert_allclose([got[k] for k in keys], [expected[k] for k in keys], atol=1e-10)
    if relative_cutoff > 0.5:
        multi = {(i, j) for (i, j, *_) in got}
        assert len(multi) < len(got)  # the case really has several images of a pair
    if relative_cutoff > 1.0:
        assert any(i == j for (i, j, *_) in got)  # and self-images


@pytest.mark.parametrize("relative_cutoff", [0.3, 1.6])
def test_half_list_holds_each_pair_once(relative_cutoff):
    rng = np.random.default_rng(3)
    cell = _random_cell(rng)
    cutoff = relative_cutoff * _plane_spacings(cell).max()
    positions = rng.uniform(0, 1, (30, 3)) @ cell
    full = _as_dict(*neighbor_pairs(positions, cutoff, cell, full_list=True), positions, cell)
    half = _as_dict(*neighbor_pairs(positions, cutoff, cell, full_list=False), positions, cell)
    assert 2 * len(half) == len(full)
    canonical_half = {_canonical(k) for k in half}
    assert len(canonical_half) == len(half)  # never both (i, j, S) and (j, i, -S)
    assert canonical_half == {_canonical(k) for k in full}


def test_open_boundaries_match_cdist():
    rng = np.random.default_rng(4)
    positions = rng.normal(scale=4.0, size=(60, 3))
    cutoff = 3.5
    pairs, shifts = neighbor_pairs(positions, cutoff, None)
    distance = cdist(positions, positions)
    np.fill_diagonal(distance, np.inf)
    expected = {(int(i), int(j)) for i, j in zip(*np.nonzero(distance < cutoff), strict=True)}
    assert {tuple(p) for p in pairs.tolist()} == expected
    assert len(pairs) == len(expected) and not shifts.any()
    half, _ = neighbor_pairs(positions, cutoff, None, full_list=False)
    assert {tuple(sorted(p)) for p in half.tolist()} == {tuple(sorted(p)) for p in expected}
    assert 2 * len(half) == len(pairs)


# ------------------------------------------------------ independent codes
@pytest.mark.parametrize("relative_cutoff", [0.4, 1.3])
def test_full_list_matches_ase(relative_cutoff):
    rng = np.random.default_rng(5)
    cell = _random_cell(rng, length=10.0)
    cutoff = relative_cutoff * _plane_spacings(cell).max()
    positions = rng.uniform(0, 1, (40, 3)) @ cell
    atoms = Atoms("X40", positions=positions, cell=cell, pbc=True)
    i, j, shift, distance = ase_neighbor_list("ijSd", atoms, cutoff)
    expected = {
        (a, b, *s): d for a, b, s, d in zip(i.tolist(), j.tolist(), shift.tolist(), distance, strict=True)
    }
    got = _as_dict(*neighbor_pairs(positions, cutoff, cell), positions, cell)
    assert set(got) == set(expected)
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), atol=1e-10)


def test_half_list_distances_match_mdanalysis():
    """Below half the smallest plane spacing each pair has one image in range,
    so MDAnalysis' minimum-image search (float32) must find the same pairs."""
    rng = np.random.default_rng(6)
    cell = triclinic_vectors(np.array([21.0, 19.0, 20.0, 80.0, 95.0, 75.0])).astype(np.float64)
    positions = rng.uniform(0, 1, (300, 3)) @ cell
    cutoff = 0.45 * _plane_spacings(cell).min()
    pairs, shifts = neighbor_pairs(positions, cutoff, cell, full_list=False)
    distance = np.linalg.norm(positions[pairs[:, 1]] - positions[pairs[:, 0]] + shifts @ cell, axis=1)
    ours = {tuple(sorted(p)): d for p, d in zip(pairs.tolist(), distance, strict=True)}
    mda_pairs, mda_distance = self_capped_distance(positions, cutoff, box=triclinic_box(*cell))
    theirs = {tuple(sorted(p)): d for p, d in zip(mda_pairs.tolist(), mda_distance, strict=True)}
    near_cutoff = {k for k, d in theirs.items() if abs(d - cutoff) < 1e-4}  # float32 rounding
    assert set(ours) - near_cutoff == set(theirs) - near_cutoff
    assert len(ours) > 500
    common = sorted(set(ours) & set(theirs))
    np.testing.assert_allclose([ours[k] for k in common], [theirs[k] for k in common], atol=2e-4)


# -------------------------------------------------------- torch distances
def test_pair_vectors_gradients_are_analytic():
    """d/dx of sum_p |r_p| is sum of unit vectors; d/dcell is sum_p S_p (x) r_p/|r_p|."""
    rng = np.random.default_rng(7)
    cell_np = _random_cell(rng, length=8.0)
    positions_np = rng.uniform(0, 1, (25, 3)) @ cell_np
    pairs_np, shifts_np = neighbor_pairs(positions_np, 0.9 * _plane_spacings(cell_np).max(), cell_np)
    positions = torch.tensor(positions_np, requires_grad=True)
    cell = torch.tensor(cell_np, requires_grad=True)
    pairs, shifts = torch.from_numpy(pairs_np), torch.from_numpy(shifts_np)
    vectors = pair_vectors(positions, pairs, shifts, cell)
    vectors.norm(dim=1).sum().backward()
    expected = positions_np[pairs_np[:, 1]] - positions_np[pairs_np[:, 0]] + shifts_np @ cell_np
    np.testing.assert_allclose(vectors.detach().numpy(), expected, rtol=0, atol=1e-12)

    unit = vectors.detach().numpy() / np.linalg.norm(vectors.detach().numpy(), axis=1, keepdims=True)
    grad_positions = np.zeros_like(positions_np)
    np.add.at(grad_positions, pairs_np[:, 1], unit)
    np.add.at(grad_positions, pairs_np[:, 0], -unit)
    np.testing.assert_allclose(positions.grad.numpy(), grad_positions, atol=1e-10)
    np.testing.assert_allclose(cell.grad.numpy(), shifts_np.T.astype(float) @ unit, atol=1e-10)
    assert np.abs(cell.grad.numpy()).max() > 1.0  # images really contribute


def test_pair_vectors_gradcheck():
    rng = np.random.default_rng(8)
    cell_np = _random_cell(rng, length=6.0)
    positions_np = rng.uniform(0, 1, (8, 3)) @ cell_np
    pairs, shifts = (torch.from_numpy(a) for a in neighbor_pairs(positions_np, 5.0, cell_np))
    positions = torch.tensor(positions_np, requires_grad=True)
    cell = torch.tensor(cell_np, requires_grad=True)

    def energy(x, h):
        r = pair_vectors(x, pairs, shifts, h).norm(dim=1)
        return (1.0 / r).sum()

    assert torch.autograd.gradcheck(energy, (positions, cell))


# ---------------------------------------------------------------- batching
@pytest.mark.parametrize("periodic", [True, False])
def test_batched_pairs_equal_per_frame_pairs(periodic):
    rng = np.random.default_rng(9)
    sizes = [12, 20, 7]
    cells = np.stack([_random_cell(rng, length=7.0) for _ in sizes])
    frames = [rng.uniform(0, 1, (n, 3)) @ c for n, c in zip(sizes, cells, strict=True)]
    positions = np.concatenate(frames)
    frame_index = np.repeat(np.arange(len(sizes)), sizes)
    cutoff = 5.0
    batch_cell = cells if periodic else None
    pairs, shifts = batched_neighbor_pairs(positions, cutoff, batch_cell, frame_index)

    offsets = np.concatenate([[0], np.cumsum(sizes)])
    expected_pairs, expected_shifts = [], []
    for f, frame in enumerate(frames):
        p, s = neighbor_pairs(frame, cutoff, cells[f] if periodic else None)
        expected_pairs.append(p + offsets[f])
        expected_shifts.append(s)
    np.testing.assert_array_equal(pairs, np.concatenate(expected_pairs))
    np.testing.assert_array_equal(shifts, np.concatenate(expected_shifts))
    assert (frame_index[pairs[:, 0]] == frame_index[pairs[:, 1]]).all()

    if periodic:
        pair_frame = torch.from_numpy(frame_index[pairs[:, 0]])
        batched = pair_vectors(
            torch.from_numpy(positions),
            torch.from_numpy(pairs),
            torch.from_numpy(shifts),
            torch.from_numpy(cells),
            pair_frame,
        )
        per_frame = torch.cat(
            [
                pair_vectors(
                    torch.from_numpy(frames[f]),
                    torch.from_numpy(p - offsets[f]),
                    torch.from_numpy(s),
                    torch.from_numpy(cells[f]),
                )
                for f, (p, s) in enumerate(zip(expected_pairs, expected_shifts, strict=True))
            ]
        )
        torch.testing.assert_close(batched, per_frame, rtol=0, atol=1e-12)
        assert batched.norm(dim=1).max() < cutoff
        with pytest.raises(ValueError, match="needs pair_frame"):
            pair_vectors(
                torch.from_numpy(positions),
                torch.from_numpy(pairs),
                torch.from_numpy(shifts),
                torch.from_numpy(cells),
            )


# -------------------------------------------------------------- validation
def test_invalid_inputs_are_rejected():
    with pytest.raises(ValueError, match=r"positions must have shape \(n_atoms, 3\), got \(5, 2\)"):
        neighbor_pairs(np.zeros((5, 2)), 3.0, None)
    with pytest.raises(ValueError, match="cutoff must be positive, got 0"):
        neighbor_pairs(np.zeros((5, 3)), 0.0, None)
    with pytest.raises(ValueError, match=r"cell must have shape \(3, 3\), got \(3,\)"):
        neighbor_pairs(np.zeros((5, 3)), 3.0, np.ones(3))
