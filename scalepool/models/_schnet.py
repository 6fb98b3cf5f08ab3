"""SchNet: continuous-filter convolutions on scalar features.

Architecture of Schütt et al. (J. Chem. Phys. 2018): a species embedding,
``n_interactions`` blocks ``s_i += MLP(sum_j (W_in s_j) ⊙ W_l(r_ij))`` and an
atom-wise readout.  Scalars only (``Features.vector`` is ``None``), which makes
it the cheapest backbone for the MuSE coarse levels.

Filters are fused across blocks: the first filter layer
``h = ssp(rbf W_1 + b_1) * envelope(r)`` is computed once per edge and each
block applies only a bias-free linear map ``W_l = h W_2^(l)``, so every filter
vanishes smoothly at the cutoff.  Sums over edges use the chunked kernel
:func:`gather_mul_scatter`; with more edges than ``edge_chunk`` each block's
edge pass (filter network and messages) runs through
:func:`~scalepool.models._edge_chunks.chunked_edge_sum`, which recomputes
chunks in backward instead of keeping per-edge intermediates.
"""

from __future__ import annotations

import torch
from torch import nn

from ._base import AGGREGATIONS, Features, MessagePassingBackbone, register_model
from ._edge_chunks import DEFAULT_EDGE_CHUNK, chunked_edge_sum, edge_chunk_size
from ._edge_ops import gather_mul_scatter
from ._painn import _edge_chunk
from ._radial import MLP, cutoff_envelope, radial_basis, shifted_softplus
from ._scatter import scatter_sum

__all__ = ["AGGREGATIONS", "SchNet", "SchNetInteraction"]


class SchNetInteraction(nn.Module):
    """``s += MLP(sum_j (W_in s_j) ⊙ filter_ij)`` with F features."""

    def __init__(self, n_features: int):
        super().__init__()
        self.into = nn.Linear(n_features, n_features, bias=False)
        self.out = MLP(n_features, n_features, n_features, activation="ssp")

    def forward(
        self,
        s: torch.Tensor,
        filters: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        aggregation: str = "fused",
    ) -> torch.Tensor:
        """s : (n, F); filters : (E, F); centers, neighbors : (E,) int64 -> (n, F)."""
        x = self.into(s)
        if aggregation == "fused":
            m = gather_mul_scatter(x, filters, neighbors, centers, s.shape[0])
        else:
            msg = torch.index_select(x, 0, neighbors) * filters
            m = scatter_sum(msg, centers, s.shape[0], aggregation == "torch_scatter")
        return s + self.out(m)

    def forward_chunked(
        self,
        s: torch.Tensor,
        filter_params: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        vectors: torch.Tensor,
        centers: torch.Tensor,
        neighbors: torch.Tensor,
        radial: tuple[int, float, str, str],
        chunk: int,
    ) -> torch.Tensor:
        """The block with filters and messages computed per chunk of ``chunk`` edges.

        s : (n, F); filter_params : first filter layer weight (F, n_rbf) and
        bias (F,), this block's output map (F, F); vectors : (E, 3) Å;
        radial : (n_rbf, cutoff Å, basis, envelope).  Returns (n, F).
        """
        x = self.into(s)
        (m,) = chunked_edge_sum(
            _FilterMessages(radial), list(filter_params), [(x, neighbors)], [vectors], centers, s.shape[0], chunk
        )
        return s + self.out(m)


class _FilterMessages:
    """Per-edge SchNet messages ``x_j * filter(r_ij)`` of one chunk, for :func:`chunked_edge_sum`."""

    def __init__(self, radial: tuple[int, float, str, str]):
        self.radial = radial

    def __call__(self, w_in, b_in, w_out, x_j, vectors):
        n_rbf, cutoff, basis, envelope = self.radial
        r = torch.linalg.vector_norm(vectors, dim=-1)
        hidden = shifted_softplus(nn.functional.linear(radial_basis(r, n_rbf, cutoff, basis), w_in, b_in))
        hidden = hidden * cutoff_envelope(r, cutoff, envelope).unsqueeze(-1)
        return (x_j * nn.functional.linear(hidden, w_out),)


@register_model
class SchNet(MessagePassingBackbone):
    """SchNet backbone behind the :class:`ForceModel` interface.

    Parameters
    ----------
    cutoff : Å
    n_features : width F of the scalar features and filters
    n_interactions : convolution blocks
    n_rbf : radial basis functions
    radial_basis : ``"gaussian"`` (default, as in SchNet) or ``"bessel"``
    cutoff_function : ``"cosine"`` (default, as in SchNet) or ``"polynomial"``
    aggregation : ``"fused"`` (default), ``"index_add"`` or ``"torch_scatter"``
    edge_chunk : graphs with more edges than this (default 262,144) run the
        recomputed edge pass in chunks of at most 8,192 edges; ``0`` never chunks
    """

    def __init__(
        self,
        cutoff: float = 5.0,
        n_features: int = 64,
        n_interactions: int = 3,
        n_rbf: int = 25,
        radial_basis: str = "gaussian",
        cutoff_function: str = "cosine",
        aggregation: str = "fused",
        edge_chunk: int = DEFAULT_EDGE_CHUNK,
    ):
        super().__init__(cutoff, n_features, n_interactions, n_rbf, radial_basis, cutoff_function, aggregation)
        self.edge_chunk = _edge_chunk(edge_chunk)
        self.config["edge_chunk"] = self.edge_chunk
        F = self.n_features
        self.filter_in = nn.Linear(n_rbf, F)
        self.filter_out = nn.Linear(F, F * self.n_interactions, bias=False)
        self.interactions = nn.ModuleList(SchNetInteraction(F) for _ in range(self.n_interactions))
        self._build_energy_head(activation="ssp")

    def embed_edges(self, numbers: torch.Tensor, vectors: torch.Tensor, pairs: torch.Tensor) -> Features:
        """Features from a full neighbour list.

        numbers : (n,) atomic numbers; vectors : (E, 3) Å, r_ij = x_j - x_i;
        pairs : (E, 2) int64, (i, j), both directions present
        """
        centers, neighbors = pairs[:, 0], pairs[:, 1]
        weights = self.filter_out.weight.split(self.n_features, dim=0)
        chunk = edge_chunk_size(pairs.shape[0], self.edge_chunk)
        if chunk:
            radial = (self.n_rbf, self.cutoff, self.radial_basis, self.cutoff_function)
            s = self.embedding(numbers)
            for block, weight in zip(self.interactions, weights, strict=True):
                params = (self.filter_in.weight, self.filter_in.bias, weight)
                s = block.forward_chunked(s, params, vectors, centers, neighbors, radial, chunk)
            return Features(s, None)
        r = torch.linalg.vector_norm(vectors, dim=-1)
        rbf = radial_basis(r, self.n_rbf, self.cutoff, self.radial_basis)
        hidden = shifted_softplus(self.filter_in(rbf)) * cutoff_envelope(
            r, self.cutoff, self.cutoff_function
        ).unsqueeze(-1)
        s = self.embedding(numbers)
        for block, weight in zip(self.interactions, weights, strict=True):
            filters = nn.functional.linear(hidden, weight)
            s = block(s, filters, centers, neighbors, self.aggregation)
        return Features(s, None)

