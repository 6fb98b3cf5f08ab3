"""The backbone interface every force model follows, its registry and its file format.

A :class:`ForceModel` maps an :class:`AtomsBatch` to per-atom energies (eV);
frame energies are their sums and forces their negative gradient, taken by
autograd, so every model is conservative by construction.

Small interface for wrappers (MuSE pooling wraps any backbone through it)::

    features = model.embed(batch)            # Features(scalar (n, F), vector (n, 3, F) or None)
    energies = model.readout(batch, features)  # (n,) eV, species scale and shift applied

``atomic_energies(batch)`` is exactly ``readout(batch, embed(batch))``.  A
wrapper may change the features in between (pool them to coarse nodes,
process, unpool and add them back) as long as it keeps their shapes: scalars
are rotation invariant, vectors rotate with the frame.  The backbones (PaiNN,
SchNet) also expose ``energy_head``, the map (n, F) -> (n, 1) before the
species scale and shift, which the branches use with their own statistics.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from .._files import write_torch
from ..data import FrameSet
from . import _keys as K
from ._batch import AtomsBatch
from ._radial import MLP
from ._scatter import scatter_sum

#: Size of per-species tables: indexed directly by atomic number (0 unused).
N_SPECIES = 119
_FORMAT = "scalepool-model/1"

#: Class name -> ForceModel subclass; filled by :func:`register_model`.
MODEL_REGISTRY: dict[str, type[ForceModel]] = {}


class Features(NamedTuple):
    """Per-atom features a backbone hands to its readout (or to a wrapper).

    scalar : (n_atoms, n_features), rotation invariant
    vector : (n_atoms, 3, n_features), rotation equivariant, or ``None``
    """

    scalar: torch.Tensor
    vector: torch.Tensor | None = None


def register_model(cls: type[ForceModel]) -> type[ForceModel]:
    """Class decorator: make ``cls`` buildable from its ``config`` by :func:`build_model`."""
    MODEL_REGISTRY[cls.__name__] = cls
    return cls


class ForceModel(nn.Module):
    """Abstract conservative force model.

    Subclasses call ``super().__init__(cutoff, config)`` with their JSON-able
    constructor arguments and implement :meth:`embed` and :meth:`readout`.

    Attributes
    ----------
    cutoff : float, Å, the largest distance at which atoms see each other
    config : dict, ``{"class": name, **constructor arguments}``, JSON-able;
        ``build_model(model.config)`` rebuilds the same architecture
    n_features : int, width ``F`` of the features returned by :meth:`embed`
    species_shift : buffer (119,), eV, per-species energy shift by atomic number
    species_scale : buffer (119,), eV per unit of raw output, per-species scale
    """

    cutoff: float
    config: dict[str, Any]
    n_features: int

    def __init__(self, cutoff: float, config: dict[str, Any]):
        super().__init__()
        if not float(cutoff) > 0:
            raise ValueError(f"cutoff must be a positive number of Å, got {cutoff}")
        self.cutoff = float(cutoff)
        self.config = {"class": type(self).__name__, **config}
        try:
            json.dumps(self.config)
        except TypeError as err:
            raise TypeError(f"config of {type(self).__name__} is not JSON-able: {err}") from err
        self.register_buffer("species_shift", torch.zeros(N_SPECIES))
        self.register_buffer("species_scale", torch.ones(N_SPECIES))

    # ------------------------------------------------------------ interface
    def embed(self, batch: AtomsBatch) -> Features:
        """Per-atom features of ``batch``; differentiable in positions and cell."""
        raise NotImplementedError

    def readout(self, batch: AtomsBatch, features: Features) -> torch.Tensor:
        """(n_atoms,) eV from features, species scale and shift included."""
        raise NotImplementedError

    def scale_shift(self, raw: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """``raw * species_scale[Z] + species_shift[Z]``; raw : (n_atoms,), numbers : (n_atoms,)."""
        return raw * self.species_scale[numbers] + self.species_shift[numbers]

    def atomic_energies(self, batch: AtomsBatch) -> torch.Tensor:
        """(n_atoms,) eV, differentiable in ``batch.positions`` and ``batch.cell``."""
        return self.readout(batch, self.embed(batch))

    def forward(
        self,
        batch: AtomsBatch,
        compute_forces: bool = True,
        create_graph: bool | None = None,
        compute_stress: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Energies, forces and (optionally) stress of every frame in ``batch``.

        Parameters
        ----------
        batch : AtomsBatch in the model's dtype and device
        compute_forces : also return forces = -dE/dx (autograd)
        create_graph : keep the graph of the forces (and stress) so a loss on
            them can be back-propagated; defaults to ``self.training``
        compute_stress : also return ``stress`` = (1/V) dE/d eps and ``virial`` =
            -dE/d eps, eps a symmetric strain applied to positions and cell
            (:meth:`AtomsBatch.strained`); periodic frames only

        Returns
        -------
        ``{"energy": (n_frames,) eV, "forces": (n_atoms, 3) eV/Å,
        "atomic_energies": (n_atoms,) eV}``, plus ``"stress": (n_frames, 3, 3)
        eV/Å^3`` (ASE sign) and ``"virial": (n_frames, 3, 3) eV`` with
        ``compute_stress``; outputs are detached when called under ``torch.no_grad()``.
        """
        check_batch(batch, self)
        if compute_stress and batch.cell is None:
            raise ValueError(
                "stress needs periodic frames with a cell; this batch has open boundaries (cell None)"
            )
        if create_graph is None:
            create_graph = self.training
        grad_wanted = torch.is_grad_enabled()
        with torch.set_grad_enabled(grad_wanted or compute_forces or compute_stress):
            if compute_forces and not batch.positions.requires_grad:
                batch = dataclasses.replace(batch, positions=batch.positions.detach().requires_grad_(True))
            inputs = [batch.positions] if compute_forces else []
            if compute_stress:
                strain = batch.cell.new_zeros((batch.n_frames, 3, 3), requires_grad=True)
                inputs.append(strain)
                volume = torch.linalg.det(batch.cell).abs()
                batch = batch.strained(strain)
            atomic = self.atomic_energies(batch)
            energy = scatter_sum(atomic, batch.frame_index, batch.n_frames)
            out = {K.ENERGY: energy, K.ATOMIC_ENERGIES: atomic}
            if inputs:
                grads = [None] * len(inputs)
                if energy.requires_grad:
                    grads = torch.autograd.grad(
                        energy.sum(),
                        inputs,
                        create_graph=create_graph,
                        retain_graph=create_graph or grad_wanted,
                        allow_unused=True,
                    )
                grads = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads, strict=True)]
                if compute_forces:
                    out[K.FORCES] = -grads[0]
                if compute_stress:
                    out[K.VIRIAL] = -grads[-1]
                    out[K.STRESS] = grads[-1] / volume[:, None, None]
        if not grad_wanted:
            out = {key: value.detach() for key, value in out.items()}
        return out


