"""The catalogue of branches: one name -> builder table that everything else reads.

The CLI's ``--branch`` choices, the default run names, the model searches, the
``reproduce`` plans and the plot colours all come from :data:`BRANCHES`.
Adding a backbone is one module (a :class:`MessagePassingBackbone`), one entry
in :data:`~scalepool.models.BACKBONES`, and a test class built from
:class:`scalepool.testing.ForceModelTests`; adding a branch is one entry here.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from ._base import ForceModel, build_model
from ._branches import LongRangeBranch, ShortRangeBranch
from ._electrostatics import LatentChargeEwald
from ._muse import MuSE


@dataclasses.dataclass(frozen=True)
class Branch:
    """One trainable branch.

    Attributes
    ----------
    name : run and cache name (``forces_<name>``)
    model_class : the :class:`ForceModel` class the builder returns
    build : ``build(**overrides) -> ForceModel`` with the branch's defaults
    description : one line for ``--help`` and the README
    color : plot colour (Okabe-Ito, colour-blind safe)
    """

    name: str
    model_class: type[ForceModel]
    build: Callable[..., ForceModel]
    description: str
    color: str


_ELECTROSTATICS_KEYS = set(inspect.signature(LatentChargeEwald).parameters) - {"n_features"}
#: Settings every part of a branch takes (backbone, electrostatics head, MuSE's coarse
#: levels): ``edge_chunk`` chunks each part's edge or pair sums above that many edges.
_EVERY_PART = {"edge_chunk"}

_MUSE_ARGUMENTS = (
    "n_levels",
    "coarse_cutoff",
    "anchor_species",
    "sigma",
    "assign_cutoff",
    "n_coarse_features",
    "n_coarse_interactions",
    "learnable_assignment",
    "feature_score",
)


def build_short_branch(**overrides: Any) -> ShortRangeBranch:
    """The ``short`` branch (s = 0): a backbone at 4.5 Å; ``overrides`` go to the branch
    and its backbone (``cutoff``, ``backbone``, ``n_features``, ``n_interactions``,
    ``edge_chunk``, ...)."""
    bad = (_ELECTROSTATICS_KEYS - _EVERY_PART) & set(overrides)
    if bad:
        raise ValueError(f"the short branch has no electrostatics; got {sorted(bad)}")
    return ShortRangeBranch(**overrides)


def build_long_branch(**overrides: Any) -> LongRangeBranch:
    """The ``long`` branch (s = 1): a backbone at 6 Å plus latent-charge electrostatics.

    Keys that name a :class:`LatentChargeEwald` argument (``fixed_charges``,
    ``method``, ``smearing``, ``mesh_spacing``, ...) go to the electrostatics
    head; the rest to the branch and its backbone; ``edge_chunk`` to both.
    """
    electrostatics = dict(overrides.pop("electrostatics", None) or {})
    for key in _ELECTROSTATICS_KEYS & set(overrides):
        electrostatics[key] = overrides[key] if key in _EVERY_PART else overrides.pop(key)
    return LongRangeBranch(electrostatics=electrostatics, **overrides)


def build_muse_branch(**overrides: Any) -> MuSE:
    """The ``muse`` branch: MuSE around the short-range branch (``scalepool train --branch muse``).

    The default backbone is exactly ``build_branch("short")`` (PaiNN at 4.5 Å),
    so the MuSE generator's anchors are s = 0, the bare short branch, and
    s = 1, the same architecture with its coarse hierarchy.

    Overrides named like a :class:`MuSE` argument go to the wrapper
    (``coarse_cutoff=10``, ``n_levels=2``; ``coarse_n_rbf`` sets its
    ``n_rbf``); ``backbone_config`` gives a whole backbone config dict
    (any registered model); every other key goes to the short branch
    (``cutoff``, ``backbone="schnet"``, ``n_features``, ``n_interactions``, ...;
    ``backbone="mace"`` or ``"so3krates"`` with their own option names, see
    :class:`~scalepool.models.MACEBackbone` and :class:`~scalepool.models.SO3kratesBackbone`).
    ``edge_chunk`` goes to the wrapper's coarse levels and to the short branch.
    """
    wrapper = {key: overrides.pop(key) for key in list(overrides) if key in _MUSE_ARGUMENTS}
    wrapper.update({key: overrides[key] for key in _EVERY_PART & set(overrides)})
    if "coarse_n_rbf" in overrides:
        wrapper["n_rbf"] = overrides.pop("coarse_n_rbf")
    config = overrides.pop("backbone_config", None)
    if config is not None:
        overrides = {k: v for k, v in overrides.items() if k not in _EVERY_PART}  # the wrapper has them
        if overrides:
            raise ValueError(f"backbone_config given; also got backbone options {sorted(overrides)}")
        return MuSE(build_model(dict(config)), **wrapper)
    return MuSE(ShortRangeBranch(**overrides), **wrapper)


#: Branch name -> :class:`Branch`, in anchor order (short is s = 0 of both generators).
BRANCHES: dict[str, Branch] = {
    b.name: b
    for b in (
        Branch("short", ShortRangeBranch, build_short_branch, "PaiNN at 4.5 Å (scale s = 0)", "#0072B2"),
        Branch(
            "long",
            LongRangeBranch,
            build_long_branch,
            "PaiNN at 6 Å + latent-charge P3M electrostatics (cutoff generator's s = 1)",
            "#D55E00",
        ),
        Branch("muse", MuSE, build_muse_branch, "MuSE soft coarse-graining around short (MuSE's s = 1)", "#CC79A7"),
    )
}


def build_branch(name: str, **overrides: Any) -> ForceModel:
    """A branch of :data:`BRANCHES` with its default settings, updated by ``overrides``.

    >>> build_branch("long", n_features=16, fixed_charges=True).cutoff
    6.0
    """
    if name not in BRANCHES:
        raise ValueError(f"branch must be one of {sorted(BRANCHES)}, got {name!r}")
    return BRANCHES[name].build(**overrides)


def branch_name(config: dict[str, Any]) -> str:
    """The run name of a model ``config``: ``config["branch"]`` or ``config["name"]`` if
    set, else the catalogue name of its class (``ShortRangeBranch`` -> ``short``), else
    the lower-cased class name, else ``"model"``."""
    by_class = {b.model_class.__name__: b.name for b in BRANCHES.values()}
    name = config.get("branch") or config.get("name") or by_class.get(config.get("class", ""))
    return name or str(config.get("class") or "model").lower()
