"""Soft coarse-graining pooling: smooth fractional assignment of points to coarse nodes.

The MuSE idea (see ``PAPERS.md``) is that atoms belong *fractionally* to
coarse nodes, so that coarse positions and features are smooth functions of
the atomic positions and forces through the coarse level stay exact
gradients.  Only the abstract is public; the construction below is ours.

Which nodes, how many, seeded where
-----------------------------------
Every point (atom, or node of the level below) whose species is an *anchor
species* seeds one coarse node; by default every non-hydrogen atom, i.e. one
node per water oxygen and one per ion.  So

- ``n_coarse`` is fixed by the composition (the number of anchor-species
  points in the frame), and composition never changes along a trajectory:
  nodes never appear, vanish or jump when atoms move;
- the seed rule reads species only, so it is permutation covariant:
  permuting atoms permutes the nodes the same way (nodes are ordered by the
  index of their seed);
- there is no clustering step (k-means, farthest-point sampling: they
  change discontinuously with positions or depend on atom order), no fixed
  grid of nodes in the cell (not translation invariant) and no set of K
  learned attention centres ``c_k = sum_i a_ik x_i`` over all atoms (a
  centroid over the whole periodic cell has no well-defined image, costs
  O(n K), and K would not grow with the system).

A coarser level seeds on a subset of the level below (for the NaCl testbed:
nodes anchored on ions pool the molecule-level nodes around them).

Assignment
----------
For point ``i`` and node ``k`` seeded at point ``a_k``, with ``d_ik`` their
distance through the periodic cell (neighbour list with shifts; every image
within ``r_a`` is an entry of its own, and for ``r_a`` under half the cell
that is the minimum image)::

    u_ik = f(d_ik) * exp(-d_ik^2 / (2 sigma^2) + b_k)      (affinity)
    U_i  = sum_l u_il
    S_ik = g(U_i / u_min) * u_ik / U_i
    f(d) = (1 - d^2 / r_a^2)^3 for d < r_a, else 0        (C2 at r_a, smooth at 0)
    g(t) = t^3 (10 - 15 t + 6 t^2) for t < 1, else 1      (C2 smooth step)

``b_k`` is a per-species "centre weight" of the seed (plus, optionally, a
linear score of the seed's features), ``sigma`` a width and ``r_a`` the
assignment cutoff.  Both ``sigma`` and the species biases are parameters or
frozen buffers by one flag (``learnable``).  A seed always belongs to its own
node (``d = 0``), so every node has positive mass.

Rows sum to exactly 1 for every point whose total affinity reaches ``u_min``
(default 0.05: an anchor within about 1.8 sigma, true of every atom of a
water/ion system at level 1, where each H sits 0.96 Å from its O).  A point
with fewer anchors near it (at level 2, a water far from every ion) fades out
smoothly: its row sum falls from 1 to 0 as its affinity falls from ``u_min``
to 0, instead of jumping from 1 to 0 when its last anchor leaves ``r_a``.
A plain softmax with a small "vacuum" constant in the denominator does the
same only through a step about 0.1 Å wide just inside ``r_a``; the smooth
step spreads the fade over about 1.2 Å (sigma 1 Å, r_a 3 Å: the row sum
falls with a slope of at most about 4.3 per Å).

Coarse positions are assignment-weighted centroids unwrapped around the
seed, so they are well defined in a periodic cell::

    m_k = sum_i S_ik                      (node mass, dimensionless)
    c_k = x_{a_k} + sum_i S_ik r_{a_k -> i} / m_k

with ``r_{a_k -> i}`` the minimum-image vector from seed to point.  Coarse
features are mass-normalised pools, ``h_k = sum_i S_ik h_i / m_k`` (scalars
and vectors alike, so vectors stay equivariant), and unpooling sends
``sum_k S_ik y_k`` back to point ``i``.

``S`` is kept sparse (one entry per point-seed pair within ``r_a``);
:meth:`SoftAssignment.dense` builds the (n_points, n_nodes) matrix for tests.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import nn

from ..units import HYDROGEN
from ._base import N_SPECIES
from ._batch import AtomsBatch
from ._edge_chunks import chunked_edge_sum


def heavy_atom_species() -> tuple[int, ...]:
    """Every species but hydrogen: the default anchors (one node per water oxygen and per ion)."""
    return tuple(z for z in range(1, N_SPECIES) if z != HYDROGEN)


def assignment_envelope(d2: torch.Tensor, cutoff: float) -> torch.Tensor:
    """``(1 - d^2 / r_a^2)^3`` inside ``r_a``, 0 outside: C2 at the cutoff, a polynomial in d^2.

    d2 : (n_edges,), Å^2, squared distances; returns (n_edges,), dimensionless in [0, 1]
    """
    return (1.0 - d2 / (cutoff * cutoff)).clamp(min=0.0).pow(3)


def smooth_step(t: torch.Tensor) -> torch.Tensor:
    """``t^3 (10 - 15 t + 6 t^2)`` clamped to [0, 1]: 0 and 1 with two vanishing derivatives.

    t : any shape, dimensionless; returns the same shape in [0, 1]
    """
    t = t.clamp(0.0, 1.0)
    return t * t * t * (10.0 + t * (6.0 * t - 15.0))


@dataclasses.dataclass
class SoftAssignment:
    """A sparse soft assignment of ``n_points`` points to ``n_nodes`` coarse nodes.

    Attributes
    ----------
    point : (n_edges,) int64, point ``i`` of each non-zero entry of S
    node : (n_edges,) int64, node ``k`` of each entry
    weight : (n_edges,), dimensionless, ``S_ik`` (a pair seen through two
        periodic images has two entries; their sum is ``S_ik``)
    offset : (n_edges, 3), Å, minimum-image vector from the seed of ``k`` to ``i``
    seeds : (n_nodes,) int64, index of the point that seeds each node
    mass : (n_nodes,), dimensionless, ``m_k = sum_i S_ik`` (> 0)
    positions : (n_nodes, 3), Å, centroids ``c_k`` (may lie outside the cell)
    n_points : number of fine points
    """

    point: torch.Tensor
    node: torch.Tensor
    weight: torch.Tensor
    offset: torch.Tensor
    seeds: torch.Tensor
    mass: torch.Tensor
    positions: torch.Tensor
    n_points: int

    @property
    def n_nodes(self) -> int:
        return self.seeds.shape[0]

    def dense(self) -> torch.Tensor:
        """(n_points, n_nodes), S with periodic images summed; rows sum to 1 (to 0 for points without anchors, see module docstring)."""
        out = self.weight.new_zeros(self.n_points * self.n_nodes)
        return out.index_add(0, self.point * self.n_nodes + self.node, self.weight).view(
            self.n_points, self.n_nodes
        )

    def row_sums(self) -> torch.Tensor:
        """(n_points,), ``sum_k S_ik``."""
        return self.weight.new_zeros(self.n_points).index_add(0, self.point, self.weight)

    def pool(self, x: torch.Tensor, chunk: int = 0) -> torch.Tensor:
        """Mass-normalised pool ``sum_i S_ik x_i / m_k``.

        x : (n_points, ...) point features (scalars (n, F) or vectors (n, 3, F));
        chunk : entries per chunk when S has more entries than that (0: never):
        the (n_entries, ...) products are then recomputed in backward instead
        of kept (:func:`~scalepool.models._edge_chunks.chunked_edge_sum`; the
        same numbers).  Returns (n_nodes, ...).
        """
        scale = self.weight / self.mass[self.node]
        if 0 < chunk < self.point.shape[0]:
            (out,) = chunked_edge_sum(
                _weighted_rows, [], [(x, self.point)], [scale], self.node, self.n_nodes, chunk
            )
            return out
        msg = _weighted_rows(torch.index_select(x, 0, self.point), scale)
        return x.new_zeros((self.n_nodes, *x.shape[1:])).index_add(0, self.node, msg)

    def unpool(self, y: torch.Tensor, chunk: int = 0) -> torch.Tensor:
        """``sum_k S_ik y_k``; y : (n_nodes, ...) -> (n_points, ...); ``chunk`` as in :meth:`pool`."""
        if 0 < chunk < self.point.shape[0]:
            (out,) = chunked_edge_sum(
                _weighted_rows, [], [(y, self.node)], [self.weight], self.point, self.n_points, chunk
            )
            return out
        msg = _weighted_rows(torch.index_select(y, 0, self.node), self.weight)
        return y.new_zeros((self.n_points, *y.shape[1:])).index_add(0, self.point, msg)

    def coarse_batch(self, points: AtomsBatch) -> AtomsBatch:
        """The nodes as an :class:`AtomsBatch`: centroids, seed species, seed frames, same cell."""
        return AtomsBatch(
            positions=self.positions,
            numbers=points.numbers[self.seeds],
            frame_index=points.frame_index[self.seeds],
            cell=points.cell,
            n_frames=points.n_frames,
        )


def _weighted_rows(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """rows (E, ...) times weight (E,), broadcast over the trailing dimensions."""
    return rows * weight.view(-1, *([1] * (rows.dim() - 1)))


class SoftCoarseGraining(nn.Module):
    """Soft assignment of points to anchor-seeded coarse nodes (module docstring).

    Parameters
    ----------
    anchor_species : atomic numbers whose points seed nodes; ``None`` = all but H
    sigma : Å, width of the Gaussian affinity
    cutoff : Å, assignment cutoff ``r_a`` (a point only joins seeds within it)
    learnable : ``sigma`` and the per-species centre weights are parameters
        (True) or frozen buffers (False)
    n_features : width of point scalars; when given, a linear score of the
        seed's scalar features is added to its centre weight (learnable only)
    min_affinity : ``u_min``, total affinity above which a row sums to exactly 1
    """

    def __init__(
        self,
        anchor_species: Sequence[int] | None = None,
        sigma: float = 1.0,
        cutoff: float = 3.0,
        learnable: bool = True,
        n_features: int | None = None,
        min_affinity: float = 0.05,
    ):
        super().__init__()
        species = heavy_atom_species() if anchor_species is None else tuple(int(z) for z in anchor_species)
        if not species or min(species) < 1 or max(species) >= N_SPECIES:
            raise ValueError(f"anchor_species must be atomic numbers in 1..118, got {anchor_species!r}")
        if not (sigma > 0 and cutoff > 0 and min_affinity > 0):
            raise ValueError(
                f"sigma, cutoff and min_affinity must be positive, got {sigma}, {cutoff}, {min_affinity}"
            )
        mask = torch.zeros(N_SPECIES, dtype=torch.bool)
        mask[list(species)] = True
        self.register_buffer("anchor_mask", mask, persistent=False)
        self.anchor_species = species
        self.cutoff = float(cutoff)
        self.min_affinity = float(min_affinity)
        self.learnable = bool(learnable)
        log_sigma = torch.tensor(math.log(sigma))
        bias = torch.zeros(N_SPECIES)
        if self.learnable:
            self.log_sigma = nn.Parameter(log_sigma)
            self.species_bias = nn.Parameter(bias)
        else:
            self.register_buffer("log_sigma", log_sigma)
            self.register_buffer("species_bias", bias)
        self.score = None
        if n_features is not None and self.learnable:
            self.score = nn.Linear(n_features, 1, bias=False)
            nn.init.zeros_(self.score.weight)

    @property
    def sigma(self) -> float:
        """Å, the current Gaussian width."""
        return float(self.log_sigma.detach().exp())

    def forward(self, points: AtomsBatch, scalar: torch.Tensor | None = None) -> SoftAssignment:
        """Assign the points of ``points`` to the nodes their anchors seed.

        points : AtomsBatch of atoms or of the nodes of a finer level
            (positions (n, 3) Å, numbers (n,) species, frame_index, cell)
        scalar : (n, F) point scalars, used by the feature score when present
        Returns a :class:`SoftAssignment`; differentiable in ``points.positions``,
        ``points.cell`` and ``scalar``.
        """
        pos = points.positions
        n = pos.shape[0]
        is_seed = self.anchor_mask[points.numbers]
        seeds = torch.nonzero(is_seed).squeeze(-1)
        node_of = torch.cumsum(is_seed.long(), 0) - 1  # node index of each seed point

        pairs, shifts = points.neighbors(self.cutoff, full_list=True)
        keep = is_seed[pairs[:, 0]]
        pairs, shifts = pairs[keep], shifts[keep]
        offset = points.edge_vectors(pairs, shifts)  # seed -> point, minimum image
        point = torch.cat([pairs[:, 1], seeds])
        node = node_of[torch.cat([pairs[:, 0], seeds])]
        offset = torch.cat([offset, pos.new_zeros((seeds.shape[0], 3))])

        logit = self.species_bias[points.numbers[seeds]].to(pos.dtype)
        if self.score is not None and scalar is not None:
            logit = logit + self.score(scalar[seeds]).squeeze(-1)
        d2 = (offset * offset).sum(-1)
        inv_two_sigma2 = 0.5 * torch.exp(-2.0 * self.log_sigma).to(pos.dtype)
        u = assignment_envelope(d2, self.cutoff) * torch.exp(logit[node] - d2 * inv_two_sigma2)
        total = pos.new_zeros(n).index_add(0, point, u)
        presence = smooth_step(total / self.min_affinity)
        scale = presence / torch.where(total > 0, total, torch.ones_like(total))
        weight = u * scale[point]

        n_nodes = seeds.shape[0]
        mass = pos.new_zeros(n_nodes).index_add(0, node, weight)
        moment = pos.new_zeros((n_nodes, 3)).index_add(0, node, weight.unsqueeze(-1) * offset)
        centroids = pos[seeds] + moment / mass.unsqueeze(-1)
        return SoftAssignment(point, node, weight, offset, seeds, mass, centroids, n)
