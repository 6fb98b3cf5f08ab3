"""A conservative two-branch model mixed by a smooth, position-dependent router.

:class:`MixedForceModel` holds two force models, ``branch0`` (the scale
anchor s = 0, e.g. the short-range branch) and ``branch1`` (s = 1, e.g. the
long-range branch), and a router that predicts a per-atom scale
``s_i(x)`` in [0, 1] from smooth descriptors of the positions.  The energy is
mixed atom by atom::

    e_i = (1 - s_i) e0_i + s_i (e1_i - delta_Z)        E = sum_i e_i

and the forces are ``-dE/dx`` by autograd, so they include the router's own
dependence on the positions, ``-(e1_i - e0_i - delta_Z) ds_i/dx``: the model is
conservative and can drive NVE dynamics.  ``delta_Z`` is the difference of the
two branches' per-species energy shifts (``align_shifts=True``), which removes
the arbitrary offset between their atomic energies from that term; it is a
constant per species, so the model stays conservative either way.  A learned
per-species correction ``delta_correction`` (eV, zero until fitted) is added
to it: it sets the reference of ``e1 - e0`` that multiplies ``ds/dx``, which
the end-to-end fit (:func:`scalepool.scales.fit_mixed_model`) tunes together
with the router.

Router features (:func:`smooth_router_features`), all differentiable in the
positions and the cell, computed in torch from the batch:

- smooth ion counts ``sum_{ions j != i} w_r(d_ij)`` for each radius ``r`` of
  ``radii``, with a C1 cosine switch ``w_r`` going from 1 at ``r - width`` to
  0 at ``r + width`` (periodic images included, through the neighbour list);
- species one-hot over a fixed species list.

The branch disagreement ``|F1 - F0|`` used by :class:`ContinuousRouter` is
**not** a feature here: as an input of the energy it would put the branch
forces, hence second derivatives of the branches, inside every MD force call.

``hard=True`` replaces ``s_i`` by ``1[s_i > 0.5]`` (each atom takes one
branch's atomic energy).  That is for analysis only: the energy jumps when an
atom's choice flips, so hard mixing is **not** conservative.

The router is fitted by :mod:`scalepool.scales` (train split only).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..units import ION_NUMBERS
from ._base import N_SPECIES, ForceModel, build_model, register_model
from ._batch import AtomsBatch

#: Default species of the one-hot block: H, O, Na, Cl.
DEFAULT_SPECIES = (1, 8, 11, 17)
#: Å, default radii of the smooth ion counts (the same radii as the routers' ion counts).
ROUTER_RADII = (3.5, 5.0, 7.0)


def router_mlp(n_in: int, hidden: int, n_out: int, layers: int) -> nn.Module:
    """SiLU MLP with ``layers`` hidden layers of width ``hidden``; linear when either is 0."""
    if hidden <= 0 or layers <= 0:
        return nn.Linear(n_in, n_out)
    mods, width = [], n_in
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    return nn.Sequential(*mods, nn.Linear(width, n_out))


def smooth_switch(distance: torch.Tensor, radius: float, width: float) -> torch.Tensor:
    """C1 cosine step: 1 below ``radius - width``, 0 above ``radius + width`` (Å)."""
    x = ((distance - (radius - width)) / (2.0 * width)).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * x))


def smooth_router_features(
    batch: AtomsBatch,
    radii: tuple[float, ...] = ROUTER_RADII,
    width: float = 0.5,
    species: tuple[int, ...] = DEFAULT_SPECIES,
    ion_numbers: tuple[int, ...] = ION_NUMBERS,
) -> torch.Tensor:
    """(n_atoms, len(radii) + len(species)) router features, differentiable in positions and cell.

    Columns: smooth counts of the ions within each radius (an ion does not
    count itself), then the species one-hot.  Atoms whose species is not in
    ``species`` get an all-zero one-hot row.
    """
    if not width > 0:
        raise ValueError(f"width must be positive (Å), got {width}")
    n, dtype, device = batch.n_atoms, batch.positions.dtype, batch.device
    counts = batch.positions.new_zeros((n, len(radii)))
    is_ion = torch.isin(batch.numbers, torch.as_tensor(ion_numbers, device=device))
    if len(radii) and bool(is_ion.any()):
        pairs, shifts = batch.neighbors(max(radii) + width)
        keep = is_ion[pairs[:, 1]]
        pairs, shifts = pairs[keep], shifts[keep]
        if pairs.shape[0]:
            vectors = batch.edge_vectors(pairs, shifts)
            # sqrt with a floor: no NaN gradient even for a coincident pair
            distance = (vectors.square().sum(dim=-1) + 1e-12).sqrt()
            weights = torch.stack([smooth_switch(distance, r, width) for r in radii], dim=-1)
            counts = counts.index_add(0, pairs[:, 0], weights)
    onehot = (batch.numbers[:, None] == torch.as_tensor(species, device=device)[None, :]).to(dtype)
    return torch.cat([counts, onehot], dim=-1)


def feature_names(radii: tuple[float, ...], species: tuple[int, ...]) -> list[str]:
    return [f"smooth_ions_within_{r:g}A" for r in radii] + [f"species_{z}" for z in species]


@register_model
class MixedForceModel(ForceModel):
    """Two branches mixed atom by atom by a smooth router (see the module docstring).

    Parameters
    ----------
    branch0, branch1 : ForceModel, or its ``config`` dict (rebuilt untrained;
        :func:`~scalepool.models.load_model` then loads the weights)
    radii : Å, radii of the smooth ion counts
    width : Å, half-width of the cosine switch of each count
    species : atomic numbers of the one-hot block
    hidden, layers : router MLP width and depth (``hidden=0``: linear)
    align_shifts : subtract the branches' per-species shift difference in the
        mixing term (see the module docstring)
    hard : mix with ``1[s > 0.5]`` instead of ``s`` (analysis only, not conservative)

    Attributes
    ----------
    router : the MLP, standardised features -> one logit per atom
    feature_mean, feature_std : buffers, feature standardisation (set by :func:`scalepool.scales.fit_router`)
    delta_correction : parameter (119,), eV, learned per-species addition to ``delta_Z``
        (zero until :func:`scalepool.scales.fit_mixed_model` fits it)
    """

    def __init__(
        self,
        branch0: ForceModel | dict[str, Any],
        branch1: ForceModel | dict[str, Any],
        radii: tuple[float, ...] = ROUTER_RADII,
        width: float = 0.5,
        species: tuple[int, ...] = DEFAULT_SPECIES,
        hidden: int = 16,
        layers: int = 2,
        align_shifts: bool = True,
        hard: bool = False,
    ):
        branch0 = branch0 if isinstance(branch0, ForceModel) else build_model(branch0)
        branch1 = branch1 if isinstance(branch1, ForceModel) else build_model(branch1)
        radii, species = tuple(float(r) for r in radii), tuple(int(z) for z in species)
        router_cutoff = max(radii) + width if radii else 0.0
        super().__init__(
            max(branch0.cutoff, branch1.cutoff, router_cutoff),
            {
                "branch0": branch0.config,
                "branch1": branch1.config,
                "radii": list(radii),
                "width": float(width),
                "species": list(species),
                "hidden": int(hidden),
                "layers": int(layers),
                "align_shifts": bool(align_shifts),
                "hard": bool(hard),
            },
        )
        self.branch0, self.branch1 = branch0, branch1
        self.radii, self.width, self.species = radii, float(width), species
        self.align_shifts, self.hard = bool(align_shifts), bool(hard)
        self.n_features = branch0.n_features
        n_in = len(radii) + len(species)
        self.router = router_mlp(n_in, hidden, 1, layers)
        self.register_buffer("feature_mean", torch.zeros(n_in))
        self.register_buffer("feature_std", torch.ones(n_in))
        self.delta_correction = nn.Parameter(torch.zeros(N_SPECIES))
        self.to(next(branch0.parameters()).dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # model files written before delta_correction existed load with a zero correction
        state_dict.setdefault(prefix + "delta_correction", torch.zeros_like(self.delta_correction))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def features(self, batch: AtomsBatch) -> torch.Tensor:
        """(n_atoms, n_in) raw router features (:func:`smooth_router_features`)."""
        return smooth_router_features(batch, self.radii, self.width, self.species)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(n_atoms,) router logits of raw features."""
        return self.router((features - self.feature_mean) / self.feature_std)[:, 0]

    def scales(self, batch: AtomsBatch, hard: bool | None = None) -> torch.Tensor:
        """(n_atoms,) per-atom scales s_i in [0, 1] (0 or 1 when hard)."""
        s = torch.sigmoid(self.logits(self.features(batch)))
        if self.hard if hard is None else hard:
            s = (s > 0.5).to(s.dtype)
        return s

    def delta(self, numbers: torch.Tensor) -> torch.Tensor:
        """(n_atoms,) eV, ``delta_Z`` of each atom: shift difference (``align_shifts``) plus the learned correction."""
        delta = self.delta_correction[numbers]
        if self.align_shifts:
            delta = delta + (self.branch1.species_shift[numbers] - self.branch0.species_shift[numbers])
        return delta

    def atomic_energies(self, batch: AtomsBatch) -> torch.Tensor:
        e0 = self.branch0.atomic_energies(batch)
        e1 = self.branch1.atomic_energies(batch) - self.delta(batch.numbers)
        s = self.scales(batch)
        return e0 + s * (e1 - e0)
