"""MACE (mace-torch) as a scalepool backbone: its own modules, our neighbour list and units.

The adapter builds a ``mace.modules.MACE`` and runs its blocks in the order of
``MACE.forward`` (node embedding, spherical harmonics, radial embedding, then
interaction + product per layer, then one readout per layer), but with the
inputs scalepool owns:

- pairs and periodic shifts from ``AtomsBatch.neighbors`` (vesin), edge
  vectors from ``AtomsBatch.edge_vectors``, so forces and stress are autograd
  through positions and cell (MACE's own ``prepare_graph`` and
  ``get_outputs`` are not used);
- Å and eV at the boundary (MACE's own units), the species energy shift and
  scale of :class:`ForceModel` instead of MACE's ``E0`` block (set to zero).

Edge convention: MACE's ``edge_index = (sender, receiver)`` with
``r = x_receiver - x_sender`` is scalepool's ``pairs.T`` with
``r_ij = x_j - x_i``, so the vectors go in unchanged.

Features handed to a wrapper (MuSE, the latent-charge head):

- ``scalar`` (n, C * num_interactions): the ``0e`` channels of every layer,
  concatenated (MACE's energy is a sum of one readout per layer, each reading
  only the ``0e`` part of its layer: ``o3.Linear`` has no ``1o -> 0e`` path);
- ``vector`` (n, 3, C): the ``1o`` channels of the last layer that still has
  them (every layer but the last, which keeps scalars only), e3nn order
  (x, y, z); ``None`` for one interaction or ``max_L = 0``.

``energy_head`` feeds each layer's slice to that layer's MACE readout (zero
padding for the ``l > 0`` inputs a linear readout ignores) and sums them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._base import EdgeBackbone, Features, register_model
from ._batch import AtomsBatch

#: Species the adapter builds MACE for by default (H, C, N, O, Na, Cl); MACE's
#: product basis has per-element weights, so the list is kept short.
MACE_DEFAULT_SPECIES = (1, 6, 7, 8, 11, 17)
MACE_EXTRA = "pip install scalepool[mace]"


def import_mace():
    """``(mace.modules, e3nn.o3)``; a clear ImportError naming the extra when absent.

    e3nn 0.4 loads its constants with ``torch.load`` and the default
    ``weights_only=True`` of torch >= 2.6 refuses the ``slice`` objects in that
    file: ``slice`` is registered as a safe global first (it is harmless).
    """
    torch.serialization.add_safe_globals([slice])
    try:
        import mace.modules as mace_modules
        from e3nn import o3
    except ImportError as err:
        raise ImportError(f"the MACE backbone needs mace-torch and e3nn ({MACE_EXTRA}): {err}") from err
    return mace_modules, o3


def species_one_hot(
    numbers: torch.Tensor, table: torch.Tensor, dtype: torch.dtype, name: str
) -> torch.Tensor:
    """(n, len(table)) one-hot of ``numbers`` (n,) over the atomic numbers ``table``.

    Raises ValueError naming the species the model was not built for.
    """
    index = torch.searchsorted(table, numbers)
    index = index.clamp(max=table.numel() - 1)
    bad = table[index] != numbers
    if bool(bad.any()):
        raise ValueError(
            f"{name} was built for species {table.tolist()}; the batch has atomic numbers "
            f"{sorted(set(numbers[bad].tolist()))} (pass species=[...] to the backbone)"
        )
    return torch.nn.functional.one_hot(index, table.numel()).to(dtype)


@register_model
class MACEBackbone(EdgeBackbone):
    """MACE (Batatia et al. 2022, mace-torch) through scalepool's embed/readout interface.

    Parameters
    ----------
    cutoff : Å, MACE's ``r_max``
    num_channels : C, multiplicity of every irrep of the hidden features
    max_L : highest degree of the hidden features (``Cx0e + Cx1o + ...``)
    hidden_irreps : an e3nn irreps string; overrides ``num_channels``/``max_L``
        (must start with its ``0e`` block, as MACE requires)
    max_ell : degree of the edge spherical harmonics
    correlation : body order of the product basis (per layer or one for all)
    num_interactions : message-passing layers
    num_bessel, num_polynomial_cutoff : radial basis size and envelope power
    radial_mlp : hidden widths of the radial MLP
    mlp_irreps : hidden irreps of the last (non-linear) readout
    avg_num_neighbors : message normalisation (MACE's; about the number of
        neighbours within ``cutoff``)
    species : atomic numbers the one-hot embedding covers
    interaction : name in ``mace.modules.interaction_classes`` (all layers)
    """

    def __init__(
        self,
        cutoff: float = 4.5,
        num_channels: int = 16,
        max_L: int = 1,
        hidden_irreps: str | None = None,
        max_ell: int = 3,
        correlation: int | Sequence[int] = 3,
        num_interactions: int = 2,
        num_bessel: int = 8,
        num_polynomial_cutoff: int = 5,
        radial_mlp: Sequence[int] = (64, 64, 64),
        mlp_irreps: str = "16x0e",
        avg_num_neighbors: float = 30.0,
        species: Sequence[int] = MACE_DEFAULT_SPECIES,
        interaction: str = "RealAgnosticResidualInteractionBlock",
    ):
        mace_modules, o3 = import_mace()
        if hidden_irreps is None:
            if int(num_channels) < 1 or int(max_L) < 0:
                raise ValueError(f"num_channels must be >= 1 and max_L >= 0, got {num_channels}, {max_L}")
            hidden_irreps = str(
                o3.Irreps([(int(num_channels), (ell, (-1) ** ell)) for ell in range(int(max_L) + 1)])
            )
        irreps = o3.Irreps(hidden_irreps)
        if len(irreps) == 0 or irreps[0].ir != o3.Irrep("0e"):
            raise ValueError(f"hidden_irreps must start with its 0e block, got {hidden_irreps!r}")
        if int(num_interactions) < 1:
            raise ValueError(f"num_interactions must be >= 1, got {num_interactions}")
        if interaction not in mace_modules.interaction_classes:
            raise ValueError(
                f"interaction must be one of {sorted(mace_modules.interaction_classes)}, got {interaction!r}"
            )
        species = sorted({int(z) for z in species})
        if not species or species[0] < 1 or species[-1] > 118:
            raise ValueError(f"species must be atomic numbers in 1..118, got {species}")
        corr = [int(c) for c in correlation] if not isinstance(correlation, int) else int(correlation)
        super().__init__(
            cutoff,
            dict(
                cutoff=float(cutoff),
                num_channels=int(irreps.count(o3.Irrep("0e"))),
                max_L=int(irreps.lmax),
                hidden_irreps=str(irreps),
                max_ell=int(max_ell),
                correlation=corr,
                num_interactions=int(num_interactions),
                num_bessel=int(num_bessel),
                num_polynomial_cutoff=int(num_polynomial_cutoff),
                radial_mlp=[int(w) for w in radial_mlp],
                mlp_irreps=str(mlp_irreps),
                avg_num_neighbors=float(avg_num_neighbors),
                species=species,
                interaction=interaction,
            ),
        )
        cls = mace_modules.interaction_classes[interaction]
        self.mace = mace_modules.MACE(
            r_max=float(cutoff),
            num_bessel=int(num_bessel),
            num_polynomial_cutoff=int(num_polynomial_cutoff),
            max_ell=int(max_ell),
            interaction_cls=cls,
            interaction_cls_first=cls,
            num_interactions=int(num_interactions),
            num_elements=len(species),
            hidden_irreps=irreps,
            MLP_irreps=o3.Irreps(mlp_irreps),
            atomic_energies=np.zeros(len(species)),
            avg_num_neighbors=float(avg_num_neighbors),
            atomic_numbers=species,
            correlation=corr,
            gate=torch.nn.functional.silu,
            radial_MLP=[int(w) for w in radial_mlp],
        )
        self.register_buffer("species_table", torch.tensor(species, dtype=torch.long), persistent=False)
        self.n_interactions = int(num_interactions)
        # widths of each layer's output: its 0e channels, the rest a readout ignores
        self._layer_scalars, self._layer_pads, self._vector_slice = [], [], None
        for layer, readout in enumerate(self.mace.readouts):
            layer_irreps = o3.Irreps(
                readout.linear.irreps_in if hasattr(readout, "linear") else readout.linear_1.irreps_in
            )
            n_scalar = layer_irreps.count(o3.Irrep("0e"))
            self._layer_scalars.append(n_scalar)
            self._layer_pads.append(layer_irreps.dim - n_scalar)
            for mul_ir, span in zip(layer_irreps, layer_irreps.slices(), strict=True):
                if mul_ir.ir == o3.Irrep("1o"):
                    self._vector_slice = (layer, span.start, span.stop, mul_ir.mul)
        self.n_features = sum(self._layer_scalars)
        self.n_vector_features = 0 if self._vector_slice is None else self._vector_slice[3]

    def embed_edges(self, numbers: torch.Tensor, vectors: torch.Tensor, pairs: torch.Tensor) -> Features:
        """Features from a full neighbour list (MACE's blocks, MACE's order).

        numbers : (n,) atomic numbers; vectors : (E, 3) Å, r_ij = x_j - x_i;
        pairs : (E, 2) int64, (i, j), both directions present
        Returns scalar (n, n_features) and vector (n, 3, n_vector_features) or None.
        """
        m = self.mace
        node_attrs = species_one_hot(numbers, self.species_table, vectors.dtype, "MACEBackbone")
        edge_index = pairs.T.contiguous()  # MACE indexes its rows: strided rows are slower
        lengths = torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)
        node_feats = m.node_embedding(node_attrs)
        edge_attrs = m.spherical_harmonics(vectors)
        edge_feats, cutoff = m.radial_embedding(lengths, node_attrs, edge_index, m.atomic_numbers)
        layers = []
        for i, (interaction, product) in enumerate(zip(m.interactions, m.products, strict=True)):
            node_feats, sc = interaction(
                node_attrs=node_attrs,
                node_feats=node_feats,
                edge_attrs=edge_attrs,
                edge_feats=edge_feats,
                edge_index=edge_index,
                cutoff=cutoff,
                first_layer=(i == 0),
            )
            node_feats = product(node_feats=node_feats, sc=sc, node_attrs=node_attrs)
            layers.append(node_feats)
        scalar = torch.cat([f[:, :k] for f, k in zip(layers, self._layer_scalars, strict=True)], dim=-1)
        vector = None
        if self._vector_slice is not None:
            layer, start, stop, mul = self._vector_slice
            vector = layers[layer][:, start:stop].reshape(-1, mul, 3).transpose(1, 2)
        return Features(scalar, vector)

    def energy_head(self, scalar: torch.Tensor) -> torch.Tensor:
        """(n, n_features) -> (n, 1): the sum of MACE's per-layer readouts (raw, before scale/shift)."""
        out = scalar.new_zeros((scalar.shape[0], 1))
        chunks = scalar.split(self._layer_scalars, dim=-1)
        for readout, chunk, pad in zip(self.mace.readouts, chunks, self._layer_pads, strict=True):
            if pad:
                chunk = torch.cat([chunk, chunk.new_zeros((chunk.shape[0], pad))], dim=-1)
            out = out + readout(chunk)[:, :1]
        return out

    def peer_inputs(self, batch: AtomsBatch) -> dict[str, Any]:
        """The input dict of ``self.mace(...)`` for ``batch`` on our neighbour list (benchmarks, tests)."""
        pairs, shifts = batch.neighbors(self.cutoff)
        frame = batch.frame_index[pairs[:, 0]]
        cell = batch.cell if batch.cell is not None else batch.positions.new_zeros((batch.n_frames, 3, 3))
        cart = torch.einsum("ek,ekl->el", shifts.to(batch.positions.dtype), cell[frame])
        counts = torch.bincount(batch.frame_index, minlength=batch.n_frames)
        return {
            "positions": batch.positions,
            "node_attrs": species_one_hot(
                batch.numbers, self.species_table, batch.positions.dtype, "MACEBackbone"
            ),
            "edge_index": pairs.T.contiguous(),
            "shifts": cart,
            "unit_shifts": shifts.to(batch.positions.dtype),
            "cell": cell.reshape(-1, 3),
            "batch": batch.frame_index,
            "ptr": torch.cat([counts.new_zeros(1), counts.cumsum(0)]),
            "head": torch.zeros(batch.n_frames, dtype=torch.long, device=batch.device),
        }
