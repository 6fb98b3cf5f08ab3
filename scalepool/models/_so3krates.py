"""SO3krates (so3krates-torch) as a scalepool backbone: its own modules, our neighbour list.

The adapter builds a ``so3krates_torch.modules.models.So3krates`` and runs its
blocks in the order of ``So3krates.get_representation`` (invariant and
Euclidean embeddings, radial basis, Euclidean transformer layers), then its
``atomic_energy_output_block`` MLP, with the inputs scalepool owns: pairs and
periodic shifts from ``AtomsBatch.neighbors``, edge vectors from
``AtomsBatch.edge_vectors`` (autograd through positions and cell), Å and eV.

Edge convention: So3krates' receivers are ``edge_index[0]`` and its vectors
point from sender to receiver, ``x_receiver - x_sender``; with
``edge_index = pairs.T`` that is ``x_i - x_j = -r_ij``, so the adapter passes
``-edge_vectors`` (so energies equal the peer's own forward exactly).

Features handed to a wrapper:

- ``scalar`` (n, num_features): the invariant features after the last layer;
- ``vector`` (n, 3, 1): the degree-1 block of the Euclidean variables
  (SO3krates keeps one channel per degree, real spherical-harmonic order
  (y, z, x), permuted here to (x, y, z)); ``None`` when 1 is not in ``degrees``.

The output block's per-element scale and shift are frozen at 1 and 0 (the
peer's defaults) and the species statistics of :class:`ForceModel` apply
instead; ``energy_head`` runs the block's MLP layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._base import EdgeBackbone, Features, register_model
from ._batch import AtomsBatch

SO3KRATES_EXTRA = "pip install scalepool[so3krates]"
_N_ELEMENTS = 118  # so3krates-torch's one-hot: index Z - 1


def import_so3krates():
    """The ``So3krates`` class; a clear ImportError naming the extra when absent."""
    try:
        from so3krates_torch.modules.models import So3krates
    except ImportError as err:
        raise ImportError(f"the SO3krates backbone needs so3krates-torch ({SO3KRATES_EXTRA}): {err}") from err
    return So3krates


@register_model
class SO3kratesBackbone(EdgeBackbone):
    """SO3krates (Frank et al. 2024, so3krates-torch) through scalepool's embed/readout interface.

    Parameters
    ----------
    cutoff : Å, SO3krates' ``r_max``
    num_features : width of the invariant features
    degrees : degrees of the Euclidean variables (e.g. ``[1, 2, 3]``)
    num_layers : Euclidean transformer layers
    num_heads : attention heads (must divide ``num_features``, as must ``len(degrees)``)
    num_radial_basis_fn : radial basis size
    radial_basis_fn, cutoff_fn : names understood by so3krates-torch
    avg_num_neighbors : message normalisation
    """

    def __init__(
        self,
        cutoff: float = 4.5,
        num_features: int = 48,
        degrees: Sequence[int] = (1, 2, 3),
        num_layers: int = 2,
        num_heads: int = 4,
        num_radial_basis_fn: int = 16,
        radial_basis_fn: str = "gaussian",
        cutoff_fn: str = "cosine",
        avg_num_neighbors: float = 30.0,
    ):
        So3krates = import_so3krates()
        degrees = [int(d) for d in degrees]
        if not degrees or min(degrees) < 1 or max(degrees) > 4 or len(set(degrees)) != len(degrees):
            raise ValueError(f"degrees must be distinct integers in 1..4, got {degrees}")
        if (
            int(num_features) < 1 or int(num_layers) < 1 or int(num_heads) < 1
            or num_features % num_heads or num_features % len(degrees)
        ):  # fmt: skip
            raise ValueError(
                f"num_features, num_layers, num_heads must be positive, and num_heads and len(degrees) "
                f"must divide num_features; got {num_features}, {num_layers}, {num_heads}, {degrees}"
            )
        super().__init__(
            cutoff,
            dict(
                cutoff=float(cutoff),
                num_features=int(num_features),
                degrees=degrees,
                num_layers=int(num_layers),
                num_heads=int(num_heads),
                num_radial_basis_fn=int(num_radial_basis_fn),
                radial_basis_fn=radial_basis_fn,
                cutoff_fn=cutoff_fn,
                avg_num_neighbors=float(avg_num_neighbors),
            ),
        )
        default_dtype = torch.get_default_dtype()
        try:  # So3krates.__init__ sets the global default dtype: restore it
            self.so3krates = So3krates(
                r_max=float(cutoff),
                num_radial_basis_fn=int(num_radial_basis_fn),
                degrees=degrees,
                num_features=int(num_features),
                num_heads=int(num_heads),
                num_layers=int(num_layers),
                num_elements=_N_ELEMENTS,
                avg_num_neighbors=float(avg_num_neighbors),
                radial_basis_fn=radial_basis_fn,
                cutoff_fn=cutoff_fn,
                dtype=default_dtype,
            )
        finally:
            torch.set_default_dtype(default_dtype)
        self.n_features = int(num_features)
        self.n_interactions = int(num_layers)
        offset = 0
        self._vector_start = None
        for degree in degrees:
            if degree == 1:
                self._vector_start = offset
            offset += 2 * degree + 1
        self.n_vector_features = 0 if self._vector_start is None else 1

    def embed_edges(self, numbers: torch.Tensor, vectors: torch.Tensor, pairs: torch.Tensor) -> Features:
        """Features from a full neighbour list (SO3krates' blocks, its order).

        numbers : (n,) atomic numbers; vectors : (E, 3) Å, r_ij = x_j - x_i;
        pairs : (E, 2) int64, (i, j), both directions present
        Returns scalar (n, num_features) and vector (n, 3, 1) or None.
        """
        m = self.so3krates
        one_hot = torch.nn.functional.one_hot(numbers - 1, _N_ELEMENTS).to(vectors.dtype)
        receivers, senders = pairs[:, 0].contiguous(), pairs[:, 1].contiguous()
        vec = -vectors  # x_receiver - x_sender
        lengths = torch.linalg.vector_norm(vec, dim=-1, keepdim=True)
        sh_vectors = m.spherical_harmonics(vec / (lengths + 1e-8))
        cutoffs = m.cutoff_fn(lengths)
        inv = m.inv_feature_embedding(one_hot) / m.embedding_scale
        ev = m.ev_embedding(
            sh_vectors=sh_vectors,
            cutoffs=cutoffs,
            receivers=receivers,
            avg_num_neighbors=m.avg_num_neighbors,
            num_nodes=inv.shape[0],
        )
        rbf = m.radial_embedding(lengths)
        for transformer in m.euclidean_transformers:
            inv, ev = transformer(
                inv_features=inv,
                ev_features=ev,
                rbf=rbf,
                senders=senders,
                receivers=receivers,
                sh_vectors=sh_vectors,
                cutoffs=cutoffs,
            )
        vector = None
        if self._vector_start is not None:
            start = self._vector_start
            vector = ev[:, [start + 2, start, start + 1]].unsqueeze(-1)  # (y, z, x) -> (x, y, z)
        return Features(inv, vector)

    def energy_head(self, scalar: torch.Tensor) -> torch.Tensor:
        """(n, num_features) -> (n, 1): the MLP of SO3krates' atomic energy block (raw)."""
        block = self.so3krates.atomic_energy_output_block
        x = scalar
        for layer in block.layers:
            x = layer(x)
            if block.use_non_linearity:
                x = block.non_linearity(x)
        x = block.final_layer(x)
        return block.non_linearity(x) if block.final_non_linearity else x

    def peer_inputs(self, batch: AtomsBatch) -> dict[str, torch.Tensor]:
        """The input dict of ``self.so3krates(...)`` for ``batch`` on our neighbour list."""
        pairs, shifts = batch.neighbors(self.cutoff)
        frame = batch.frame_index[pairs[:, 0]]
        cell = batch.cell if batch.cell is not None else batch.positions.new_zeros((batch.n_frames, 3, 3))
        counts = torch.bincount(batch.frame_index, minlength=batch.n_frames)
        return {
            "positions": batch.positions,
            "node_attrs": torch.nn.functional.one_hot(batch.numbers - 1, _N_ELEMENTS).to(
                batch.positions.dtype
            ),
            "edge_index": pairs.T.contiguous(),
            "shifts": torch.einsum("ek,ekl->el", shifts.to(batch.positions.dtype), cell[frame]),
            "unit_shifts": shifts.to(batch.positions.dtype),
            "cell": cell.reshape(-1, 3),
            "batch": batch.frame_index,
            "ptr": torch.cat([counts.new_zeros(1), counts.cumsum(0)]),
            "head": torch.zeros(batch.n_frames, dtype=torch.long, device=batch.device),
        }
