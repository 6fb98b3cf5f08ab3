"""``scalepool train`` and ``scalepool predict``: fit force branches, write the prediction cache."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..models import BRANCHES
from ..train import PRECISIONS, TrainSettings, add_train_arguments, settings_from_args
from ._config import add_config_argument


def _fractions(text: str) -> tuple[float, float, float] | str:
    if text in ("time", "random"):  # --split random: the split mode, with the default fractions
        return text
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0 or sum(values) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected three non-negative fractions like 0.8,0.1,0.1, got {text!r}"
        )
    return values


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def register(commands) -> None:
    train = commands.add_parser(
        "train",
        help="train one force branch (short range, long range or MuSE) with checkpoints and resume",
        description="Train a force branch on the training block of a time-block split, validating on the "
        "validation block every epoch. RUN receives checkpoint.pt, best.pt, last.pt, history.csv and "
        "config.json. Repeating the command on an interrupted RUN resumes it exactly where it stopped; "
        "different settings or another dataset are refused.",
    )
    train.add_argument(
        "--branch",
        required=True,
        choices=list(BRANCHES),
        help="which branch to build: " + "; ".join(f"{b.name}: {b.description}" for b in BRANCHES.values()),
    )
    train.add_argument(
        "--data", required=True, type=Path,
        help="dataset: .npz (scalepool data nacl) or any file scalepool reads (extxyz, traj, db, OUTCAR, "
        "vasprun.xml, TRR/H5MD with a PDB topology beside it); frames may differ in atoms",
    )  # fmt: skip
    add_data_key_arguments(train)
    train.add_argument(
        "--valid-data", type=Path, default=None,
        help="validation frames from their own file (needs --test-data): train on all of --data, validate on "
        "this file, keep --test-data as the test block; --split is then ignored",
    )  # fmt: skip
    train.add_argument("--test-data", type=Path, default=None, help="test frames from their own file")
    train.add_argument("--out", required=True, type=Path, help="run directory (created or resumed)")
    add_train_arguments(train, _fractions)  # --epochs, --lr, --split...: TrainSettings' fields and defaults
    train.add_argument(
        "--cutoff", type=float, default=None, help="branch cutoff in Å (default: the branch's)"
    )
    train.add_argument(
        "--model-option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="other branch constructor argument (JSON value), repeatable",
    )
    train.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    train.add_argument("--no-resume", action="store_true", help="refuse to continue an existing run in --out")
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in --out even if it holds another run's files (best.pt, last.pt, "
        "history.csv, config.json, checkpoint.pt), replacing them; without it such a folder is refused "
        "unless its checkpoint.pt can be resumed",
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write the history.csv scalars to RUN/tensorboard for TensorBoard (needs tensorboard)",
    )
    add_config_argument(train)
    train.set_defaults(func=_train)

    predict = commands.add_parser(
        "predict",
        help="predict all frames with trained branches and write the prediction cache (.npz)",
        description="Write forces_ref, forces_<branch> per run, numbers, cell, positions, split (0 train, "
        "1 val, 2 test, the runs' training split: time blocks, or the frames a random split recorded) and "
        "meta to one .npz (a ragged dataset gives a ragged cache: flat (T, 3) arrays with n_atoms and pbc), "
        "then print test-split force errors (meV/Å) of each branch beside a constant per-species baseline.",
    )
    predict.add_argument(
        "--run",
        required=True,
        type=Path,
        action="append",
        help="run directory of scalepool train; repeat for each branch (first is anchor 0)",
    )
    predict.add_argument("--data", required=True, type=Path, help="the dataset the runs were trained on")
    add_data_key_arguments(predict)
    predict.add_argument("--out", required=True, type=Path, help="prediction cache .npz")
    predict.add_argument("--model-file", choices=["best.pt", "last.pt"], default="best.pt")
    predict.add_argument(
        "--new-data", action="store_true",
        help="--data is a new dataset the runs never saw: no dataset check and no training split; every frame "
        "is written as a test row",
    )  # fmt: skip
    predict.add_argument("--batch-size", type=int, default=1)
    predict.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    predict.add_argument(
        "--precision", choices=PRECISIONS, default="float32",
        help="forward precision: float32 (default), or bf16-mixed / fp16-mixed (CUDA only): the model under "
        "torch.autocast with float32 energy sums, electrostatics and forces",
    )  # fmt: skip
    predict.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    predict.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    predict.set_defaults(func=_predict)


def add_data_key_arguments(parser) -> None:
    """``--energy-key``, ``--forces-key``, ``--stress-key`` (label names in files read through ASE) and
    ``--topology`` (TRR/H5MD)."""
    parser.add_argument(
        "--energy-key", default=None,
        help="ASE formats: info entry (or calculator result) holding the energy in eV (default REF_energy, "
        "then energy, then the calculator's; a named key never falls back)",
    )  # fmt: skip
    parser.add_argument(
        "--forces-key", default=None,
        help="ASE formats: per-atom array (or calculator result) holding forces in eV/Å (default "
        "REF_forces, then forces, then the calculator's)",
    )  # fmt: skip
    parser.add_argument(
        "--topology", type=Path, default=None,
        help="TRR/H5MD only: topology with the elements (.pdb, .gro, .tpr, .psf); default <stem>.pdb beside it",
    )  # fmt: skip
    parser.add_argument(
        "--stress-key", default=None,
        help="ASE formats: info entry (or calculator result) holding the stress in eV/Å^3, ASE sign "
        "(default REF_stress, then stress, then the calculator's; periodic frames only)",
    )  # fmt: skip


def read_data(args, path: Path):
    """The FrameSet of ``path`` (any readable format) with the label keys of ``args``."""
    from ..data import FrameSet, read_frames

    keys = {name: getattr(args, name, None) for name in ("energy_key", "forces_key", "stress_key", "topology")}
    keys = {k: v for k, v in keys.items() if v is not None}
    if Path(path).suffix == ".npz" and not keys:
        return FrameSet.load(path)
    return read_frames(path, **keys)


def _setup(args) -> None:
    import torch

    from ..models import keep_freed_memory
    from ..train import resolve_device

    resolve_device(args.device)  # fail before loading anything
    keep_freed_memory()  # halves the CPU cost of a model step (see scalepool.models._allocator)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)


def _train(args: argparse.Namespace) -> int:
    import torch

    from ..data import FrameSet
    from ..train import train

    _setup(args)
    frames = read_data(args, args.data)
    if isinstance(args.split_fractions, str):  # --split time|random
        args.split_mode, args.split_fractions = args.split_fractions, TrainSettings().split_fractions
    if (args.valid_data is None) != (args.test_data is None):
        raise ValueError("--valid-data and --test-data go together (the test block must come from somewhere)")
    if args.valid_data is not None:  # three files: their frames are the three blocks, in order
        parts = [frames, read_data(args, args.valid_data), read_data(args, args.test_data)]
        frames = FrameSet.concatenate(parts)
        args.split_fractions, args.split_gap, args.split_mode = tuple(float(len(p)) for p in parts), 0, "time"
        frames.meta = {**frames.meta, "files": [str(Path(p).resolve()) for p in
                                                (args.data, args.valid_data, args.test_data)]}  # fmt: skip
    from ..models import build_branch

    overrides = dict(args.model_option)
    if args.cutoff is not None:
        overrides["cutoff"] = args.cutoff
    torch.manual_seed(args.seed)
    try:
        model = build_branch(args.branch, **overrides)
    except TypeError as err:  # an unknown or mistyped constructor argument: the user's option
        given = ", ".join(f"{key}={value!r}" for key, value in args.model_option)
        raise ValueError(
            f"--model-option: the {args.branch} branch does not accept the options given ({given}): {err}"
        ) from err
    try:
        result = train(
            model,
            frames,
            args.out,
            **settings_from_args(args),
            device=args.device,
            resume=False if args.no_resume else None,
            overwrite=args.overwrite,
            branch=args.branch,
            data_path=args.data,
            progress=not args.no_progress,
            tensorboard=args.tensorboard,
        )
    except KeyboardInterrupt:
        print(
            f"scalepool train: interrupted; the checkpoint in {args.out} is kept, repeat the command to resume",
            file=sys.stderr,
        )
        return 130
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 reports for all ranks
        return 0
    best = (
        "n/a"
        if result.best_epoch is None
        else f"{result.best_val_force_mae:.2f} meV/Å (epoch {result.best_epoch})"
    )
    print(
        f"{args.branch}: {result.stop_reason} after {result.epochs_completed} epoch(s), "
        f"{result.elapsed_s:.0f} s; best validation force MAE {best}"
    )
    print(f"best model: {result.best_path}\nhistory: {result.out_dir / 'history.csv'}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ..train import predict_cache

    _setup(args)
    frames = read_data(args, args.data)
    path = predict_cache(
        args.run,
        frames,
        args.out,
        device=args.device,
        batch_size=args.batch_size,
        model_file=args.model_file,
        data_path=args.data,
        progress=not args.no_progress,
        new_data=args.new_data,
        precision=args.precision,
    )
    print(f"wrote {path}")
    print("test split, force errors in meV/Å (MAE and RMSE over force components):")
    print(_test_table(path, frames).to_string(float_format=lambda v: f"{v:.1f}"))
    return 0


def _test_table(path, frames):
    """Test-split errors of each branch and of the constant baseline, with close-contact rows."""
    import numpy as np

    from ..data import PredictionCache
    from ..metrics import cache_errors

    cache = PredictionCache.load(path)
    nearest = None
    try:
        from ..data import frameset_descriptors
    except ImportError:  # descriptors not available: no close-contact rows
        frameset_descriptors = None
    if cache.ragged:  # frame by frame, each frame's own cell (open frames: plain distances)
        from ..metrics import Subsets

        nearest = Subsets.of_cache(cache.select("test")).nearest_ion
    elif frameset_descriptors is not None:
        test = np.asarray(cache.meta["frame_index"])[cache.frames("test")]
        nearest = frameset_descriptors(frames[test])["nearest_ion"]
    return cache_errors(cache, "test", nearest_ion=nearest)
