"""PaiNN: equivariant message passing with scalar and vector features.

Architecture of Schütt, Unke and Gastegger (ICML 2021): a species embedding,
``n_interactions`` message and update blocks acting on scalars ``s (n, F)``
and vectors ``v (n, 3, F)``, and an atom-wise readout of the scalars.

Written for CPU cost, where passes over per-edge memory set the price:
- the radial basis and its cutoff envelope are computed once per edge, and
  the filters of every block are bias-free linear maps of it, so they vanish
  smoothly at the cutoff without another per-edge multiply;
- context networks run on atoms before their outputs are gathered to edges;
- the first block skips the ``v_j`` term (all vectors start at zero);
- sums over edges use the chunked kernels of ``_edge_ops`` (default
  ``aggregation="fused"``), which never build an (n_edges, 3, F) tensor and
  keep gradients of any order; ``"index_add"`` is the plain-ops reference;
- with more edges than ``edge_chunk`` (default 262,144) each block's whole
  edge pass (radial basis, filters, messages) runs in chunks of edges through
  :func:`~scalepool.models._edge_chunks.chunked_edge_sum`, which keeps no
  per-edge intermediate for backward and recomputes each chunk instead, so
  memory grows as atoms x features, not edges x features (exact gradients up
  to second order: forces, force-loss training, Hessians).
"""

from __future__ import annotations

import torch
from torch import nn

from ._base import AGGREGATIONS, Features, MessagePassingBackbone, register_model
from ._edge_chunks import DEFAULT_EDGE_CHUNK, chunked_edge_sum, edge_chunk_size
from ._edge_ops import gather_mul_scatter, outer_scatter
from ._radial import MLP, radial_features
from ._scatter import scatter_sum

__all__ = ["AGGREGATIONS", "PaiNN", "PaiNNInteraction"]


