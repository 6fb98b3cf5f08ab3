"""The two force branches of the NaCl testbed: short-range and long-range.

- :class:`ShortRangeBranch`: a backbone at a short cutoff (4.5 Å: the first
  solvation shell of Na+ and the O-O first peak, nothing beyond).
- :class:`LongRangeBranch`: a backbone at a longer cutoff (6 Å) plus the
  :class:`LatentChargeEwald` head, whose charges come from the backbone's
  scalar features and whose energy reaches every periodic image.

Both are :class:`ForceModel` s with the same interface as their backbone, so
the scale layer and the training loop treat them alike.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ._base import Features, ForceModel, register_model
from ._batch import AtomsBatch
from ._electrostatics import LatentChargeEwald
from ._mace import MACEBackbone
from ._painn import PaiNN
from ._schnet import SchNet
from ._so3krates import SO3kratesBackbone

#: Backbone names accepted by the branches (``mace`` and ``so3krates`` need their extras).
BACKBONES: dict[str, type[ForceModel]] = {
    "painn": PaiNN,
    "schnet": SchNet,
    "mace": MACEBackbone,
    "so3krates": SO3kratesBackbone,
}
SHORT_CUTOFF = 4.5  # Å
LONG_CUTOFF = 6.0  # Å


def _backbone(name: str, cutoff: float, options: dict[str, Any]) -> ForceModel:
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {name!r}")
    return BACKBONES[name](cutoff=cutoff, **options)


class _Branch(ForceModel):
    """A backbone whose species scale and shift live on the branch."""

    backbone: ForceModel

    def _init_backbone(self, backbone: str, cutoff: float, options: dict[str, Any]) -> None:
        self.backbone = _backbone(backbone, cutoff, options)
        self.n_features = self.backbone.n_features
        # Store the backbone's resolved settings, not only the overrides, so a
        # saved model still loads after a default changes.
        resolved = {k: v for k, v in self.backbone.config.items() if k not in ("class", "cutoff")}
        self.config.update(resolved)

    def embed(self, batch: AtomsBatch) -> Features:
        return self.backbone.embed(batch)

    def _backbone_energies(self, batch: AtomsBatch, features: Features) -> torch.Tensor:
        # The backbone's own scale/shift buffers stay at identity; the branch's apply.
        # under autocast the head's output is half precision: per-atom energies are float32 (positions' dtype)
        raw = self.backbone.energy_head(features.scalar).squeeze(-1).to(batch.positions.dtype)
        return self.scale_shift(raw, batch.numbers)


@register_model
class ShortRangeBranch(_Branch):
    """Backbone at a short cutoff (default 4.5 Å).

    Parameters
    ----------
    cutoff : Å
    backbone : ``"painn"`` (default) or ``"schnet"``
    **backbone_options : passed to the backbone (``n_features``, ``n_interactions``, ...)
    """

    def __init__(self, cutoff: float = SHORT_CUTOFF, backbone: str = "painn", **backbone_options):
        super().__init__(cutoff, dict(cutoff=float(cutoff), backbone=backbone, **backbone_options))
        self._init_backbone(backbone, cutoff, backbone_options)

    def readout(self, batch: AtomsBatch, features: Features) -> torch.Tensor:
        return self._backbone_energies(batch, features)


@register_model
class LongRangeBranch(_Branch):
    """Backbone at a longer cutoff (default 6 Å) plus latent-charge Ewald electrostatics.

    Per-atom energy: ``scale_Z * backbone(features) + shift_Z + q_i V_i``; the
    electrostatic term is physical (eV) and is not rescaled.

    Parameters
    ----------
    cutoff : Å, of the backbone
    backbone : ``"painn"`` (default) or ``"schnet"``
    electrostatics : keyword arguments of :class:`LatentChargeEwald`
        (``fixed_charges``, ``method``, ``smearing``, ...); ``n_features`` is
        taken from the backbone
    **backbone_options : passed to the backbone
    """

    def __init__(
        self,
        cutoff: float = LONG_CUTOFF,
        backbone: str = "painn",
        electrostatics: dict[str, Any] | None = None,
        **backbone_options,
    ):
        head_options = dict(electrostatics or {})
        head_options.pop("n_features", None)
        super().__init__(cutoff, dict(cutoff=float(cutoff), backbone=backbone, **backbone_options))
        self._init_backbone(backbone, cutoff, backbone_options)
        self.electrostatics = LatentChargeEwald(n_features=self.n_features, **head_options)
        self.config["electrostatics"] = dict(self.electrostatics.options)

    def readout(self, batch: AtomsBatch, features: Features) -> torch.Tensor:
        with _full_precision(batch):  # Ewald/PME sums are not safe in half precision
            coulomb = self.electrostatics(batch, features.scalar.to(batch.positions.dtype))
        return self._backbone_energies(batch, features) + coulomb

    def charges(self, batch: AtomsBatch) -> torch.Tensor:
        """Neutral per-atom charges (n_atoms,), e, as the head uses them."""
        scalar = self.embed(batch).scalar
        with _full_precision(batch):
            return self.electrostatics.charges(batch, scalar.to(batch.positions.dtype))


def _full_precision(batch: AtomsBatch):
    """Autocast switched off on the batch's device while it is on (mixed precision), else a no-op:
    the electrostatics head (charges, Ewald/PME) then runs in the positions' dtype."""
    device_type = batch.positions.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