#: How message-passing backbones sum messages: ``"fused"`` chunked kernels
#: (default, fastest on CPU), ``"index_add"`` plain tensor ops with
#: ``index_add_``, ``"torch_scatter"`` plain ops with torch-scatter (if
#: installed).  All give the same numbers.
AGGREGATIONS = ("fused", "index_add", "torch_scatter")


class EdgeBackbone(ForceModel):
    """A backbone whose features come from one full neighbour list at ``cutoff``.

    Subclasses implement :meth:`embed_edges` (features from atomic numbers, edge
    vectors and pairs, so MuSE and the exporters can feed their own edges) and
    an ``energy_head`` mapping scalar features (n, F) to (n, 1) raw energies;
    :meth:`embed` and :meth:`readout` are shared.
    """

    def embed(self, batch: AtomsBatch) -> Features:
        pairs, shifts = batch.neighbors(self.cutoff)
        return self.embed_edges(batch.numbers, batch.edge_vectors(pairs, shifts), pairs)

    def embed_edges(self, numbers: torch.Tensor, vectors: torch.Tensor, pairs: torch.Tensor) -> Features:
        """Features from a full neighbour list.

        numbers : (n,) atomic numbers; vectors : (E, 3) Å, r_ij = x_j - x_i;
        pairs : (E, 2) int64, (i, j), both directions present
        """
        raise NotImplementedError

    def readout(self, batch: AtomsBatch, features: Features) -> torch.Tensor:
        """(n_atoms,) eV in the dtype of ``batch.positions``.

        Under ``torch.autocast`` the head's output is bfloat16/float16; it is cast
        to the positions' dtype (float32) before the species scale and shift, so
        per-frame energies are float32 sums of float32 per-atom energies.
        """
        raw = self.energy_head(features.scalar).squeeze(-1).to(batch.positions.dtype)
        return self.scale_shift(raw, batch.numbers)


