"""Neighbour lists on the positions' device (vesin-torch): no copy of the positions to the host.

The numpy functions of :mod:`._neighbor_list` stay the numpy API; this module
is what models call every step.  vesin-torch runs its cell-list search on the
device the positions live on (CPU or CUDA) and returns pairs and shifts there;
the search always runs in float64 (vesin casts), so the pairs are exactly
those of the numpy path for the same float64 coordinates.  The only host sync
is the list of per-frame atom counts (n_frames integers) of a batch with more
than one frame.
"""

from __future__ import annotations

import torch
import vesin_torch

#: One calculator per (cutoff, full_list): building one is cheap, but MD calls this every step.
_CALCULATORS: dict[tuple[float, bool], vesin_torch.NeighborList] = {}


def _calculator(cutoff: float, full_list: bool) -> vesin_torch.NeighborList:
    key = (float(cutoff), bool(full_list))
    calc = _CALCULATORS.get(key)
    if calc is None:
        calc = _CALCULATORS[key] = vesin_torch.NeighborList(cutoff=float(cutoff), full_list=bool(full_list))
    return calc


def torch_neighbor_pairs(
    positions: torch.Tensor,
    cutoff: float,
    cell: torch.Tensor | None = None,
    full_list: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs within ``cutoff`` in one frame, computed on ``positions.device``.

    Parameters
    ----------
    positions : (n_atoms, 3), Å, any float dtype (searched in float64; no gradient)
    cutoff : Å; may exceed half the box (several images of a pair are returned)
    cell : (3, 3), Å, rows are cell vectors, or ``None`` for open boundaries
    full_list : both (i, j) and (j, i) when True, else each pair once

    Returns
    -------
    pairs : (n_pairs, 2) int64 on ``positions.device``, atom indices (i, j)
    shifts : (n_pairs, 3) int64, cell shift S with r_ij = x_j - x_i + S @ cell
    """
    if positions.dim() != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (n_atoms, 3), got {tuple(positions.shape)}")
    if not cutoff > 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    points = positions.detach().to(torch.float64)
    if cell is None:
        box, periodic = torch.zeros((3, 3), dtype=torch.float64, device=points.device), False
    else:
        if tuple(cell.shape) != (3, 3):
            raise ValueError(f"cell must have shape (3, 3), got {tuple(cell.shape)}")
        box, periodic = cell.detach().to(device=points.device, dtype=torch.float64), True
    i, j, shifts = _calculator(cutoff, full_list).compute(
        points=points.contiguous(), box=box.contiguous(), periodic=periodic, quantities="ijS"
    )
    return torch.stack([i, j], dim=1).to(torch.long), shifts.to(torch.long)


def torch_batched_neighbor_pairs(
    positions: torch.Tensor,
    cutoff: float,
    cell: torch.Tensor | None,
    frame_index: torch.Tensor,
    full_list: bool = True,
    n_frames: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighbour lists of several frames stored back to back, on ``positions.device``.

    Parameters
    ----------
    positions : (n_atoms_total, 3), Å, frames concatenated
    cutoff : Å
    cell : (n_frames, 3, 3), Å, or ``None`` (open boundaries)
    frame_index : (n_atoms_total,) int64, frame of each atom, sorted
    full_list : both directions of each pair when True
    n_frames : number of frames (default: from ``cell``, else from ``frame_index``, a host sync)

    Returns
    -------
    pairs : (n_pairs, 2) int64 global atom indices, grouped by frame in frame order;
    shifts : (n_pairs, 3) int64
    """
    device = positions.device
    n = positions.shape[0]
    if n_frames is None:
        n_frames = cell.shape[0] if cell is not None else (int(frame_index.max()) + 1 if n else 0)
    if cell is not None and cell.shape[0] != n_frames:
        raise ValueError(f"cell must have shape ({n_frames}, 3, 3), got {tuple(cell.shape)}")
    if n_frames <= 1:
        counts = [n] if n_frames == 1 else []
    else:
        counts = torch.bincount(frame_index, minlength=n_frames).tolist()
        if sum(counts) != n or bool((frame_index[1:] < frame_index[:-1]).any()):
            raise ValueError("frame_index must be sorted: frames are stored back to back")
    all_pairs, all_shifts, lo = [], [], 0
    for f, count in enumerate(counts):
        pairs, shifts = torch_neighbor_pairs(
            positions[lo : lo + count], cutoff, None if cell is None else cell[f], full_list
        )
        all_pairs.append(pairs + lo)
        all_shifts.append(shifts)
        lo += count
    if not all_pairs:
        empty = torch.zeros((0, 2), dtype=torch.long, device=device)
        return empty, torch.zeros((0, 3), dtype=torch.long, device=device)
    if len(all_pairs) == 1:
        return all_pairs[0], all_shifts[0]
    return torch.cat(all_pairs), torch.cat(all_shifts)
