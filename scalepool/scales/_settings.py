"""``ScaleSettings``: the scale layer's settings, their defaults, checks and help stated once.

The scale table, every study that routes, and the ``table`` and
``search settings`` commands take these settings; their signatures default to
the class attributes (``granularity: str = ScaleSettings.granularity``), the
studies' options and the command-line flags are generated from
:data:`SCALE_FIELDS`, and :meth:`ScaleSettings.validated` checks a request
once, with a message naming the setting.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ._oracle import LOSSES
from ._samples import GRANULARITIES


@dataclasses.dataclass(frozen=True)
class ScaleSettings:
    """Settings of routing, refinement and routers.

    Attributes
    ----------
    granularity : samples sharing one scale: ``"frame"``, ``"ion"`` (each atom
        joins its nearest ion) or ``"atom"``
    loss : ``"mae"`` or ``"mse"``, minimised by oracles, refinement and routers
    tol : relative loss gain on val needed to insert a scale into the pool
    max_size : largest refined pool (anchors included)
    proposals : candidate scales of each refinement round, ``+``-joined kinds
        (``"midpoints"``, ``"quantiles"``)
    router_steps : Adam steps per learned router
    """

    granularity: str = "atom"
    loss: str = "mae"
    tol: float = 1e-3
    max_size: int = 16
    proposals: str = "midpoints"
    router_steps: int = 300

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {list(GRANULARITIES)}, got {self.granularity!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {list(LOSSES)}, got {self.loss!r}")
        if not self.tol >= 0:
            raise ValueError(f"tol must be a non-negative relative gain, got {self.tol}")
        if int(self.max_size) < 2:
            raise ValueError(f"max_size must be at least 2 (the anchors), got {self.max_size}")
        kinds = [k for k in str(self.proposals).split("+") if k]
        if not kinds or set(kinds) - {"midpoints", "quantiles"}:
            raise ValueError(
                f"proposals must join 'midpoints' and/or 'quantiles' with '+', got {self.proposals!r}"
            )
        if int(self.router_steps) < 1:
            raise ValueError(f"router_steps must be positive, got {self.router_steps}")

    @classmethod
    def validated(cls, **settings: Any) -> ScaleSettings:
        """Check settings once (unknown names included) and return them as an object."""
        unknown = set(settings) - set(SCALE_FIELDS)
        if unknown:
            raise ValueError(f"unknown scale setting(s) {sorted(unknown)}; known: {sorted(SCALE_FIELDS)}")
        return cls(**settings)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ScaleField:
    """One setting's type, choices, help and the value of the quick run (``None``: the default)."""

    type: type
    help: str
    choices: tuple | None = None
    quick: Any = None

    def default(self, name: str) -> Any:
        return getattr(ScaleSettings, name)


#: name -> how studies and command lines present it (defaults: the ScaleSettings attributes)
SCALE_FIELDS: dict[str, ScaleField] = {
    "granularity": ScaleField(
        str, "samples sharing one scale ('ion': each atom joins its nearest ion)", GRANULARITIES
    ),
    "loss": ScaleField(str, "loss minimised by oracles, refinement and routers", LOSSES),
    "tol": ScaleField(float, "relative gain on val needed to insert a scale"),
    "max_size": ScaleField(int, "largest refined pool (anchors included)"),
    "proposals": ScaleField(
        str, "candidate scales per refinement round: midpoints, quantiles or midpoints+quantiles"
    ),
    "router_steps": ScaleField(int, "optimiser steps per learned router", quick=120),
}


def add_scale_arguments(parser: argparse.ArgumentParser, *names: str) -> None:
    """``--granularity``, ``--loss``... flags for ``names`` (all when empty), defaults from
    :class:`ScaleSettings`."""
    for name in names or tuple(SCALE_FIELDS):
        field = SCALE_FIELDS[name]
        default = field.default(name)
        kwargs: dict[str, Any] = {
            "type": field.type,
            "default": default,
            "help": f"{field.help} (default {default})",
        }
        if field.choices:
            kwargs["choices"] = field.choices
        parser.add_argument("--" + name.replace("_", "-"), **kwargs)