class PaiNNInteraction(nn.Module):
    """One message block followed by one update block (F features)."""

    def __init__(self, n_features: int, epsilon: float = 1e-8):
        super().__init__()
        self.n_features = n_features
        self.context = MLP(n_features, n_features, 3 * n_features)
        self.mix = nn.Linear(n_features, 2 * n_features, bias=False)
        self.update = MLP(2 * n_features, n_features, 3 * n_features)
        self.epsilon = epsilon

    def forward(
        self,
        s: torch.Tensor,
        v: torch.Tensor | None,
        rbf: torch.Tensor,
        filter_weight: torch.Tensor,
        unit: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        aggregation: str = "fused",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update scalars and vectors.

        s : (n, F); v : (n, 3, F) or ``None`` (all zero);
        rbf : (E, n_rbf), envelope-weighted radial basis;
        filter_weight : (3F, n_rbf), this block's slice of the fused filter map;
        unit : (E, 3), unit vectors from centre i to neighbour j;
        centers, neighbors : (E,) int64, atom i receiving and atom j sending;
        aggregation : see :data:`AGGREGATIONS`.
        Returns s (n, F), v (n, 3, F).
        """
        n, F = s.shape
        w_s, w_r, w_v = (nn.functional.linear(rbf, w) for w in filter_weight.split(F, dim=0))
        phi_s, phi_r, phi_v = self.context(s).split(F, dim=-1)
        a = torch.index_select(phi_r, 0, neighbors) * w_r  # (E, F)
        b = None if v is None else torch.index_select(phi_v, 0, neighbors) * w_v  # (E, F)
        if aggregation == "fused":
            ds = gather_mul_scatter(phi_s, w_s, neighbors, centers, n)
            dv = outer_scatter(unit, a, centers, n)
            if v is not None:
                dv = dv + gather_mul_scatter(v, b, neighbors, centers, n)
        else:  # plain tensor ops, one (E, 3, F) message, then a sum
            use_ts = aggregation == "torch_scatter"
            ds = scatter_sum(torch.index_select(phi_s, 0, neighbors) * w_s, centers, n, use_ts)
            msg = unit.unsqueeze(-1) * a.unsqueeze(1)
            if v is not None:
                msg = msg + torch.index_select(v, 0, neighbors) * b.unsqueeze(1)
            dv = scatter_sum(msg, centers, n, use_ts)
        return self._update(s + ds, dv if v is None else v + dv)

    def forward_chunked(
        self,
        s: torch.Tensor,
        v: torch.Tensor | None,
        vectors: torch.Tensor,
        filter_weight: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        radial: tuple[int, float, str, str],
        chunk: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same block with its edge pass in chunks of ``chunk`` edges, recomputed in backward.

        vectors : (E, 3) Å, r_ij = x_j - x_i; radial : (n_rbf, cutoff Å, basis,
        envelope) of :func:`radial_features`; other arguments as in :meth:`forward`.
        Returns s (n, F), v (n, 3, F), equal to :meth:`forward` up to round-off.
        """
        n, F = s.shape
        phi = self.context(s)
        nodes = [(phi, neighbors)] + ([] if v is None else [(v, neighbors)])
        ds, dv = chunked_edge_sum(_EdgeMessages(F, radial), [filter_weight], nodes, [vectors], centers, n, chunk)
        return self._update(s + ds, dv if v is None else v + dv)

    def _update(self, s: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The update block: s (n, F), v (n, 3, F) after the messages -> s, v."""
        F = self.n_features
        uv, vv = self.mix(v).split(F, dim=-1)  # (n, 3, F) each
        vv_norm = torch.sqrt((vv * vv).sum(dim=1) + self.epsilon)
        a_vv, a_sv, a_ss = self.update(torch.cat([s, vv_norm], dim=-1)).split(F, dim=-1)
        v = v + a_vv.unsqueeze(1) * uv
        s = s + a_ss + a_sv * (uv * vv).sum(dim=1)
        return s, v


class _EdgeMessages:
    """Per-edge PaiNN messages of one chunk, for :func:`chunked_edge_sum`.

    Called with the block's filter weight (3F, n_rbf), the gathered context
    rows phi_j (E_c, 3F), optionally v_j (E_c, 3, F), and the edge vectors
    (E_c, 3) Å; returns the scalar (E_c, F) and vector (E_c, 3, F) messages.
    """

    def __init__(self, n_features: int, radial: tuple[int, float, str, str]):
        self.n_features, self.radial = n_features, radial

    def __call__(self, weight, phi_j, *rest):
        v_j, vectors = rest if len(rest) == 2 else (None, rest[0])
        F = self.n_features
        r = torch.linalg.vector_norm(vectors, dim=-1)
        unit = vectors / r.unsqueeze(-1)
        rbf = radial_features(r, *self.radial)
        w_s, w_r, w_v = (nn.functional.linear(rbf, w) for w in weight.split(F, dim=0))
        phi_s, phi_r, phi_v = phi_j.split(F, dim=-1)
        msg_v = unit.unsqueeze(-1) * (phi_r * w_r).unsqueeze(1)
        if v_j is not None:
            msg_v = msg_v + v_j * (phi_v * w_v).unsqueeze(1)
        return phi_s * w_s, msg_v


@register_model
class PaiNN(MessagePassingBackbone):
    """PaiNN backbone behind the :class:`ForceModel` interface.

    Parameters
    ----------
    cutoff : Å
    n_features : width F of scalar and vector features
    n_interactions : message-passing blocks
    n_rbf : radial basis functions
    radial_basis : ``"bessel"`` (default) or ``"gaussian"``
    cutoff_function : ``"polynomial"`` (C2 at the cutoff, default) or ``"cosine"``
    aggregation : ``"fused"`` (default), ``"index_add"`` or ``"torch_scatter"``,
        see :data:`AGGREGATIONS`; used when the edges fit in one chunk
    edge_chunk : graphs with more edges than this (default 262,144) run the
        recomputed edge pass in chunks of at most 8,192 edges; ``0`` never chunks.  Changes
        memory and time only, not the numbers (beyond round-off).

    Defaults: 64 features, 3 interactions, 16 Bessel functions.  On the
    1,530-atom water box one energy+forces step costs 0.27 s of CPU at 4.5 Å
    and 0.53 s at 6 Å (one thread, ``keep_freed_memory()``); a training step
    (force loss back-propagated) 0.78 s and 1.6 s.  32 features cost about
    0.6 times as much.  See ``benchmarks/branches.py``.
    """

    def __init__(
        self,
        cutoff: float = 5.0,
        n_features: int = 64,
        n_interactions: int = 3,
        n_rbf: int = 16,
        radial_basis: str = "bessel",
        cutoff_function: str = "polynomial",
        aggregation: str = "fused",
        edge_chunk: int = DEFAULT_EDGE_CHUNK,
    ):
        super().__init__(cutoff, n_features, n_interactions, n_rbf, radial_basis, cutoff_function, aggregation)
        self.edge_chunk = _edge_chunk(edge_chunk)
        self.config["edge_chunk"] = self.edge_chunk
        self.filters = nn.Linear(n_rbf, 3 * self.n_features * self.n_interactions, bias=False)
        self.interactions = nn.ModuleList(PaiNNInteraction(self.n_features) for _ in range(self.n_interactions))
        self._build_energy_head()

    def embed_edges(self, numbers: torch.Tensor, vectors: torch.Tensor, pairs: torch.Tensor) -> Features:
        """Features from a full neighbour list.

        numbers : (n,) atomic numbers; vectors : (E, 3) Å, r_ij = x_j - x_i;
        pairs : (E, 2) int64, (i, j), both directions present
        """
        centers, neighbors = pairs[:, 0], pairs[:, 1]
        weights = self.filters.weight.split(3 * self.n_features, dim=0)
        chunk = edge_chunk_size(pairs.shape[0], self.edge_chunk)
        if chunk:
            radial = (self.n_rbf, self.cutoff, self.radial_basis, self.cutoff_function)
            s, v = self.embedding(numbers), None
            for block, weight in zip(self.interactions, weights, strict=True):
                s, v = block.forward_chunked(s, v, vectors, weight, centers, neighbors, radial, chunk)
            return Features(s, v)
        r = torch.linalg.vector_norm(vectors, dim=-1)
        unit = vectors / r.unsqueeze(-1)
        rbf = radial_features(r, self.n_rbf, self.cutoff, self.radial_basis, self.cutoff_function)
        s, v = self.embedding(numbers), None
        for block, weight in zip(self.interactions, weights, strict=True):
            s, v = block(s, v, rbf, weight, unit, centers, neighbors, self.aggregation)
        return Features(s, v)



def _edge_chunk(value: int) -> int:
    """Validate an ``edge_chunk`` setting: a non-negative number of edges (0: never chunk)."""
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"edge_chunk must be a non-negative whole number of edges, got {value!r}")
    return int(value)
