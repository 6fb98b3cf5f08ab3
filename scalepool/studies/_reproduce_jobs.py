"""The jobs of a reproduction's stages, shared by the NaCl recipe (:mod:`._reproduce`) and the
testbed benchmarks (:mod:`._reproduce_testbeds`): training a run (:class:`TrainJob`) and writing
a seed's prediction cache (:class:`PredictJob`), each picklable for a worker process of
:meth:`Pipeline.run_parallel`, with the training records and the report's training table.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from .._files import write_json, write_text
from ._pipeline import ParallelStage
from ._reproduce_config import BranchPlan

#: a training run's record, written by :func:`train_branch` into its run folder
TRAINING_RECORD = "reproduce_training.json"


def _claim(run_dir: Path, key: str) -> list[str]:
    """Keep a training run folder made with these settings (it resumes); empty one made
    with other settings (another dataset, width or seed), which could not resume.
    Returns what was done, as lines for the log."""
    import shutil

    notes = []
    stamp = run_dir / ".reproduce_key"
    if run_dir.exists() and (not stamp.exists() or stamp.read_text() != key):
        notes.append(f"    {run_dir} holds a run with other settings; starting it over")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key)
    return notes


def _valid_cache(path: Path) -> bool:
    from ..data import PredictionCache, PredictionCacheError

    if not path.exists():
        return False
    try:
        PredictionCache.load(path)
    except (PredictionCacheError, OSError):
        return False
    return True


def default_jobs(threads: int = 1) -> int:
    """Training processes that fit this machine's CPUs at ``threads`` torch threads each."""
    import os

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(cpus // max(int(threads or 1), 1), 1)


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """Everything one branch's training needs, picklable for a worker process."""

    plan: BranchPlan
    run_dir: Path
    key: str
    model_seed: int
    data_path: Path
    split_fractions: tuple[float, float, float]
    device: str
    threads: int = 1
    progress: bool = True
    #: ``"time"`` blocks (the NaCl runs) or ``"random"`` (the testbeds), seeded by ``split_seed``
    split_mode: str = "time"
    split_seed: int = 0

    @property
    def train_seed(self) -> int:
        """The run's seed (initialisation and batch order): model seed + the plan's offset."""
        return self.model_seed + self.plan.seed_offset


def train_branch(job: TrainJob) -> tuple[str, float]:
    """Train (or continue) one run of a reproduction; returns a summary line and the seconds spent.

    Runs in the calling process or in a worker process of
    :meth:`Pipeline.run_parallel`; the run folder is claimed first, so a folder
    holding a run with other settings starts over and one with these settings
    resumes (an incomplete run continues to its epochs).  The budget is the
    plan's epochs; the wall-clock safety stop, when it fires, leaves the run
    incomplete.  Writes :data:`TRAINING_RECORD` into the run folder.
    """
    import torch

    from ..data import FrameSet
    from ..models import keep_freed_memory
    from ..search import build_any_branch
    from ..train import train

    start = time.perf_counter()
    keep_freed_memory()
    torch.set_num_threads(job.threads)
    plan, run_dir = job.plan, job.run_dir
    notes = _claim(run_dir, job.key)
    torch.manual_seed(job.train_seed)  # the initialisation (a resumed run loads its weights instead)
    model = build_any_branch(plan.name, **plan.options)
    result = train(
        model, FrameSet.load(job.data_path), run_dir, epochs=plan.epochs, max_minutes=plan.safety_minutes,
        batch_size=plan.batch_size, lr=plan.lr, patience=plan.patience, split_fractions=job.split_fractions,
        seed=job.train_seed, device=job.device, branch=plan.name, data_path=job.data_path,
        progress=job.progress, split_mode=job.split_mode, split_seed=job.split_seed,
    )  # fmt: skip
    record = {
        "run": plan.run_name,
        "branch": plan.name,
        "model_seed": job.model_seed,
        "train_seed": job.train_seed,
        "epochs_planned": plan.epochs,
        "epochs": result.epochs_completed,
        "steps_planned": plan.epochs * result.steps_per_epoch,
        "steps": result.steps,
        "train_s": result.elapsed_s,
        "stop_reason": result.stop_reason,
        "complete": result.complete,
        "safety_minutes": plan.safety_minutes,
        "best_epoch": result.best_epoch,
        "best_val_force_mae_meV_A": result.best_val_force_mae,
    }
    write_json(run_dir / TRAINING_RECORD, record)
    state = "complete" if result.complete else "INCOMPLETE (safety stop)"
    summary = (
        f"    {plan.run_name} (seed {job.model_seed}, training seed {job.train_seed}): {state}, "
        f"{result.epochs_completed}/{plan.epochs} epochs, {result.steps} steps in {result.elapsed_s:.0f} s; "
        f"best val force MAE {result.best_val_force_mae:.1f} meV/Å (epoch {result.best_epoch})"
    )
    return "\n".join([*notes, summary]), time.perf_counter() - start


def _trained(run_dir: Path) -> bool:
    """A training stage's output is valid: the run has a model and was not cut short by the safety stop."""
    record = run_dir / TRAINING_RECORD
    if not (run_dir / "best.pt").exists() or not record.exists():
        return False
    try:
        return bool(json.loads(record.read_text())["complete"])
    except (json.JSONDecodeError, KeyError):
        return False


def _training_records(stages: list[ParallelStage], timings: dict) -> list[dict]:
    """Each training stage's record (in the order of ``stages``), also added to its entry of ``timings``."""
    records = []
    for stage in stages:
        path = stage.argument.run_dir / TRAINING_RECORD
        record = {"stage": stage.name, **json.loads(path.read_text())}
        records.append(record)
        if stage.name in timings:
            timings[stage.name].update(
                {k: record[k] for k in ("epochs", "steps", "train_s", "complete", "stop_reason")}
            )
    return records


def _add_training_section(report: Path, records: list[dict]) -> None:
    """Put the training table (epochs, steps, seconds, safety stop) before the report's timings."""
    lines = [
        "## Training (budgets in epochs; equal steps for every branch)",
        "",
        "| run | model seed | training seed | epochs | optimizer steps | seconds | s/step | safety stop | "
        "best val force MAE (meV/Å) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        per_step = r["train_s"] / r["steps"] if r["steps"] else float("nan")
        stop = "not fired" if r["complete"] else f"**fired at {r['safety_minutes']:.1f} min: INCOMPLETE**"
        lines.append(
            f"| {r['run']} | {r['model_seed']} | {r['train_seed']} | {r['epochs']}/{r['epochs_planned']} | "
            f"{r['steps']}/{r['steps_planned']} | {r['train_s']:.0f} | {per_step:.3f} | {stop} | "
            f"{r['best_val_force_mae_meV_A']:.1f} |"
        )
    incomplete = [r["stage"] for r in records if not r["complete"]]
    lines += [
        "",
        f"**{len(incomplete)} run(s) incomplete** (the wall-clock safety stop fired: {', '.join(incomplete)}); "
        "run the same command again to finish them."
        if incomplete
        else f"All {len(records)} runs complete: no safety stop fired.",
        "",
    ]
    text = report.read_text()
    at = text.find("## Timings")
    at = len(text) if at < 0 else at
    write_text(report, text[:at] + "\n".join(lines) + "\n" + text[at:])


@dataclasses.dataclass(frozen=True)
class PredictJob:
    """One model seed's prediction cache, picklable for a worker process."""

    runs: tuple[Path, ...]
    out: Path
    data_path: Path
    device: str
    threads: int = 1
    progress: bool = True


def predict_seed(job: PredictJob) -> tuple[str, float]:
    """Write one seed's prediction cache; returns a summary line and the seconds spent."""
    import torch

    from ..data import FrameSet
    from ..models import keep_freed_memory
    from ..train import predict_cache

    start = time.perf_counter()
    keep_freed_memory()
    torch.set_num_threads(job.threads)
    predict_cache(
        list(job.runs), FrameSet.load(job.data_path), job.out, device=job.device, data_path=job.data_path,
        progress=job.progress,
    )  # fmt: skip
    return f"    {job.out.name}: {', '.join(r.name for r in job.runs)}", time.perf_counter() - start