class MessagePassingBackbone(EdgeBackbone):
    """Shared constructor and neighbour handling of the cutoff backbones (PaiNN, SchNet).

    Stores and validates the hyperparameters every such backbone has, records
    them in ``config``, and builds the species embedding and the energy head;
    subclasses add their interaction blocks and implement :meth:`embed_edges`.

    Parameters
    ----------
    cutoff : Å
    n_features : width F of the features
    n_interactions : message-passing blocks
    n_rbf : radial basis functions per edge
    radial_basis, cutoff_function : names understood by ``_radial``
    aggregation : one of :data:`AGGREGATIONS`
    """

    def __init__(
        self,
        cutoff: float,
        n_features: int,
        n_interactions: int,
        n_rbf: int,
        radial_basis: str,
        cutoff_function: str,
        aggregation: str,
    ):
        super().__init__(
            cutoff,
            dict(
                cutoff=float(cutoff),
                n_features=int(n_features),
                n_interactions=int(n_interactions),
                n_rbf=int(n_rbf),
                radial_basis=radial_basis,
                cutoff_function=cutoff_function,
                aggregation=aggregation,
            ),
        )
        if n_features < 1 or n_interactions < 1 or n_rbf < 1:
            raise ValueError(
                f"n_features, n_interactions and n_rbf must be positive, got {n_features}, "
                f"{n_interactions}, {n_rbf}"
            )
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        self.n_features = int(n_features)
        self.n_interactions = int(n_interactions)
        self.n_rbf = int(n_rbf)
        self.radial_basis = radial_basis
        self.cutoff_function = cutoff_function
        self.aggregation = aggregation
        self.embedding = nn.Embedding(N_SPECIES, self.n_features)

    def _build_energy_head(self, activation: str = "silu") -> None:
        """The (n, F) -> (n, 1) head; subclasses call it after their blocks, which
        keeps the order of the random initialisation (and so seeded weights) stable."""
        self.energy_head = MLP(self.n_features, max(self.n_features // 2, 1), 1, activation=activation)



def check_batch(batch: AtomsBatch, model: nn.Module | None = None) -> None:
    """Validate a model input once, at the public boundary; messages say what was received."""
    pos = batch.positions
    if pos.dim() != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape (n_atoms, 3), got {tuple(pos.shape)}")
    if not pos.is_floating_point():
        raise TypeError(f"positions must be floating point, got {pos.dtype}")
    n = pos.shape[0]
    if batch.numbers.shape != (n,) or batch.frame_index.shape != (n,):
        raise ValueError(
            f"numbers {tuple(batch.numbers.shape)} and frame_index {tuple(batch.frame_index.shape)} "
            f"must both have shape ({n},)"
        )
    if n and (int(batch.numbers.min()) < 1 or int(batch.numbers.max()) >= N_SPECIES):
        raise ValueError(f"atomic numbers must lie in 1..118, got {sorted(set(batch.numbers.tolist()))}")
    if batch.cell is not None and tuple(batch.cell.shape) != (batch.n_frames, 3, 3):
        raise ValueError(f"cell must have shape ({batch.n_frames}, 3, 3), got {tuple(batch.cell.shape)}")
    if batch.cell is not None and batch.cell.dtype != pos.dtype:
        raise TypeError(f"cell is {batch.cell.dtype} but positions are {pos.dtype}")
    if not torch.isfinite(pos).all():
        raise ValueError("positions contain NaN or inf")
    if model is not None:
        param = next(model.parameters(), None)
        if param is not None and param.dtype != pos.dtype:
            raise TypeError(
                f"model parameters are {param.dtype} but the batch is {pos.dtype}; "
                "convert one of them (model.to(dtype) or batch.to(dtype=...))"
            )


@torch.no_grad()
def fit_species_statistics(
    model: ForceModel, frames: FrameSet, per_species_scale: bool = False, max_frames: int = 1000
) -> dict[str, dict[int, float]]:
    """Set ``model.species_shift`` and ``model.species_scale`` from training data.

    The shift is the least-squares (minimum-norm) solution of
    ``E_f = sum_Z n_Z shift_Z`` over the frames when energies are present, zero
    otherwise.  The scale is the root-mean-square force component (eV/Å),
    over all atoms (``per_species_scale=False``) or per species; species not in
    ``frames`` get the global value.  At most ``max_frames`` evenly spaced
    frames are used.

    Returns ``{"shift": {Z: eV}, "scale": {Z: eV/Å}}`` for the species present.
    """
    idx = np.unique(np.linspace(0, frames.n_frames - 1, min(frames.n_frames, max_frames)).astype(int))
    ragged = getattr(frames, "ragged", False)  # frames differ in atoms: per-frame compositions
    species, counts = np.unique(frames.numbers_flat if ragged else frames.numbers, return_counts=True)
    shift = np.zeros(N_SPECIES)
    if frames.energy is not None:
        if ragged:
            composition = frames.species_counts()[1][idx].astype(float)
        else:
            composition = np.tile(counts.astype(float), (len(idx), 1))
        solution, *_ = np.linalg.lstsq(composition, frames.energy[idx], rcond=None)
        shift[species] = solution
    atoms = frames.atom_index(idx) if ragged else None
    forces = (frames.forces_flat[atoms] if ragged else frames.forces[idx]).astype(np.float64)
    global_rms = float(np.sqrt(np.mean(forces**2)))
    if not global_rms > 0:
        raise ValueError("all reference forces are zero: cannot set a force scale")
    scale = np.full(N_SPECIES, global_rms)
    if per_species_scale:
        for z in species:
            if ragged:
                scale[z] = float(np.sqrt(np.mean(forces[frames.numbers_flat[atoms] == z] ** 2)))
            else:
                scale[z] = float(np.sqrt(np.mean(forces[:, frames.numbers == z] ** 2)))
    model.species_shift.copy_(torch.as_tensor(shift, dtype=model.species_shift.dtype))
    model.species_scale.copy_(torch.as_tensor(scale, dtype=model.species_scale.dtype))
    return {
        "shift": {int(z): float(shift[z]) for z in species},
        "scale": {int(z): float(scale[z]) for z in species},
    }


def build_model(config: dict[str, Any]) -> ForceModel:
    """A fresh model from ``config`` (``{"class": name, **arguments}``, as in ``model.config``)."""
    config = dict(config)
    name = config.pop("class", None)
    if name not in MODEL_REGISTRY:
        raise ValueError(f"unknown model class {name!r}; registered: {sorted(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[name](**config)


def save_model(model: ForceModel, path: str | os.PathLike) -> Path:
    """Write config and state dict to ``path`` (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": _FORMAT, "config": model.config, "state_dict": model.state_dict()}
    write_torch(path, payload)
    return path


def _upgrade_config(config: Any) -> Any:
    """A saved config as the current code must read it to rebuild the same model.

    Electrostatics heads saved before the real-space switch existed had a hard
    real-space cutoff: ``switch_width`` absent means 0 (not today's default).
    """
    if isinstance(config, dict):
        config = {key: _upgrade_config(value) for key, value in config.items()}
        head = config.get("electrostatics")
        if isinstance(head, dict) and "switch_width" not in head:
            config["electrostatics"] = {**head, "switch_width": 0.0}
    elif isinstance(config, list):
        config = [_upgrade_config(value) for value in config]
    return config


def load_model(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> ForceModel:
    """Rebuild a model written by :func:`save_model`; dtype follows the stored weights."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a scalepool model file (expected format {_FORMAT!r})")
    model = build_model(_upgrade_config(payload["config"]))
    state = payload["state_dict"]
    dtype = next((v.dtype for v in state.values() if v.is_floating_point()), None)
    if dtype is not None:
        model.to(dtype)
    model.load_state_dict(state)
    return model.to(map_location) if map_location is not None else model
