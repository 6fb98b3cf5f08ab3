"""``scalepool mix`` and ``scalepool evaluate``: a deployable mixed model, and honest errors of any model file.

``mix`` builds a :class:`~scalepool.models.MixedForceModel` from the two anchor
runs of a prediction cache, warm-starts its router on the cache's train split
(:func:`~scalepool.scales.fit_router`), refines it end to end through the
model's own conservative forces on the train frames of the dataset
(:func:`~scalepool.scales.fit_mixed_model`) and saves it with
:func:`~scalepool.models.save_model`, plus a record ``MODEL.pt.json`` (runs,
dataset, split, fit metrics) that ``evaluate`` reads the split from.

``evaluate`` runs any saved model file (a branch's ``best.pt`` or a mixed
model) on one split of a dataset and writes its force errors (meV/Å, MAE over
force components) as JSON.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

#: Suffix of the record written beside a mixed model file.
RECORD_SUFFIX = ".json"
SPLITS = ("train", "val", "test", "all")


def record_path(model_path: Path) -> Path:
    """``mixed.pt`` -> ``mixed.pt.json``: the fit record beside a model file."""
    return Path(str(model_path) + RECORD_SUFFIX)


def register(commands) -> None:
    mix = commands.add_parser(
        "mix",
        help="fit a deployable mixed model (router between two branches) end to end, train split only",
        description="Build a MixedForceModel from the two anchor runs of a prediction cache (anchor 0 = "
        "s=0, anchor 1 = s=1), warm-start its router on the cache's train split, then fit the router and a "
        "per-species energy offset end to end on the model's own forces (-dE/dx, the forces MD uses) on the "
        "train frames of the dataset. Branches stay frozen. Writes OUT and OUT.json (runs, split, fit "
        "metrics); evaluate it with 'scalepool evaluate --model OUT'.",
    )
    mix.add_argument("--pred", required=True, type=Path, help="prediction cache of 'scalepool predict'")
    mix.add_argument(
        "--run",
        type=Path,
        action="append",
        default=None,
        help="run directory of anchor 0, then of anchor 1 (default: the runs the cache records)",
    )
    mix.add_argument("--out", required=True, type=Path, help="mixed model file (.pt), written atomically")
    mix.add_argument("--data", type=Path, default=None, help="dataset (default: the one the cache records)")
    mix.add_argument("--steps", type=int, default=200, help="end-to-end optimiser steps (default 200)")
    mix.add_argument(
        "--epochs", type=int, default=None, help="passes over the train frames (overrides --steps)"
    )
    mix.add_argument("--frames-per-step", type=int, default=1, help="frames per optimiser step (default 1)")
    mix.add_argument("--lr", type=float, default=1e-3, help="router learning rate (default 1e-3)")
    mix.add_argument(
        "--delta-lr", type=float, default=1e-2, help="energy-offset learning rate, eV (default 1e-2)"
    )
    mix.add_argument("--no-delta", action="store_true", help="keep the per-species energy offset at zero")
    mix.add_argument("--router-steps", type=int, default=300, help="warm-start steps on the cache (0: none)")
    mix.add_argument("--hidden", type=int, default=16, help="router MLP width (default 16; 0: linear)")
    mix.add_argument("--layers", type=int, default=2, help="router MLP hidden layers (default 2)")
    mix.add_argument("--monitor-frames", type=int, default=16, help="train frames for before/after errors")
    mix.add_argument("--seed", type=int, default=0, help="router initialisation and frame order (default 0)")
    mix.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    mix.add_argument("--threads", type=int, default=None, help="torch CPU threads (1: bitwise reproducible)")
    mix.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    mix.set_defaults(func=_mix)

    evaluate = commands.add_parser(
        "evaluate",
        help="force errors (meV/Å) of any saved model file on one split of a dataset, as JSON",
        description="Run a model file (a run's best.pt or a mixed model) on a split of a dataset and write "
        "overall and ion (Na+, Cl-) force MAE and RMSE (meV/Å, over force components) with the split used. "
        "The split fractions default to those recorded with the model (MODEL.json of 'scalepool mix', or "
        "the run's config.json); otherwise --split-fractions is required.",
    )
    evaluate.add_argument(
        "--model", required=True, type=Path, help="model file (scalepool.models.save_model)"
    )
    evaluate.add_argument("--data", required=True, type=Path, help="dataset .npz")
    evaluate.add_argument("--split", choices=SPLITS, default="test", help="which block (default test)")
    evaluate.add_argument(
        "--split-fractions", type=float, nargs=3, default=None, metavar=("TRAIN", "VAL", "TEST"),
        help="time-block split fractions (default: recorded with the model)",
    )  # fmt: skip
    evaluate.add_argument(
        "--split-gap", type=int, default=None, help="frames between blocks (default: recorded, else 0)"
    )
    evaluate.add_argument("--json", required=True, type=Path, help="output JSON file")
    evaluate.add_argument("--batch-size", type=int, default=1, help="frames per forward pass (default 1)")
    evaluate.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    evaluate.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    evaluate.set_defaults(func=_evaluate)


def _setup(args) -> None:
    import torch

    from ..models import keep_freed_memory
    from ..train import resolve_device

    resolve_device(args.device)  # fail before loading anything
    keep_freed_memory()
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)


def _load_model(path: Path, device: str):
    from ..models import load_model

    try:
        return load_model(path, map_location=device)
    except (RuntimeError, KeyError, EOFError, OSError) as err:  # torch.load / state-dict errors
        raise ValueError(f"cannot load model file {path}: {err}") from err


# ---------------------------------------------------------------------------------------- mix
def _anchor_runs(cache, runs: list[Path] | None, pred: Path) -> list[Path]:
    """The run directories of anchors 0 and 1, checked against what the cache records."""
    names, recorded = list(cache.branches), cache.meta.get("runs")
    if not recorded or len(recorded) != len(names):
        if runs is None:
            raise ValueError(f"{pred} records no run directories; pass --run RUN0 --run RUN1")
        expected = None
    else:
        expected = [Path(recorded[names.index(anchor)]) for anchor in cache.anchors]
    if runs is None:
        return expected
    if len(runs) != 2:
        raise ValueError(f"--run must be given twice (anchor 0 then anchor 1), got {len(runs)}")
    if expected is not None:
        for k, (run, want) in enumerate(zip(runs, expected, strict=True)):
            if run.resolve() != want.resolve():
                raise ValueError(
                    f"--run {run} is not anchor {k} of {pred}: the cache's anchors are "
                    f"{cache.anchors[0]!r} (s=0, run {expected[0]}) and {cache.anchors[1]!r} "
                    f"(s=1, run {expected[1]}); pass those runs in that order"
                )
    return runs


def _mix(args: argparse.Namespace) -> int:
    import numpy as np

    from .._files import write_json
    from ..data import FrameSet, PredictionCache
    from ..models import MixedForceModel, save_model
    from ..provenance import git_commit, library_versions
    from ..scales import fit_mixed_model, fit_router
    from ..train import BEST, read_run_config

    _setup(args)
    cache = PredictionCache.load(args.pred)
    runs = _anchor_runs(cache, args.run, args.pred)
    configs = [read_run_config(run) for run in runs]
    for k, (run, config) in enumerate(zip(runs, configs, strict=True)):
        branch = cache.meta.get("run_branches", {}).get(cache.anchors[k])
        if branch is not None and config["branch"] != branch:
            raise ValueError(f"run {run} trained branch {config['branch']!r}, but anchor {k} is {branch!r}")
        if not (run / BEST).exists():
            raise FileNotFoundError(f"run {run} has no {BEST}")
    data = args.data or cache.meta.get("dataset_path")
    if data is None:
        raise ValueError(f"{args.pred} records no dataset path; pass --data")
    frames = FrameSet.load(data)
    checksum = frames.checksum()
    for source, recorded in [(args.pred, cache.meta.get("dataset_checksum"))] + [
        (run, config["dataset"]["checksum"]) for run, config in zip(runs, configs, strict=True)
    ]:
        if recorded is not None and recorded != checksum:
            raise ValueError(
                f"{data} (checksum {checksum[:12]}...) is not the dataset of {source} ({recorded[:12]}...)"
            )
    splits = {(tuple(c["split"]["fractions"]), int(c["split"]["gap"])) for c in configs}
    if "split_fractions" in cache.meta:
        splits.add((tuple(cache.meta["split_fractions"]), int(cache.meta.get("split_gap", 0))))
    if len(splits) != 1:
        raise ValueError(f"the runs and the cache disagree on the split: {sorted(splits)}")
    (fractions, gap) = splits.pop()
    train_index = frames.split_indices(fractions, gap)["train"]
    cached_train = np.asarray(cache.meta.get("frame_index", np.arange(cache.n_frames)))[cache.frames("train")]
    if not np.array_equal(cached_train, train_index):
        raise ValueError(
            f"the cache's train frames differ from the train block of split {fractions} gap {gap}"
        )

    branches = [_load_model(run / BEST, args.device) for run in runs]
    model = MixedForceModel(*branches, hidden=args.hidden, layers=args.layers).to(args.device)
    router = None
    if args.router_steps > 0:
        router = fit_router(model, cache.select("train"), steps=args.router_steps, seed=args.seed)
    result = fit_mixed_model(
        model, frames, train_index, split_fractions=fractions, split_gap=gap, steps=args.steps,
        epochs=args.epochs, frames_per_step=args.frames_per_step, lr=args.lr, delta_lr=args.delta_lr,
        train_delta=not args.no_delta, monitor_frames=args.monitor_frames, seed=args.seed,
        progress=not args.no_progress,
    )  # fmt: skip
    path = save_model(model, args.out)
    record = {
        "kind": "scalepool mixed model",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": str(path.resolve()),
        "anchors": list(cache.anchors),
        "runs": [str(run.resolve()) for run in runs],
        "prediction_cache": str(args.pred.resolve()),
        "dataset_path": str(Path(data).resolve()),
        "dataset_checksum": checksum,
        "split_fractions": None if fractions is None else list(fractions),
        "split_gap": gap,
        "settings": {k: v for k, v in vars(args).items() if k != "func" and not isinstance(v, (Path, list))},
        "router_warm_start": router,
        "fit": result.as_dict(),
        "versions": library_versions(),
        "git_commit": git_commit(),
    }
    write_json(record_path(path), record)
    a0, a1 = cache.anchors
    print(
        f"train force MAE on {len(result.monitor_index)} train frames (meV/Å): {a0} {result.train_mae_branch0:.2f}, "
        f"{a1} {result.train_mae_branch1:.2f}, mixed {result.train_mae_initial:.2f} (cache warm start) -> "
        f"{result.train_mae_final:.2f} after {result.steps} end-to-end steps "
        f"({result.seconds_per_step:.2f} s/step); mean s {result.mean_scale_final:.3f}"
    )
    if result.train_mae_final >= result.best_branch_mae:
        print(
            f"note: the mixed model does not beat the better branch on the train frames ({result.best_branch_mae:.2f})"
        )
    print(
        f"wrote {path} and {record_path(path)}; test it with: scalepool evaluate --model {path} --data {data}"
    )
    return 0


# ----------------------------------------------------------------------------------- evaluate
def _recorded_split(model_path: Path) -> tuple[tuple[float, ...], int, str | None, str] | None:
    """``(fractions, gap, dataset checksum, source)`` recorded with a model file, or None."""
    import json

    from ..train import CONFIG, read_run_config

    record = record_path(model_path)
    if record.exists():
        data = json.loads(record.read_text())
        if "split_fractions" in data:
            return (
                tuple(data["split_fractions"]),
                int(data.get("split_gap", 0)),
                data.get("dataset_checksum"),
                str(record),
            )
    if (model_path.parent / CONFIG).exists():
        config = read_run_config(model_path.parent)
        split = config["split"]
        return (
            tuple(split["fractions"]),
            int(split["gap"]),
            config["dataset"]["checksum"],
            str(model_path.parent / CONFIG),
        )
    return None


def _evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from .._files import write_json
    from ..data import FrameSet
    from ..metrics import force_errors
    from ..train import predict_forces

    _setup(args)
    if not args.model.exists():
        raise FileNotFoundError(f"model file not found: {args.model}")
    frames = FrameSet.load(args.data)
    checksum = frames.checksum()
    recorded = _recorded_split(args.model)
    if args.split_fractions is not None:
        fractions, gap, source = tuple(args.split_fractions), args.split_gap or 0, "command line"
    elif args.split == "all":
        fractions, gap, source = None, None, "none needed (all frames)"
    elif recorded is None:
        raise ValueError(f"no split is recorded with {args.model}; pass --split-fractions TRAIN VAL TEST")
    else:
        fractions, gap, trained_on, source = recorded
        gap = gap if args.split_gap is None else args.split_gap
        if trained_on is not None and trained_on != checksum:
            raise ValueError(
                f"{args.model} was fitted on another dataset (checksum {trained_on[:12]}..., {args.data} has "
                f"{checksum[:12]}...): its recorded split does not apply; pass --split-fractions"
            )
    index = (
        np.arange(frames.n_frames)
        if args.split == "all"
        else frames.split_indices(fractions, gap)[args.split]
    )
    model = _load_model(args.model, args.device)
    dtype = next(model.parameters()).dtype
    pred = predict_forces(model, frames, index, batch_size=args.batch_size, device=args.device, dtype=dtype)
    table = force_errors(pred["forces"].astype(np.float64), frames.forces[index], frames.numbers)
    per_species = {
        name: float(table.loc[name, "mae_meV_A"]) for name in table.index if name not in ("overall", "ions")
    }
    result = {
        "model": str(args.model.resolve()),
        "model_class": model.config.get("class"),
        "dataset": str(args.data.resolve()),
        "dataset_checksum": checksum,
        "split": args.split,
        "split_fractions": None if fractions is None else list(fractions),
        "split_gap": gap,
        "split_source": source,
        "frames": [int(index[0]), int(index[-1]) + 1],
        "n_frames": int(len(index)),
        "n_atoms": int(frames.n_atoms),
        "units": "meV/Å; MAE and RMSE over force components",
        "overall_mae": float(table.loc["overall", "mae_meV_A"]),
        "overall_rmse": float(table.loc["overall", "rmse_meV_A"]),
        "ion_mae": float(table.loc["ions", "mae_meV_A"]),
        "ion_rmse": float(table.loc["ions", "rmse_meV_A"]),
        "species_mae": per_species,
        "device": str(args.device),
        "dtype": str(dtype).removeprefix("torch."),
    }
    write_json(args.json, result)
    print(
        f"{args.model.name} ({result['model_class']}) on the {args.split} split of {args.data.name} "
        f"(frames {index[0]}..{index[-1]}, {len(index)} frames; split {fractions} gap {gap} from "
        f"{source}): force MAE {result['overall_mae']:.2f} meV/Å, ions {result['ion_mae']:.2f} meV/Å -> {args.json}"
    )
    return 0
