"""A periodic neighbour list in plain torch ops, traceable into an exported graph.

The exported model cannot call vesin (numpy, no graph), so the pairs are found
with tensor ops whose only data-dependent step is ``torch.nonzero``, which
``make_fx`` and ``torch.export`` record with an unbacked pair count.

Algorithm: fractional coordinates wrapped into the cell on periodic axes; an
ordered pair (i, j) is a candidate when its nearest image is within the cutoff
along every cell normal; for each candidate the 8 combinations of the nearest
and the second-nearest image along each periodic axis are kept when their full
distance is below the cutoff.  A pair's distance is at least its distance along
each normal, so with a cutoff no larger than the smallest cell height (the
distance between opposite faces, which the export checks) no farther image can
be in range: the list is exact for any cell, triclinic included, and has no
self-images.  Cost and memory are O(N^2) in the first step: about 30 MB of
temporaries for 1,500 atoms.
"""

from __future__ import annotations

import itertools

import torch

#: Corners of the unit cube, (8, 3): which axes take the second-nearest image.
_CORNERS = torch.tensor(list(itertools.product((0, 1), repeat=3)), dtype=torch.int64)


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
        heights = 1.0 / torch.linalg.vector_norm(inverse, dim=0)
        frac = pos @ inverse
        wrap = torch.where(pbc, torch.floor(frac), torch.zeros_like(frac))
        frac = frac - wrap
        delta = (frac.unsqueeze(0) - frac.unsqueeze(1)).reshape(-1, 3)  # (n*n, 3): frac_j - frac_i
        # nearest image along each axis; a pair is a candidate when it is within the
        # cutoff along every cell normal there
        nearest = torch.where(pbc, -torch.round(delta), torch.zeros_like(delta))
        delta = delta + nearest
        candidate = torch.nonzero(((delta.abs() * heights) < cutoff).all(-1)).squeeze(-1)
        i, j = torch.div(candidate, n, rounding_mode="floor"), torch.remainder(candidate, n)
        delta, nearest = delta[candidate], nearest[candidate]
        # with cutoff <= height only the two nearest images along an axis can be in
        # range: the nearest, and the next one on the other side (periodic axes)
        other = torch.where(delta >= 0, -1.0, 1.0).to(delta.dtype)  # (n_candidates, 3)
        reach = pbc & ((1.0 - delta.abs()) * heights < cutoff)  # the second image is in range along k
        corners = _CORNERS.to(device=pos.device)  # (8, 3) in {0, 1}
        usable = ((corners == 0) | reach.unsqueeze(1)).all(-1)  # (n_candidates, 8)
        image = torch.nonzero(usable)  # (n_images, 2): candidate, corner
        c, corner = image[:, 0], corners[image[:, 1]].to(delta.dtype)
        i, j = i[c], j[c]
        frac_vector = delta[c] + corner * other[c]
        vector = frac_vector @ box
        keep = (vector.square().sum(-1) < cutoff * cutoff) & ((i != j) | (frac_vector != 0).any(-1))
        shift_w = (nearest[c] + corner * other[c]).to(torch.int64)  # between wrapped positions
        if not full_list:
            # the sign of S[0] * 9 + S[1] * 3 + S[2] is the sign of the first non-zero component
            first = (shift_w * torch.tensor([9, 3, 1], device=pos.device)).sum(-1)
            keep = keep & ((i < j) | ((i == j) & (first > 0)))
        index = torch.nonzero(keep).squeeze(-1)
        i, j, shift_w = i[index], j[index], shift_w[index]
        wrap = wrap.to(torch.int64)
        shifts = shift_w + wrap[i] - wrap[j]
        return torch.stack([i, j], dim=1), shifts
