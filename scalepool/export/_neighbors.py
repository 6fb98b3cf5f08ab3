"""A periodic neighbour list in plain torch ops, traceable into an exported graph.

The exported model cannot call vesin (numpy, no graph), so the pairs are found
with tensor ops whose only data-dependent step is ``torch.nonzero``, which
``make_fx`` and ``torch.export`` record with an unbacked pair count.

Algorithm: fractional coordinates wrapped into the cell on periodic axes; for
every ordered pair (i, j) and every image shift ``S`` in {-1, 0, 1}^3 (0 on
non-periodic axes) a candidate is kept when its distance along each cell
normal is below the cutoff, then when its full distance is.  This is exact
for any cell (triclinic included) as long as the cutoff does not exceed the
smallest cell height (the distance between opposite faces), which the export
checks.  Cost and memory are O(N^2): about 0.1 GB of temporaries for 1,500
atoms.  Pairs come out sorted by the first atom.
"""

from __future__ import annotations

import itertools

import torch

#: The 27 candidate image shifts, (27, 3) int64, in a fixed order.
_IMAGES = torch.tensor(list(itertools.product((-1, 0, 1), repeat=3)), dtype=torch.int64)


def cell_heights(cell: torch.Tensor) -> torch.Tensor:
    """(3,) Å, distance between opposite faces of ``cell`` (3, 3), rows are cell vectors."""
    return 1.0 / torch.linalg.vector_norm(torch.linalg.inv(cell), dim=0)


def torch_neighbor_list(
    positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, cutoff: float, full_list: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs within ``cutoff`` of one frame, with tensor ops only (no gradient).

    Parameters
    ----------
    positions : (n_atoms, 3), Å
    cell : (3, 3), Å, rows are cell vectors, non-singular (on non-periodic axes
        it only sets the frame in which the search runs)
    pbc : (3,) bool, periodic axes
    cutoff : Å, at most the smallest cell height
    full_list : both (i, j, S) and (j, i, -S) when True; else each once (i < j,
        or i == j with the first non-zero component of S positive), as vesin's half list

    Returns
    -------
    pairs : (n_pairs, 2) int64, (i, j); shifts : (n_pairs, 3) int64, with
    ``r_ij = x_j - x_i + shifts @ cell``; both as a vesin list of the same frame
    (same set of pairs, possibly another order).
    """
    with torch.no_grad():
        pos, box = positions.detach(), cell.detach()
        n = pos.shape[0]
        inverse = torch.linalg.inv(box)
        frac = pos @ inverse
        wrap = torch.where(pbc, torch.floor(frac), torch.zeros_like(frac))
        frac = frac - wrap
        heights = 1.0 / torch.linalg.vector_norm(inverse, dim=0)
        delta = (frac.unsqueeze(0) - frac.unsqueeze(1)).reshape(-1, 3)  # (n*n, 3): frac_j - frac_i
        images = _IMAGES.to(device=pos.device)
        steps = images[:13].new_tensor([-1, 0, 1]).to(delta.dtype)  # (3,)
        # per axis and per shift value: can the pair be within the cutoff along that normal?
        along = (delta.unsqueeze(-1) + steps).abs() * heights.unsqueeze(-1) < cutoff  # (n*n, 3, 3)
        along = along & (pbc.unsqueeze(-1) | (steps == 0))
        ok = along[:, 0, :, None, None] & along[:, 1, None, :, None] & along[:, 2, None, None, :]
        candidate = torch.nonzero(ok.reshape(-1, 27))  # (n_candidates, 2): pair index, image index
        pair, image = candidate[:, 0], candidate[:, 1]
        i, j = torch.div(pair, n, rounding_mode="floor"), torch.remainder(pair, n)
        shift_w = images[image]  # shift between wrapped positions
        vector = (delta[pair] + shift_w.to(delta.dtype)) @ box
        keep = (vector.square().sum(-1) < cutoff * cutoff) & ((i != j) | (shift_w != 0).any(-1))
        if not full_list:
            first = (shift_w * torch.tensor([9, 3, 1], device=pos.device)).sum(-1)  # sign of the first non-zero
            keep = keep & ((i < j) | ((i == j) & (first > 0)))
        index = torch.nonzero(keep).squeeze(-1)
        i, j, shift_w = i[index], j[index], shift_w[index]
        wrap = wrap.to(torch.int64)
        shifts = shift_w + wrap[i] - wrap[j]
        return torch.stack([i, j], dim=1), shifts
