"""``scalepool search``, ``scalepool figures`` and ``scalepool reproduce``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..scales import add_scale_arguments
from ._config import ConfigArgumentParser, add_config_argument, save_cli_options


def register(commands) -> None:
    _register_search(commands)
    _register_study(commands)
    _register_readme(commands)
    figures = commands.add_parser(
        "figures",
        help="draw every figure whose study results exist (PNG and PDF)",
        description="Read the study results under --results (one folder per study, as written by studies/*.py "
        "or 'scalepool reproduce') and draw every figure whose results exist into --out, in one shared "
        "style. Figures only read saved results; nothing is recomputed.",
    )
    figures.add_argument(
        "--results", required=True, type=Path, help="results root (holds oracle_table/, ...)"
    )
    figures.add_argument("--out", required=True, type=Path, help="folder for the PNG and PDF files")
    figures.add_argument("--only", nargs="+", default=None, metavar="NAME", help="draw only these figures")
    figures.set_defaults(func=_figures)

    reproduce = commands.add_parser(
        "reproduce",
        help="one command from the OpenMM testbed to the final table, figures and report",
        description="Generate the NaCl testbed (OpenMM); for three model seeds train the real pair (short, "
        "long), the null pair's short_2 (a second seed of short at the same budget) and MuSE (two runs at a "
        "time on 2 cores); write one prediction cache per seed, run every study and the Hessian benchmark, "
        "draw every figure, print the final table and write report.md beside the figures. Training budgets "
        "are epochs (equal optimiser steps for every branch): with --threads 1 a rerun gives the same "
        "numbers; a wall-clock safety stop only marks a run far slower than expected as incomplete in the "
        "report (rerun to finish it). Each stage is skipped when its output exists and is valid, so an "
        "interrupted run continues where it stopped. --quick takes about 12 minutes on 2 CPU cores; the full "
        "run is estimated at 16 hours on 2 cores (full widths, 6,400 steps a run).",
    )
    reproduce.add_argument(
        "--out", required=True, type=Path, help="run folder (data/, runs/, results/, figures/)"
    )
    reproduce.add_argument(
        "--quick", action="store_true", help="small testbed and short training (make demo)"
    )
    reproduce.add_argument(
        "--device", default="cpu", help="torch device for training, prediction and routers"
    )
    reproduce.add_argument("--seed", type=int, default=0, help="base seed of data, models and routers")
    reproduce.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads for training and prediction (default 1: fastest on a shared 2-core machine, "
        "and bit-for-bit reproducible)",
    )
    reproduce.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs trained (and seeds predicted) side by side, one process each (default: CPU cores // "
        "--threads; 1 on CUDA); changes the wall time, not the results",
    )
    reproduce.add_argument(
        "--figures-dir",
        type=Path,
        default=None,
        help="also copy the key figures here (e.g. the repository's figures/)",
    )
    reproduce.add_argument("--force", nargs="+", default=(), metavar="STAGE", help="redo these stages")
    reproduce.add_argument("--no-progress", action="store_true", help="hide progress bars")
    testbeds = reproduce.add_mutually_exclusive_group()
    testbeds.add_argument(
        "--testbeds",
        action="store_true",
        help="after the NaCl stages, run the graphene and chignolin folding benchmarks in OUT/testbeds/ "
        "(data, short/long/MuSE runs, caches, scale tables with the null pair, the folding and "
        "graphene_profiles studies, figures, report.md); --quick takes about 20 minutes on 2 CPU cores",
    )
    testbeds.add_argument(
        "--testbeds-only",
        action="store_true",
        help="run only the testbed benchmarks (skip the NaCl pipeline)",
    )
    add_config_argument(reproduce)
    reproduce.set_defaults(func=_reproduce)


def _register_study(commands) -> None:
    from ..studies import STUDIES, add_study_arguments

    study = commands.add_parser(
        "study",
        help="run one study (tables with provenance into --out); 'scalepool study NAME --help'",
        description="Run one registered study. Each reads prediction caches (--pred) or a dataset and runs "
        "(--data --run), writes CSV/JSON tables into --out and closes it with provenance.json. "
        "studies/NAME.py is the same command.",
    )
    names = study.add_subparsers(dest="study_name", metavar="NAME", required=True)
    for name, entry in STUDIES.items():
        sub = names.add_parser(name, help=entry.description.split(";")[0], description=entry.description)
        add_study_arguments(sub, entry)
        sub.set_defaults(func=_study)


def _study(args: argparse.Namespace) -> int:
    from ..studies import STUDIES, run_study_from_args

    return run_study_from_args(STUDIES[args.study_name], args)


def _register_search(commands) -> None:
    search = commands.add_parser(
        "search",
        help="optuna searches: scale settings on cached predictions, or model scales (pruned training)",
    )
    sub = search.add_subparsers(dest="search_command", metavar="SUBCOMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--storage",
        required=True,
        help="study.db (SQLite, default kind), study.log (journal file, for parallel workers on one machine), "
        "or a URL: sqlite:///path, journal:///path, postgresql://... (workers on several machines)",
    )
    common.add_argument(
        "--study-name", default=None, help="study name (default: scales-<space> or models-<branch>)"
    )
    common.add_argument(
        "--n-trials",
        type=int,
        default=None,
        help="finished trials the study should hold in total (resumes count)",
    )
    common.add_argument(
        "--timeout", type=float, default=None, help="stop starting trials after this many seconds"
    )
    common.add_argument("--seed", type=int, default=0, help="sampler seed (TPE)")
    common.add_argument(
        "--worker", type=int, default=None, help="index of this worker when several share a study"
    )
    common.add_argument(
        "--out", type=Path, default=None, help="folder for best.json, trials.csv, importances.csv"
    )
    common.add_argument("--device", default="cpu", help="torch device")
    common.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker (default 1)")
    common.add_argument(
        "--heartbeat-interval",
        type=int,
        default=None,
        metavar="SECONDS",
        help="RDB storages: each running trial writes a heartbeat this often; a trial silent for the grace "
        "period (a killed worker, on any host) is failed and queued again (default 10 for database servers, "
        "off for SQLite; 0 turns it off)",
    )
    common.add_argument(
        "--grace-period",
        type=int,
        default=None,
        metavar="SECONDS",
        help="seconds without a heartbeat after which a trial counts as dead (default 2 x interval)",
    )

    scales = sub.add_parser(
        "settings",
        aliases=["scales"],
        parents=[common],
        help="fast searches on a prediction cache: pool size/values, refinement, routers",
        description="Search pool sizes and values, refinement settings or router settings on a prediction "
        "cache (objective on val in meV/Å; the best trial is re-run on test). Killed searches resume from "
        "the storage; several workers may share one study.",
    )
    scales.add_argument("--pred", required=True, type=Path, help="prediction cache (scalepool predict)")
    scales.add_argument(
        "--space", choices=("pool", "refine", "router"), default="pool", help="what to search"
    )
    add_scale_arguments(scales, "granularity")
    scales.add_argument("--size-penalty", type=float, default=0.1, help="meV/Å per scale beyond the anchors")
    scales.add_argument("--max-inner", type=int, default=6, help="most scales besides the anchors")
    add_config_argument(scales)
    scales.set_defaults(func=_search_scales, default_trials=200)

    models = sub.add_parser(
        "models",
        parents=[common],
        help="expensive searches over model scales (cutoffs, coarse nodes), pruned per epoch",
        description="Train one branch per trial with suggested constructor arguments, epoch by epoch, reporting "
        "the validation force MAE to a median pruner. Spaces: name=float:low:high[:log], name=int:low:high, "
        "name=cat:a,b (default per branch: short cutoff 3-6 Å, long cutoff 6-12 Å, MuSE coarse cutoff and "
        "coarse nodes). The best trial's run is copied to OUT/best and scored on test.",
    )
    models.add_argument("--data", required=True, type=Path, help="dataset .npz")
    models.add_argument("--branch", default="short", help="branch to build (short, long, muse)")
    models.add_argument("--space", nargs="+", default=None, metavar="SPEC", help="search space specs")
    models.add_argument(
        "--fixed",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="constructor argument every trial shares",
    )
    models.add_argument("--epochs", type=int, default=10, help="epochs per trial")
    models.add_argument("--max-minutes", type=float, default=None, help="training budget per trial")
    models.add_argument("--lr", type=float, default=1e-3)
    models.add_argument("--batch-size", type=int, default=1)
    models.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions")
    add_config_argument(models)
    models.set_defaults(func=_search_models, default_trials=20)


def _threads(args) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _search_scales(args: argparse.Namespace) -> int:
    from ..search import search_scales

    _threads(args)
    n_trials = args.n_trials if args.n_trials is not None or args.timeout else args.default_trials
    record = search_scales(
        args.pred, args.storage, study_name=args.study_name, space=args.space, n_trials=n_trials,
        timeout=args.timeout, seed=args.seed, worker=args.worker, out=args.out, granularity=args.granularity,
        size_penalty=args.size_penalty, max_inner=args.max_inner, device=args.device,
        heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period,
    )  # fmt: skip
    rate = record["trials_per_minute"]
    print(
        f"study {record['study_name']}: {record['n_finished']} finished trials ({record['n_this_call']} now"
        + (f", {rate:.0f}/min" if rate else "")
        + f"); best trial {record['best_trial']}: {record['best_value']:.3f} meV/Å on val"
    )
    print(
        json.dumps(
            {k: v for k, v in record.items() if k.startswith("test_") or k in ("params", "pool")}, indent=1
        )
    )
    return 0


def _search_models(args: argparse.Namespace) -> int:
    from ..models import keep_freed_memory
    from ..search import search_models

    _threads(args)
    keep_freed_memory()  # halves the CPU cost of a model step (scalepool.models._allocator)
    if args.out is None:
        raise ValueError("search models needs --out (trial runs and the best run are kept there)")
    fixed = {}
    for item in args.fixed:
        key, _, value = item.partition("=")
        try:
            fixed[key] = json.loads(value)
        except json.JSONDecodeError:
            fixed[key] = value
    fractions = tuple(float(v) for v in args.split.split(","))
    n_trials = args.n_trials if args.n_trials is not None or args.timeout else args.default_trials
    record = search_models(
        args.data, args.branch, args.storage, args.out, study_name=args.study_name, space=args.space,
        n_trials=n_trials, timeout=args.timeout, epochs=args.epochs, seed=args.seed, worker=args.worker,
        fixed=fixed, max_minutes=args.max_minutes,
        heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period,
        train_options={"lr": args.lr, "batch_size": args.batch_size, "split_fractions": fractions, "device": args.device},
    )  # fmt: skip
    print(json.dumps(record, indent=1, default=str))
    return 0


def _figures(args: argparse.Namespace) -> int:
    from ..plots import FIGURES, make_figures

    unknown = sorted(set(args.only or ()) - set(FIGURES))
    if unknown:
        raise ValueError(f"unknown figure(s) {unknown}; figures are {sorted(FIGURES)}")
    if not args.results.is_dir():
        raise FileNotFoundError(f"results folder not found: {args.results}")
    written = make_figures(args.results, args.out, args.only)
    for name, paths in written.items():
        print(f"{name}: " + ", ".join(str(p) for p in paths))
    missing = [name for name in (args.only or FIGURES) if name not in written]
    if missing:
        print(f"no results for: {', '.join(missing)}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from ..models import keep_freed_memory
    from ..studies import reproduce

    keep_freed_memory()  # halves the CPU cost of a model step (scalepool.models._allocator)
    try:
        reproduce(
            args.out, quick=args.quick, device=args.device, seed=args.seed, threads=args.threads,
            figures_dir=args.figures_dir, force=args.force, progress=not args.no_progress, jobs=args.jobs,
            testbeds=args.testbeds, testbeds_only=args.testbeds_only,
        )  # fmt: skip
    except KeyboardInterrupt:
        print(
            f"scalepool reproduce: interrupted; run the same command again to continue in {args.out}",
            file=sys.stderr,
        )
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    """These subcommands alone (the main entry point registers them beside the others)."""
    parser = argparse.ArgumentParser(prog="scalepool")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=ConfigArgumentParser
    )
    register(commands)
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        if code in (0, 130):
            save_cli_options(args)
        return code
    except (ValueError, FileNotFoundError) as err:
        print(f"scalepool {args.command}: error: {err}", file=sys.stderr)
        return 2


def _register_readme(commands) -> None:
    readme = commands.add_parser(
        "readme",
        help="check or rewrite the README's generated result blocks from committed results",
        description="The README's result blocks are generated from committed results (results/quick/, "
        "results/memory/final_*.csv, results/backbones_small/, results/testbeds_quick/, results/precision/, read from the "
        "README's folder). --check exits 1 when a block differs from what its files generate (2 when they are "
        "missing); --write rewrites them (with --run, after copying a finished 'scalepool reproduce' run's "
        "report and tables into --results).",
    )
    action = readme.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", action="store_true", help="exit 1 when a generated block is stale")
    action.add_argument("--write", action="store_true", help="rewrite the generated blocks")
    readme.add_argument("--readme", type=Path, default=_REPO / "README.md", help="README to check or rewrite")
    readme.add_argument(
        "--results",
        type=Path,
        default=None,
        help="committed quick-run results folder (default: results/quick/ beside the README)",
    )
    readme.add_argument(
        "--run", type=Path, default=None, help="with --write: export this run into --results first"
    )
    readme.set_defaults(func=_readme)


_REPO = Path(__file__).resolve().parents[2]


def _readme(args: argparse.Namespace) -> int:
    from ..studies import export_results, stale_blocks, write_readme

    if args.check:
        if args.run is not None:
            raise ValueError("--run goes with --write")
        stale = stale_blocks(args.readme, args.results)
        if stale:
            print(
                f"{args.readme}: generated block(s) {stale} differ from the committed results; "
                "run 'scalepool readme --write'",
                file=sys.stderr,
            )
            return 1
        print(f"{args.readme}: generated blocks match the committed results")
        return 0
    if args.run is not None:
        args.results = args.results or args.readme.parent / "results" / "quick"
        names = export_results(args.run, args.results)
        print(f"exported {len(names)} file(s) from {args.run} into {args.results}")
    changed = write_readme(args.readme, args.results)
    print(f"{args.readme}: rewrote {changed}" if changed else f"{args.readme}: already up to date")
    return 0
