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
constant per species, so the model stays conservative either way.

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

:func:`fit_router` fits the router on the train split of a
:class:`PredictionCache` only (:class:`LeakageError` otherwise).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import PredictionCache
from ..models import AtomsBatch, ForceModel, build_model, register_model
from ..units import ION_NUMBERS
from ._features import FEATURE_RADII
from ._routers import _mlp, _Router

#: Default species of the one-hot block: H, O, Na, Cl.
DEFAULT_SPECIES = (1, 8, 11, 17)


def smooth_switch(distance: torch.Tensor, radius: float, width: float) -> torch.Tensor:
    """C1 cosine step: 1 below ``radius - width``, 0 above ``radius + width`` (Å)."""
    x = ((distance - (radius - width)) / (2.0 * width)).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * x))


def smooth_router_features(
    batch: AtomsBatch,
    radii: tuple[float, ...] = FEATURE_RADII,
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
    feature_mean, feature_std : buffers, feature standardisation (set by :func:`fit_router`)
    """

    def __init__(
        self,
        branch0: ForceModel | dict[str, Any],
        branch1: ForceModel | dict[str, Any],
        radii: tuple[float, ...] = FEATURE_RADII,
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
        self.router = _mlp(n_in, hidden, 1, layers)
        self.register_buffer("feature_mean", torch.zeros(n_in))
        self.register_buffer("feature_std", torch.ones(n_in))
        self.to(next(branch0.parameters()).dtype)

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

    def atomic_energies(self, batch: AtomsBatch) -> torch.Tensor:
        e0 = self.branch0.atomic_energies(batch)
        e1 = self.branch1.atomic_energies(batch)
        if self.align_shifts:
            z = batch.numbers
            e1 = e1 - (self.branch1.species_shift[z] - self.branch0.species_shift[z])
        s = self.scales(batch)
        return e0 + s * (e1 - e0)


@torch.no_grad()
def cache_router_features(
    model: MixedForceModel, cache: PredictionCache, frames_per_batch: int = 8
) -> torch.Tensor:
    """(F, N, n_in) raw router features of every frame of ``cache`` (labels unused),
    from the same torch function the model uses in MD."""
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    out = []
    for start in range(0, cache.n_frames, frames_per_batch):
        index = np.arange(start, min(start + frames_per_batch, cache.n_frames))
        feats = model.features(
            AtomsBatch.from_arrays(
                cache.positions, cache.numbers, cache.cell, index, device=device, dtype=dtype
            )
        )
        out.append(feats.reshape(len(index), cache.n_atoms, -1))
    return torch.cat(out, dim=0)


def fit_router(
    model: MixedForceModel,
    train: PredictionCache,
    steps: int = 300,
    lr: float = 1e-2,
    batch_size: int = 65536,
    seed: int = 0,
) -> dict[str, float]:
    """Fit ``model.router`` on the train split of a prediction cache; returns train metrics.

    The objective is the per-atom force MAE of the cached interpolation
    ``(1 - s_i) F0_i + s_i F1_i`` against ``F_ref`` (the cache's anchors are
    taken as branch0 and branch1); the features come from the cached positions
    and cell through :func:`smooth_router_features`.  The router-gradient term
    of the deployed forces, ``-(e1_i - e0_i - delta_Z) ds_i/dx``, needs atomic
    energies the cache does not hold and is not part of the fit.

    Raises :class:`LeakageError` unless every frame of ``train`` is a
    labelled train frame (pass ``cache.select("train")``).  Only the router
    and the feature standardisation change; the branches are untouched.

    Returns ``{"mae_soft", "mae_hard", "mae_branch0", "mae_branch1",
    "mean_scale"}`` (eV/Å, on the train frames).
    """
    _Router.check_train_only(train)
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    x = cache_router_features(model, train).reshape(-1, len(model.feature_mean))
    f0, f1 = (torch.as_tensor(f, dtype=dtype, device=device).reshape(-1, 3) for f in train.anchor_forces())
    ref = torch.as_tensor(train.forces_ref, dtype=dtype, device=device).reshape(-1, 3)
    d, a = f1 - f0, ref - f0
    with torch.no_grad():
        model.feature_mean.copy_(x.mean(dim=0))
        model.feature_std.copy_(x.std(dim=0).clamp_min(1e-6) if x.shape[0] > 1 else torch.ones_like(x[0]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.router.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.router.parameters(), lr=lr)
    n = x.shape[0]
    for _ in range(steps):
        index = torch.arange(n) if n <= batch_size else torch.randint(n, (batch_size,), generator=generator)
        index = index.to(device)
        optimizer.zero_grad()
        s = torch.sigmoid(model.logits(x[index]))
        loss = (s[:, None] * d[index] - a[index]).abs().mean()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        s = torch.sigmoid(model.logits(x))
        hard = (s > 0.5).to(s.dtype)
        mae = lambda scale: float((scale[:, None] * d - a).abs().mean())  # noqa: E731
        return {
            "mae_soft": mae(s),
            "mae_hard": mae(hard),
            "mae_branch0": mae(torch.zeros_like(s)),
            "mae_branch1": mae(torch.ones_like(s)),
            "mean_scale": float(s.mean()),
        }
