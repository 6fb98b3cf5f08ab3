"""The plain-torch neighbour list of exported models against vesin (scalepool.neighbors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalepool.export import cell_heights, torch_neighbor_list
from scalepool.neighbors import neighbor_pairs

CELLS = {
    "cubic": np.eye(3) * 9.0,
    "triclinic": np.array([[9.0, 0.0, 0.0], [3.0, 8.0, 0.0], [-2.0, 1.5, 8.5]]),
}


def _as_set(pairs, shifts, full_list: bool) -> set[tuple[int, ...]]:
    rows = {tuple(r) for r in np.concatenate([np.asarray(pairs), np.asarray(shifts)], axis=1).tolist()}
    if full_list:
        return rows
    # a half list holds one of (i, j, S) and (j, i, -S); compare canonical representatives
    canonical = {min(r, (r[1], r[0], -r[2], -r[3], -r[4])) for r in rows}
    assert len(canonical) == len(rows), "a pair appears in both directions in a half list"
    return canonical


@pytest.mark.parametrize("cell_name", sorted(CELLS))
@pytest.mark.parametrize("full_list", [True, False])
@pytest.mark.parametrize("cutoff", [3.0, 4.5, 7.5])  # 7.5 Å: beyond half the box, several images
def test_same_pairs_as_vesin(cell_name, full_list, cutoff):
    cell = CELLS[cell_name]
    assert float(cell_heights(torch.tensor(cell)).min()) >= cutoff
    positions = np.random.default_rng(1).uniform(-4.0, 13.0, size=(60, 3))  # some outside the cell
    pairs, shifts = torch_neighbor_list(
        torch.tensor(positions), torch.tensor(cell), torch.ones(3, dtype=torch.bool), cutoff, full_list
    )
    ref_pairs, ref_shifts = neighbor_pairs(positions, cutoff, cell, full_list=full_list)
    assert len(ref_pairs) > 0
    assert _as_set(pairs, shifts, full_list) == _as_set(ref_pairs, ref_shifts, full_list)
    # and the shifts give the distances they claim
    vectors = positions[pairs[:, 1]] - positions[pairs[:, 0]] + shifts.numpy() @ cell
    assert np.linalg.norm(vectors, axis=1).max() < cutoff


def test_open_boundaries_as_vesin():
    positions = np.random.default_rng(2).uniform(0.0, 9.0, size=(50, 3))
    pairs, shifts = torch_neighbor_list(
        torch.tensor(positions), torch.tensor(np.eye(3) * 9.0), torch.zeros(3, dtype=torch.bool), 4.0
    )
    ref_pairs, ref_shifts = neighbor_pairs(positions, 4.0, None)
    assert not shifts.any()
    assert _as_set(pairs, shifts, True) == _as_set(ref_pairs, ref_shifts, True)


def test_cell_heights_of_a_triclinic_cell():
    cell = CELLS["triclinic"]
    volume = abs(np.linalg.det(cell))
    expected = [volume / np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])) for k in range(3)]
    np.testing.assert_allclose(cell_heights(torch.tensor(cell)).numpy(), expected, rtol=1e-12)
