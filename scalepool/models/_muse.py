"""MuSE: any backbone plus a soft coarse-grained hierarchy, as one conservative ForceModel.

::

    atoms ──embed──> h (n, F), v (n, 3, F)                      (the backbone)
      │  pool with S_1 (n, n_1)      ┌─> level 1: n_1 nodes at centroids,
      │                              │   PaiNN-style messages within coarse_cutoff[0]
      │  ... level l pools level l-1 │   (periodic neighbour list on the centroids)
      │  unpool: h_i += W sum_k S_ik h_k      (scalars; vectors pass through)
      └──readout──> E_i (eV)                                    (the backbone)

The wrapper only uses the backbone's ``embed``/``readout`` interface, so it
works with any backbone of ``BACKBONES``.  What each level 1 pools:

- PaiNN: its scalars (n, F) and its vectors (n, 3, F);
- SchNet: scalars only (the coarse level builds its vectors from the
  centroid geometry);
- MACE: the ``0e`` channels of every layer (n, C * layers), and the ``1o``
  channels (n, 3, C) of the last layer that has them, in (x, y, z) order
  (``l >= 2`` channels are not pooled: the coarse level is PaiNN-style);
- SO3krates: the invariant features (n, F) and the degree-1 block of its
  Euclidean variables (n, 3, 1), permuted from (y, z, x) to (x, y, z)
  (degrees >= 2 are not pooled).

Pooling weights are invariant, so pooled vectors stay equivariant; the
vector width a level expects is :func:`vector_width` of the backbone.  Every
step is differentiable in positions, through ``S``, the centroids and the
coarse edges, so forces are exact gradients and Hessians exist (the
assignment envelope and the radial envelopes are C2).

The unpooling map ``W`` starts at zero: an untrained MuSE model is its
backbone exactly, and training grows the coarse contribution from there.
Only scalars flow back: every readout reads scalars, and nothing runs after
the unpooling that could turn returned vectors into energy (a vector map
there would receive no gradient).  Coarse vectors still matter inside each
level, where the PaiNN-style update turns them into node scalars.

As a scale generator (``docs/architecture.md``): s = 0 is the atomistic backbone and
s = 1 the backbone with its hierarchy.  In a prediction cache the anchors are
the bare backbone run (``forces_short`` from ``scalepool train --branch
short``) and this model's run (``forces_muse``): ``scalepool predict --run
runs/short --run runs/muse`` writes anchors ``{"0": "short", "1": "muse"}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..units import ION_NUMBERS
from ._base import N_SPECIES, Features, ForceModel, build_model, register_model
from ._batch import AtomsBatch
from ._edge_chunks import DEFAULT_EDGE_CHUNK, MAX_CHUNK_EDGES, edge_chunk_size
from ._painn import PaiNN, PaiNNInteraction, _edge_chunk
from ._pooling import SoftAssignment, SoftCoarseGraining
from ._radial import radial_features

#: Per-level defaults (level 1, level 2, ...; deeper levels repeat the last).
#: Level 1: one node per heavy atom (water oxygen, ion); level 2: ion-seeded nodes.
DEFAULT_ANCHORS: tuple[tuple[int, ...] | None, ...] = (None, ION_NUMBERS)
DEFAULT_SIGMA = (1.0, 2.5)  # Å
DEFAULT_ASSIGN_CUTOFF = (3.0, 6.0)  # Å
DEFAULT_COARSE_CUTOFF = (9.0, 12.0)  # Å


def _per_level(value, defaults, n_levels: int, name: str, cast=float) -> list:
    """``None`` -> defaults; a scalar -> every level; a sequence -> one entry per level."""
    if value is None:
        return [defaults[min(level, len(defaults) - 1)] for level in range(n_levels)]
    if isinstance(value, (int, float)):
        return [cast(value)] * n_levels
    value = list(value)
    if len(value) != n_levels:
        raise ValueError(f"{name} needs one entry per level ({n_levels}), got {value!r}")
    return [cast(v) for v in value]


def _anchors_per_level(value, n_levels: int) -> list[list[int] | None]:
    """None, one list of species for every level, or one (list or None) per level."""
    if value is None:
        levels = _per_level(None, DEFAULT_ANCHORS, n_levels, "anchor_species", cast=lambda v: v)
    elif all(isinstance(z, int) for z in value):
        levels = [list(value)] * n_levels
    else:
        levels = _per_level(value, DEFAULT_ANCHORS, n_levels, "anchor_species", cast=lambda v: v)
    return [None if a is None else [int(z) for z in a] for a in levels]


def vector_width(model: ForceModel) -> int:
    """Width of the vector features ``model.embed`` returns: the first ``n_vector_features``
    found on the model or its ``backbone`` chain (MACE: its ``1o`` channels, SO3krates: 1),
    else ``model.n_features`` (PaiNN's vectors are as wide as its scalars)."""
    inner = model
    while inner is not None:
        if hasattr(inner, "n_vector_features"):
            return int(inner.n_vector_features)
        inner = getattr(inner, "backbone", None)
    return int(model.n_features)


class CoarseLevel(nn.Module):
    """One level: pool points to nodes, message passing among nodes, unpool back.

    Parameters
    ----------
    n_in : width of the point scalars this level pools (and updates)
    n_features : width F_c of the node features
    anchor_species, sigma (Å), assign_cutoff (Å), learnable_assignment,
    feature_score : see :class:`SoftCoarseGraining`
    coarse_cutoff : Å, range of the messages between nodes
    n_interactions : PaiNN-style blocks among nodes
    n_rbf : radial basis functions of the coarse edges
    n_vector_in : width of the point vectors this level pools (default ``n_in``;
        1 for SO3krates' single degree-1 channel)
    edge_chunk : coarse edges per chunk of the recomputed edge pass (0: never
        chunk), as in :class:`PaiNN`
    """

    def __init__(
        self,
        n_in: int,
        n_features: int,
        anchor_species: Sequence[int] | None,
        sigma: float,
        assign_cutoff: float,
        coarse_cutoff: float,
        n_interactions: int = 2,
        n_rbf: int = 16,
        learnable_assignment: bool = True,
        feature_score: bool = True,
        n_vector_in: int | None = None,
        edge_chunk: int = DEFAULT_EDGE_CHUNK,
    ):
        super().__init__()
        self.edge_chunk = _edge_chunk(edge_chunk)
        if not coarse_cutoff > 0 or n_interactions < 1:
            raise ValueError(
                f"coarse_cutoff must be > 0 Å and n_interactions >= 1, got {coarse_cutoff}, {n_interactions}"
            )
        self.assign = SoftCoarseGraining(
            anchor_species, sigma, assign_cutoff, learnable_assignment, n_in if feature_score else None
        )
        self.coarse_cutoff = float(coarse_cutoff)
        self.n_features, self.n_rbf = int(n_features), int(n_rbf)
        self.project_scalar = nn.Linear(n_in, n_features)
        self.project_vector = nn.Linear(
            n_in if n_vector_in is None else max(int(n_vector_in), 1), n_features, bias=False
        )
        self.embedding = nn.Embedding(N_SPECIES, n_features)  # species of the seed
        self.mass = nn.Linear(1, n_features, bias=False)  # node mass m_k as a feature
        self.filters = nn.Linear(n_rbf, 3 * n_features * n_interactions, bias=False)
        self.interactions = nn.ModuleList(PaiNNInteraction(n_features) for _ in range(n_interactions))
        self.unpool_scalar = nn.Linear(n_features, n_in, bias=False)
        nn.init.zeros_(self.unpool_scalar.weight)

    def down(
        self, points: AtomsBatch, scalar: torch.Tensor, vector: torch.Tensor | None
    ) -> tuple[SoftAssignment, AtomsBatch, torch.Tensor, torch.Tensor | None]:
        """Pool and process.

        points : the fine points (atoms or finer nodes); scalar (n, n_in);
        vector (n, 3, n_in) or ``None``.
        Returns the assignment, the nodes as an AtomsBatch, node scalars
        (n_nodes, F_c) and node vectors (n_nodes, 3, F_c) (``None`` only when
        there are no nodes and no vectors came in).
        """
        assignment = self.assign(points, scalar)
        nodes = assignment.coarse_batch(points)
        chunk = self.pool_chunk
        s = self.project_scalar(assignment.pool(scalar, chunk))
        s = s + self.embedding(nodes.numbers) + self.mass(assignment.mass.unsqueeze(-1))
        v = None if vector is None else self.project_vector(assignment.pool(vector, chunk))
        if assignment.n_nodes == 0:
            return assignment, nodes, s, v
        pairs, shifts = nodes.neighbors(self.coarse_cutoff)
        vectors = nodes.edge_vectors(pairs, shifts)
        weights = self.filters.weight.split(3 * self.n_features, dim=0)
        chunk = edge_chunk_size(pairs.shape[0], self.edge_chunk)
        if chunk:
            radial = (self.n_rbf, self.coarse_cutoff, "bessel", "polynomial")
            for block, weight in zip(self.interactions, weights, strict=True):
                s, v = block.forward_chunked(s, v, vectors, weight, pairs[:, 0], pairs[:, 1], radial, chunk)
            return assignment, nodes, s, v
        r = torch.linalg.vector_norm(vectors, dim=-1)
        unit = vectors / r.unsqueeze(-1)
        rbf = radial_features(r, self.n_rbf, self.coarse_cutoff, "bessel", "polynomial")
        for block, weight in zip(self.interactions, weights, strict=True):
            s, v = block(s, v, rbf, weight, unit, pairs[:, 0], pairs[:, 1])
        return assignment, nodes, s, v

    def up(self, assignment: SoftAssignment, node_scalar: torch.Tensor, scalar: torch.Tensor) -> torch.Tensor:
        """Unpool: ``scalar_i + W sum_k S_ik s_k``.

        node_scalar : (n_nodes, F_c); scalar : (n_points, n_in); returns (n_points, n_in)
        """
        return scalar + self.unpool_scalar(assignment.unpool(node_scalar, self.pool_chunk))

    @property
    def pool_chunk(self) -> int:
        """Entries per chunk of pooling and unpooling (0: never chunked, when ``edge_chunk`` is 0).

        Their per-entry products, (E, 3, F) for vectors, are the only per-entry
        work, so recomputing them costs little time: assignments with more
        than one chunk of entries (8,192) are chunked whatever ``edge_chunk``
        (at 17.6k atoms this kept ~130 MB less for backward).
        """
        return MAX_CHUNK_EDGES if self.edge_chunk else 0


@register_model
class MuSE(ForceModel):
    """A backbone ForceModel with ``n_levels`` soft coarse-grained levels on top.

    Parameters
    ----------
    backbone : a ForceModel, its config dict (``model.config``), or ``None`` for
        a default PaiNN
    n_levels : hierarchy depth (1 default)
    coarse_cutoff : Å, message range among nodes; scalar for every level or one
        per level; ``None`` = 9 Å at level 1, 12 Å below
    anchor_species : seeds of the nodes: ``None`` (heavy atoms at level 1, ions
        at deeper levels), one list of atomic numbers, or one list per level
    sigma, assign_cutoff : Å, assignment width and range (scalar or per level;
        ``None`` = 1 and 3 Å at level 1, 2.5 and 6 Å below)
    n_coarse_features : width of node features (default: the backbone's)
    n_coarse_interactions : message blocks per level
    n_rbf : radial functions of the coarse edges
    learnable_assignment : sigma and centre weights are parameters (True) or frozen
    feature_score : add a learned score of the seed's features to its centre weight
    edge_chunk : coarse graphs with more edges than this (default 262,144) run
        the recomputed edge pass of every level in chunks of at most 8,192
        edges (0: never chunk); memory and time only

    The species energy scale and shift are the backbone's (shared buffers), so
    :func:`fit_species_statistics` on the wrapper sets what the readout uses.
    """

    def __init__(
        self,
        backbone: ForceModel | dict[str, Any] | None = None,
        n_levels: int = 1,
        coarse_cutoff: float | Sequence[float] | None = None,
        anchor_species: Sequence[int] | Sequence[Sequence[int] | None] | None = None,
        sigma: float | Sequence[float] | None = None,
        assign_cutoff: float | Sequence[float] | None = None,
        n_coarse_features: int | None = None,
        n_coarse_interactions: int = 2,
        n_rbf: int = 16,
        learnable_assignment: bool = True,
        feature_score: bool = True,
        edge_chunk: int = DEFAULT_EDGE_CHUNK,
    ):
        if backbone is None:
            backbone = PaiNN()
        elif isinstance(backbone, dict):
            backbone = build_model(backbone)
        if not isinstance(backbone, ForceModel):
            raise TypeError(
                f"backbone must be a ForceModel or its config dict, got {type(backbone).__name__}"
            )
        if int(n_levels) < 1:
            raise ValueError(f"n_levels must be >= 1, got {n_levels}")
        n_levels = int(n_levels)
        cutoffs = _per_level(coarse_cutoff, DEFAULT_COARSE_CUTOFF, n_levels, "coarse_cutoff")
        sigmas = _per_level(sigma, DEFAULT_SIGMA, n_levels, "sigma")
        ranges = _per_level(assign_cutoff, DEFAULT_ASSIGN_CUTOFF, n_levels, "assign_cutoff")
        anchors = _anchors_per_level(anchor_species, n_levels)
        width = int(n_coarse_features or backbone.n_features)
        super().__init__(
            backbone.cutoff,
            dict(
                backbone=backbone.config,
                n_levels=n_levels,
                coarse_cutoff=cutoffs,
                anchor_species=anchors,
                sigma=sigmas,
                assign_cutoff=ranges,
                n_coarse_features=width,
                n_coarse_interactions=int(n_coarse_interactions),
                n_rbf=int(n_rbf),
                learnable_assignment=bool(learnable_assignment),
                feature_score=bool(feature_score),
                edge_chunk=_edge_chunk(edge_chunk),
            ),
        )
        self.backbone = backbone
        self.n_features = backbone.n_features
        self.n_levels = n_levels
        self.levels = nn.ModuleList(
            CoarseLevel(
                backbone.n_features if level == 0 else width,
                width,
                anchors[level],
                sigmas[level],
                ranges[level],
                cutoffs[level],
                n_coarse_interactions,
                n_rbf,
                learnable_assignment,
                feature_score,
                vector_width(backbone) if level == 0 else width,
                edge_chunk,
            )
            for level in range(n_levels)
        )
        self._tie_statistics()

    # ------------------------------------------------------------ statistics
    def _tie_statistics(self) -> None:
        """Make ``self.species_shift/scale`` the very tensors of the backbone's buffers."""
        for name in ("species_shift", "species_scale"):
            self._buffers[name] = self.backbone._buffers[name]

    def _apply(self, fn, *args, **kwargs):
        # .to(), .double(), .cuda() replace each module's buffers separately: tie them again
        out = super()._apply(fn, *args, **kwargs)
        self._tie_statistics()
        return out

    @property
    def interaction_range(self) -> float:
        """Å, an upper bound on how far apart two atoms can influence each other's energy.

        Backbone receptive field (interactions x cutoff) plus, per level, two
        assignment hops and the coarse message hops.
        """
        inner = self.backbone
        while not hasattr(inner, "n_interactions") and hasattr(inner, "backbone"):
            inner = inner.backbone
        reach = int(getattr(inner, "n_interactions", 1)) * self.backbone.cutoff
        for level in self.levels:
            reach += 2 * level.assign.cutoff + len(level.interactions) * level.coarse_cutoff
        return reach

    # ------------------------------------------------------------ interface
    def embed(self, batch: AtomsBatch) -> Features:
        features = self.backbone.embed(batch)
        return self.refine(batch, features)

    def refine(self, batch: AtomsBatch, features: Features) -> Features:
        """Backbone scalars plus what the hierarchy sends back; vectors unchanged.

        features.scalar : (n_atoms, F); features.vector : (n_atoms, 3, F) or ``None``
        """
        points, s, v = batch, features.scalar, features.vector
        stack = []
        for level in self.levels:
            assignment, nodes, node_s, node_v = level.down(points, s, v)
            stack.append((level, assignment, s))
            points, s, v = nodes, node_s, node_v
        for level, assignment, fine_s in reversed(stack):
            s = level.up(assignment, s, fine_s)
        return Features(s, features.vector)

    def readout(self, batch: AtomsBatch, features: Features) -> torch.Tensor:
        return self.backbone.readout(batch, features)

    def backbone_energies(self, batch: AtomsBatch) -> torch.Tensor:
        """(n_atoms,) eV of the backbone alone (scale s = 0 of this generator)."""
        return self.backbone.atomic_energies(batch)

    @torch.no_grad()
    def assignments(self, batch: AtomsBatch) -> list[SoftAssignment]:
        """The soft assignment of every level for ``batch`` (analysis and figures)."""
        points, features = batch, self.backbone.embed(batch)
        s, v, out = features.scalar, features.vector, []
        for level in self.levels:
            assignment, points, s, v = level.down(points, s, v)
            out.append(assignment)
        return out
