"""The study registry and the command line shared by every ``studies/<name>.py`` script."""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..provenance import is_complete


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
    """One study: ``run(preds, out, *, seeds, device, **options) -> results folder``.

    ``parameters(options, seeds)`` is what the provenance records and what a
    resumed pipeline compares before skipping the study.
    """

    name: str
    description: str
    run: Callable[..., Path]
    options: dict[str, Option]
    default_seeds: tuple[int, ...] = (0,)
    quick_seeds: tuple[int, ...] | None = None

    def defaults(self, quick: bool = False) -> dict[str, Any]:
        return {key: option.value(quick) for key, option in self.options.items()}

    def seeds(self, quick: bool = False) -> tuple[int, ...]:
        return self.quick_seeds if quick and self.quick_seeds is not None else self.default_seeds


#: name -> Study, filled by :func:`register`.
STUDIES: dict[str, Study] = {}


def register(study: Study) -> Study:
    STUDIES[study.name] = study
    return study


def parameters(name: str, preds, options: dict, seeds, device: str) -> dict[str, Any]:
    """The parameters a study's provenance records (inputs are recorded by checksum)."""
    return {
        "study": name,
        "options": dict(sorted(options.items())),
        "seeds": list(seeds),
        "n_caches": len(preds),
    }


def build_parser(study: Study) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"studies/{study.name}.py",
        description=study.description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--pred",
        required=True,
        nargs="+",
        type=Path,
        metavar="PRED.npz",
        help="prediction cache(s) of 'scalepool predict'; several are models trained with different seeds",
    )
    parser.add_argument("--out", required=True, type=Path, help=f"results folder, e.g. results/{study.name}")
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=None, help=f"seeds (default {list(study.default_seeds)})"
    )
    parser.add_argument("--device", default="cpu", help="torch device for routers and soft updates")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (one is fastest for the small router networks)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="the smaller settings of 'scalepool reproduce --quick'"
    )
    parser.add_argument(
        "--skip-existing", action="store_true", help="do nothing when --out already holds this exact result"
    )
    for key, option in study.options.items():
        flag = "--" + key.replace("_", "-")
        kwargs = {"type": option.type, "default": None, "help": f"{option.help} (default {option.default}"}
        kwargs["help"] += f", quick {option.quick})" if option.quick is not None else ")"
        if option.choices:
            kwargs["choices"] = option.choices
        if option.nargs:
            kwargs["nargs"] = option.nargs
        if option.type is bool:
            kwargs = {"action": argparse.BooleanOptionalAction, "default": None, "help": option.help}
        parser.add_argument(flag, **kwargs)
    return parser


def run_study(
    name: str,
    preds,
    out,
    *,
    seeds=None,
    device: str = "cpu",
    quick: bool = False,
    skip_existing: bool = False,
    **overrides,
) -> tuple[Path, bool]:
    """Run one registered study; ``(results folder, ran)``, ``ran`` False when skipped."""
    study = STUDIES[name]
    options = study.defaults(quick)
    unknown = set(overrides) - set(options)
    if unknown:
        raise ValueError(f"study {name} has no option(s) {sorted(unknown)}; it takes {sorted(options)}")
    options.update({k: v for k, v in overrides.items() if v is not None})
    seeds = tuple(seeds) if seeds else study.seeds(quick)
    preds = [Path(p) for p in ([preds] if isinstance(preds, (str, Path)) else preds)]
    out = Path(out)
    params = parameters(name, preds, options, seeds, device)
    if skip_existing and is_complete(out, params, preds):
        return out, False
    study.run(preds, out, seeds=seeds, device=device, parameters=params, **options)
    return out, True


def study_main(name: str, argv: list[str] | None = None) -> int:
    """Command line of ``studies/<name>.py``."""
    from . import _all  # noqa: F401  (registers every study)
    from ._common import set_threads

    study = STUDIES[name]
    args = build_parser(study).parse_args(argv)
    set_threads(args.threads)
    overrides = {key: getattr(args, key) for key in study.options}
    start = time.perf_counter()
    try:
        out, ran = run_study(
            name,
            args.pred,
            args.out,
            seeds=args.seeds,
            device=args.device,
            quick=args.quick,
            skip_existing=args.skip_existing,
            **overrides,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"{name}: error: {err}")
        return 2
    verb = "wrote" if ran else "up to date:"
    print(f"{name}: {verb} {out} ({time.perf_counter() - start:.1f} s)")
    return 0
