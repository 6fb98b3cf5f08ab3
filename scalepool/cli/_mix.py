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
from pathlib import Path

from ..train import PRECISIONS, SPLITS
from ._train import (
    _setup,  # device check, allocator, threads: as for train and predict
    add_data_key_arguments,
)


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
    which = evaluate.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", type=Path, help="model file (scalepool.models.save_model)")
    which.add_argument("--run", type=Path, help="run directory of scalepool train (its best.pt)")
    evaluate.add_argument(
        "--data", required=True, type=Path,
        help="dataset: .npz or any file scalepool reads (extxyz, traj, db, OUTCAR, vasprun.xml, TRR/H5MD); "
        "another dataset than the model's needs --split all or --split-fractions",
    )  # fmt: skip
    add_data_key_arguments(evaluate)
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
    evaluate.add_argument(
        "--precision", choices=PRECISIONS, default="float32",
        help="forward precision: float32 (default), or bf16-mixed / fp16-mixed (CUDA only): the model under "
        "torch.autocast with float32 energy sums, electrostatics and forces",
    )  # fmt: skip
    evaluate.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    evaluate.set_defaults(func=_evaluate)


# ---------------------------------------------------------------------------------------- mix
def _mix(args: argparse.Namespace) -> int:
    from ..scales import mix_from_cache, record_path, save_mixed

    _setup(args)
    model, record = mix_from_cache(
        args.pred, runs=args.run, data=args.data, hidden=args.hidden, layers=args.layers,
        router_steps=args.router_steps, steps=args.steps, epochs=args.epochs,
        frames_per_step=args.frames_per_step, lr=args.lr, delta_lr=args.delta_lr, train_delta=not args.no_delta,
        monitor_frames=args.monitor_frames, seed=args.seed, device=args.device, progress=not args.no_progress,
    )  # fmt: skip
    path = save_mixed(model, record, args.out)
    fit = record["fit"]
    a0, a1 = record["pair"]
    print(
        f"train force MAE on {len(fit['monitor_index'])} train frames (meV/Å): {a0} {fit['train_mae_branch0']:.2f}, "
        f"{a1} {fit['train_mae_branch1']:.2f}, mixed {fit['train_mae_initial']:.2f} (cache warm start) -> "
        f"{fit['train_mae_final']:.2f} after {fit['steps']} end-to-end steps "
        f"({fit['seconds_per_step']:.2f} s/step); mean s {fit['mean_scale_final']:.3f}"
    )
    if fit["train_mae_final"] >= min(fit["train_mae_branch0"], fit["train_mae_branch1"]):
        print("note: the mixed model does not beat the better branch on the train frames")
    print(
        f"wrote {path} and {record_path(path)}; test it with: "
        f"scalepool evaluate --model {path} --data {record['dataset_path']}"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .._files import write_json
    from ..train import evaluate_model

    _setup(args)
    if args.run is not None:
        args.model = args.run / "best.pt"
    result = evaluate_model(
        args.model, args.data, args.split, args.split_fractions, args.split_gap, args.device, args.batch_size,
        energy_key=args.energy_key, forces_key=args.forces_key, stress_key=args.stress_key, topology=args.topology,
        precision=args.precision,
    )  # fmt: skip
    result["dataset"] = str(args.data.resolve())
    write_json(args.json, result)
    first, stop = result["frames"]
    print(
        f"{args.model.name} ({result['model_class']}) on the {args.split} split of {args.data.name} "
        f"(frames {first}..{stop - 1}, {result['n_frames']} frames; split {result['split_fractions']} gap "
        f"{result['split_gap']} from {result['split_source']}): force MAE {result['overall_mae']:.2f} meV/Å"
        + ("" if result["ion_mae"] is None else f", ions {result['ion_mae']:.2f} meV/Å")
        + ("" if result["energy_mae_per_atom"] is None else f", energy {result['energy_mae_per_atom']:.2f} meV/atom")
        + f" -> {args.json}"
    )
    return 0
