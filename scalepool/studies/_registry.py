"""The study registry and the one command line of every study (``scalepool study NAME``,
and the ``studies/<name>.py`` scripts over it)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..provenance import is_complete
from ..scales import SCALE_FIELDS, ScaleSettings
from . import (
    _backbone_study,
    _branch_comparison,
    _deployable_study,
    _folding_study,
    _generator_swap,
    _graphene_study,
    _hessian_study,
    _oracle_table,
    _pool_refinement,
    _router_study,
    _search_study,
)
from ._study import Study

#: name -> Study, in the order ``scalepool reproduce`` runs them (listed here, not
#: registered by import side effects).
STUDIES: dict[str, Study] = {
    module.STUDY.name: module.STUDY
    for module in (
        _branch_comparison,
        _oracle_table,
        _pool_refinement,
        _router_study,
        _deployable_study,
        _generator_swap,
        _search_study,
        _hessian_study,
        _backbone_study,
        _folding_study,
        _graphene_study,
    )
}


def parameters(name: str, preds, options: dict, seeds, device: str) -> dict[str, Any]:
    """The parameters a study's provenance records (inputs are recorded by checksum)."""
    return {
        "study": name,
        "options": dict(sorted(options.items())),
        "seeds": list(seeds),
        "n_caches": len(preds),
    }


def build_parser(study: Study) -> argparse.ArgumentParser:
    """The parser of ``studies/<name>.py`` (the same flags as ``scalepool study NAME``)."""
    parser = argparse.ArgumentParser(
        prog=f"studies/{study.name}.py",
        description=study.description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_study_arguments(parser, study)
    return parser


def add_study_arguments(parser: argparse.ArgumentParser, study: Study) -> None:
    """Input, output, seed, device and option flags of ``study`` (options from its :class:`Option` s)."""
    if study.inputs == "runs":
        parser.add_argument("--data", required=True, type=Path, help="dataset .npz the runs were trained on")
        parser.add_argument(
            "--run", required=True, type=Path, action="append", help="run directory or model file; repeatable"
        )
    elif study.inputs == "data":  # the study trains its own models
        parser.add_argument("--data", required=True, type=Path, help="dataset .npz the study trains on")
    else:
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
    parser.add_argument("--device", default="cpu", help="torch device for routers, soft updates and models")
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
    ScaleSettings.validated(**{k: v for k, v in options.items() if k in SCALE_FIELDS})  # checked once, here
    seeds = tuple(seeds) if seeds else study.seeds(quick)
    if study.inputs == "runs":  # (dataset, runs): the dataset's checksum is the recorded input
        data, runs = preds
        preds, files = (Path(data), [Path(r) for r in runs]), [Path(data)]
    elif study.inputs == "data":  # one dataset .npz
        preds = files = [Path(preds)]
    else:
        preds = files = [Path(p) for p in ([preds] if isinstance(preds, (str, Path)) else preds)]
    out = Path(out)
    params = parameters(name, files, options, seeds, device)
    if skip_existing and is_complete(out, params, files):
        return out, False
    study.run(preds, out, seeds=seeds, device=device, parameters=params, **options)
    return out, True


def run_study_from_args(study: Study, args: argparse.Namespace) -> int:
    """Run ``study`` with parsed flags (:func:`add_study_arguments`); prints where it wrote."""
    from ._common import set_threads

    set_threads(args.threads)
    overrides = {key: getattr(args, key) for key in study.options}
    if study.inputs == "runs":
        inputs = (args.data, args.run)
    else:
        inputs = args.data if study.inputs == "data" else args.pred
    start = time.perf_counter()
    try:
        out, ran = run_study(
            study.name,
            inputs,
            args.out,
            seeds=args.seeds,
            device=args.device,
            quick=args.quick,
            skip_existing=args.skip_existing,
            **overrides,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"{study.name}: error: {err}", file=sys.stderr)
        return 2
    verb = "wrote" if ran else "up to date:"
    print(f"{study.name}: {verb} {out} ({time.perf_counter() - start:.1f} s)")
    return 0


def study_main(name: str, argv: list[str] | None = None) -> int:
    """Command line of ``studies/<name>.py``: the same as ``scalepool study NAME``."""
    study = STUDIES[name]
    return run_study_from_args(study, build_parser(study).parse_args(argv))
