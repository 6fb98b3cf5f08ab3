"""What a study is: its options and its entry point (a leaf module every study imports)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..scales import SCALE_FIELDS


@dataclasses.dataclass(frozen=True)
class Option:
    """A study-specific setting: its type, full and quick defaults, help text."""

    type: type
    default: Any
    quick: Any = None
    help: str = ""
    choices: tuple | None = None
    nargs: str | None = None

    def value(self, quick: bool) -> Any:
        return self.quick if quick and self.quick is not None else self.default


@dataclasses.dataclass(frozen=True)
class Study:
    """One study: ``run(inputs, out, *, seeds, device, parameters, **options) -> results folder``.

    ``parameters(options, seeds)`` is what the provenance records and what a
    resumed pipeline compares before skipping the study.
    """

    name: str
    description: str
    run: Callable[..., Path]
    options: dict[str, Option]
    default_seeds: tuple[int, ...] = (0,)
    quick_seeds: tuple[int, ...] | None = None
    #: what the study reads: ``"pred"`` (prediction caches, ``--pred``) or ``"runs"`` (a
    #: dataset and trained runs, ``--data`` and ``--run``; ``run`` then gets ``(data, runs)``)
    #: or ``"data"`` (one dataset, ``--data``, for studies that train their own models)
    inputs: str = "pred"

    def defaults(self, quick: bool = False) -> dict[str, Any]:
        return {key: option.value(quick) for key, option in self.options.items()}

    def seeds(self, quick: bool = False) -> tuple[int, ...]:
        return self.quick_seeds if quick and self.quick_seeds is not None else self.default_seeds


def scale_options(*names: str) -> dict[str, Option]:
    """Study options of scale-layer settings, from :data:`scalepool.scales.SCALE_FIELDS`
    (defaults are the :class:`~scalepool.scales.ScaleSettings` attributes, stated once)."""
    return {
        name: Option(field.type, field.default(name), field.quick, field.help, field.choices)
        for name, field in ((n, SCALE_FIELDS[n]) for n in names)
    }
