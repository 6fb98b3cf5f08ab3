"""The on-device neighbour list (vesin-torch) against brute force and the numpy (vesin) path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from test_neighbors import _as_dict, _brute_pairs, _plane_spacings, _random_cell

from scalepool.models import AtomsBatch
from scalepool.neighbors import (
    batched_neighbor_pairs,
    neighbor_pairs,
    torch_batched_neighbor_pairs,
    torch_neighbor_pairs,
)


def _keys(pairs, shifts) -> list[tuple[int, ...]]:
    pairs, shifts = np.asarray(pairs), np.asarray(shifts)
    return sorted((i, j, *s) for (i, j), s in zip(pairs.tolist(), shifts.tolist(), strict=True))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("relative_cutoff", [0.3, 0.8, 1.6])
def test_torch_full_list_matches_brute_force_and_numpy(seed, relative_cutoff):
    """Triclinic cell, atoms partly outside it, cutoffs below half the box, above it and above the box."""
    rng = np.random.default_rng(seed)
    cell = _random_cell(rng)
    cutoff = relative_cutoff * _plane_spacings(cell).max()
    positions = rng.uniform(-0.3, 1.3, (30, 3)) @ cell
    pairs, shifts = torch_neighbor_pairs(torch.from_numpy(positions), cutoff, torch.from_numpy(cell))
    assert pairs.dtype == shifts.dtype == torch.long
    got = _as_dict(pairs.numpy(), shifts.numpy(), positions, cell)
    assert set(got) == set(_brute_pairs(positions, cell, cutoff))
    for full_list in (True, False):
        want = neighbor_pairs(positions, cutoff, cell, full_list=full_list)
        have = torch_neighbor_pairs(torch.from_numpy(positions), cutoff, torch.from_numpy(cell), full_list)
        assert _keys(*have) == _keys(*want)


def test_torch_open_boundaries_match_cdist_and_numpy():
    rng = np.random.default_rng(4)
    positions = rng.normal(scale=4.0, size=(60, 3))
    cutoff = 3.5
    pairs, shifts = torch_neighbor_pairs(torch.from_numpy(positions), cutoff, None)
    distance = cdist(positions, positions)
    np.fill_diagonal(distance, np.inf)
    expected = {(int(i), int(j)) for i, j in zip(*np.nonzero(distance < cutoff), strict=True)}
    assert {tuple(p) for p in pairs.tolist()} == expected and len(pairs) == len(expected)
    assert not shifts.any()
    half = torch_neighbor_pairs(torch.from_numpy(positions), cutoff, None, full_list=False)
    assert _keys(*half) == _keys(*neighbor_pairs(positions, cutoff, None, full_list=False))


def test_float32_positions_give_the_pairs_of_their_float64_values():
    rng = np.random.default_rng(6)
    cell = _random_cell(rng, length=8.0).astype(np.float32)
    positions = (rng.uniform(0, 1, (40, 3)) @ cell).astype(np.float32)
    have = torch_neighbor_pairs(torch.from_numpy(positions), 4.0, torch.from_numpy(cell))
    want = neighbor_pairs(positions.astype(np.float64), 4.0, cell.astype(np.float64))
    assert _keys(*have) == _keys(*want)


@pytest.mark.parametrize("periodic", [True, False])
def test_torch_batched_pairs_equal_numpy_batched_pairs(periodic):
    rng = np.random.default_rng(9)
    sizes = [12, 20, 7]
    cells = np.stack([_random_cell(rng, length=7.0) for _ in sizes])
    positions = np.concatenate([rng.uniform(0, 1, (n, 3)) @ c for n, c in zip(sizes, cells, strict=True)])
    frame_index = np.repeat(np.arange(len(sizes)), sizes)
    batch_cell = cells if periodic else None
    for full_list in (True, False):
        want_pairs, want_shifts = batched_neighbor_pairs(positions, 5.0, batch_cell, frame_index, full_list)
        pairs, shifts = torch_batched_neighbor_pairs(
            torch.from_numpy(positions),
            5.0,
            None if batch_cell is None else torch.from_numpy(batch_cell),
            torch.from_numpy(frame_index),
            full_list,
        )
        assert _keys(pairs, shifts) == _keys(want_pairs, want_shifts)
        pair_frame = frame_index[pairs[:, 0].numpy()]
        assert (pair_frame == frame_index[pairs[:, 1].numpy()]).all()
        assert (np.diff(pair_frame) >= 0).all(), "pairs must be grouped by frame, in frame order"


def test_atoms_batch_neighbors_on_the_positions_device():
    rng = np.random.default_rng(2)
    cells = np.stack([_random_cell(rng, length=8.0) for _ in range(2)])
    positions = np.stack([rng.uniform(0, 1, (15, 3)) @ c for c in cells])
    batch = AtomsBatch.from_arrays(positions, np.full(15, 8), cells, dtype=torch.float32)
    pairs, shifts = batch.neighbors(4.0)
    assert pairs.device == batch.device and pairs.dtype == torch.long and shifts.dtype == torch.long
    want = batched_neighbor_pairs(
        batch.positions.double().numpy(), 4.0, batch.cell.double().numpy(), batch.frame_index.numpy()
    )
    assert _keys(pairs, shifts) == _keys(*want)
    assert len(pairs) > 0
    distances = batch.edge_vectors(pairs, shifts).norm(dim=1)
    assert float(distances.max()) < 4.0


def test_torch_invalid_inputs_are_rejected():
    with pytest.raises(ValueError, match=r"positions must have shape \(n_atoms, 3\), got \(5, 2\)"):
        torch_neighbor_pairs(torch.zeros(5, 2), 3.0)
    with pytest.raises(ValueError, match="cutoff must be positive, got 0"):
        torch_neighbor_pairs(torch.zeros(5, 3), 0.0)
    with pytest.raises(ValueError, match=r"cell must have shape \(3, 3\), got \(3,\)"):
        torch_neighbor_pairs(torch.zeros(5, 3), 3.0, torch.ones(3))
    with pytest.raises(ValueError, match="frame_index must be sorted"):
        torch_batched_neighbor_pairs(torch.zeros(4, 3), 3.0, None, torch.tensor([0, 1, 0, 1]), n_frames=2)
    with pytest.raises(ValueError, match=r"cell must have shape \(3, 3, 3\)"):
        torch_batched_neighbor_pairs(
            torch.zeros(4, 3), 3.0, torch.eye(3).expand(2, 3, 3), torch.tensor([0, 1, 2, 2]), n_frames=3
        )
