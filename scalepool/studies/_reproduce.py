"""``scalepool reproduce``: from the OpenMM testbed to the final table, figures and report.

Stages, each skipped when its recorded key (settings and input checksums)
matches ``stages.json`` and its output is still valid, so a killed run
continues where it stopped (and the training and data stages resume from
their own checkpoints):

1. ``data``: :func:`scalepool.data.generate_nacl` -> ``data/nacl.npz``
2. ``train_<run>_s<k>``: :func:`scalepool.train.train` -> ``runs/seed<k>/<run>/`` for
   every run of every model seed ``k`` (``short``, ``long``, the null pair's
   ``short_2``, and ``muse``), two processes side by side, longest first
3. ``predict_s<k>``: :func:`scalepool.train.predict_cache` -> ``pred/seed<k>.npz``
   (``short``, ``long``, ``short_2``, ...: anchors ``short`` and ``long``)
4. ``study_<name>``: every registered study -> ``results/<name>/``
5. ``figures``: :func:`scalepool.plots.make_figures` -> ``figures/``
6. ``report``: the final table on stdout and ``figures/report.md``

Training budgets are epochs (:mod:`._reproduce_config`): with one thread, a
rerun at the same commit on one machine trains the same models bit for bit.
Each run's record (``runs/seed<k>/<run>/reproduce_training.json``, gathered in
``runs/training.json`` and the report's training table) holds its epochs,
optimiser steps, seconds and whether the wall-clock safety stop fired
(*incomplete*: a rerun of ``reproduce`` continues it).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

from .._files import write_json, write_text
from ..provenance import PROVENANCE, file_sha256, is_complete
from ._pipeline import ParallelStage, Pipeline, stage_key
from ._reproduce_config import BranchPlan, ReproduceConfig, make_config

#: a training run's record, written by :func:`train_branch` into its run folder
TRAINING_RECORD = "reproduce_training.json"


def reproduce(
    out,
    quick: bool = False,
    device: str = "cpu",
    seed: int = 0,
    threads: int = 1,
    figures_dir=None,
    force=(),
    progress: bool = True,
    config: ReproduceConfig | None = None,
    log: Callable[[str], None] = print,
    jobs: int | None = None,
) -> dict:
    """Run (or continue) the whole reproduction in ``out``; returns the timings per stage.

    ``threads`` is torch's CPU thread count for training and prediction.  One is
    the default: on a 2-core machine shared with other work, two threads ran a
    training step 2-30 times slower than one (oversubscription); on a dedicated
    machine more threads help.  OpenMM and the studies always use one thread.
    ``config`` overrides the settings of :func:`make_config` (tests use tiny ones).

    ``jobs`` runs train (and seeds predict) side by side, each in its own
    process with ``threads`` threads (CPU only; on CUDA they take turns).  The
    default, ``cpu_count // threads``, trains two single-thread runs at once on
    a 2-core machine: each trains at about the speed it has alone.  The runs
    start longest first (``BranchPlan.expected_minutes``) so the two processes
    finish together.  Which process trains a run changes nothing in it.
    """
    import torch

    from ..plots import copy_figures, make_figures
    from ._registry import STUDIES, parameters, run_study
    from ._report import final_table_text, write_report

    start = time.perf_counter()
    out = Path(out).resolve()
    config = config or make_config(quick, seed)
    torch.set_num_threads(max(int(threads or 1), 1))
    pipe = Pipeline(out, force, log)
    # training processes side by side: CPU only (on CUDA the branches take turns on the device)
    jobs = max(int(jobs if jobs is not None else default_jobs(threads)), 1) if device == "cpu" else 1
    data_path = out / "data" / "nacl.npz"
    use_muse = any(b.name == "muse" for b in config.branches) and config.muse and _muse_available()
    plans = {
        model_seed: [b for b in config.runs(first_seed=i == 0) if b.name != "muse" or use_muse]
        for i, model_seed in enumerate(config.model_seeds)
    }
    names = [name for name, study in STUDIES.items() if study.inputs == "pred"]  # hessian: own stage
    pipe.total = 1 + sum(len(p) + 1 for p in plans.values()) + len(names) + 2 + (config.hessian is not None)
    log(f"scalepool reproduce ({'quick' if config.quick else 'full'}) in {out}: {pipe.total} stages")

    def make_data():
        from ..data import generate_nacl

        options = dict(seed=config.seed, threads=1, progress=progress, out=data_path, **config.data)
        checkpoint = data_path.with_name("nacl.npz.partial")
        try:
            generate_nacl(checkpoint=checkpoint, **options)
        except ValueError as err:  # a checkpoint of other settings (CheckpointMismatch): start over
            log(f"    {err}; starting the data over")
            generate_nacl(checkpoint=checkpoint, restart=True, **options)

    pipe.run("data", stage_key("data", config.data, config.seed), make_data, data_path.exists)
    data_sha = file_sha256(data_path)

    training, runs_of_seed = [], {}
    for model_seed, seed_plans in plans.items():
        runs_of_seed[model_seed] = []
        for plan in seed_plans:
            run_dir = out / "runs" / f"seed{model_seed}" / plan.run_name
            runs_of_seed[model_seed].append(run_dir)
            key = stage_key(plan.key(), config.split_fractions, model_seed, data_sha, device)
            job = TrainJob(
                plan, run_dir, key, model_seed, data_path, config.split_fractions, device,
                threads=max(int(threads or 1), 1), progress=progress and jobs <= 1,
            )  # fmt: skip
            training.append(
                ParallelStage(
                    f"train_{plan.run_name}_s{model_seed}",
                    key,
                    train_branch,
                    job,
                    lambda run_dir=run_dir: _trained(run_dir),
                )
            )
    # longest first: the two processes then finish at about the same time (stable: cache order otherwise)
    longest_first = sorted(training, key=lambda stage: -(stage.argument.plan.expected_minutes or 0.0))
    pipe.run_parallel(longest_first, jobs, progress=progress)
    records = _training_records(training, pipe.timings)
    write_json(out / "runs" / "training.json", records)
    for record in records:
        if not record["complete"]:
            log(
                f"    warning: {record['stage']} is INCOMPLETE: the {record['safety_minutes']:.1f} min safety "
                f"stop fired after {record['steps']} of {record['steps_planned']} steps; rerun to continue it"
            )

    preds, predicting = [], []
    for model_seed, runs in runs_of_seed.items():
        pred = out / "pred" / f"seed{model_seed}.npz"
        preds.append(pred)
        predicting.append(
            ParallelStage(
                f"predict_s{model_seed}",
                stage_key([file_sha256(r / "best.pt") for r in runs if (r / "best.pt").exists()], data_sha),
                predict_seed,
                PredictJob(
                    tuple(runs),
                    pred,
                    data_path,
                    device,
                    threads=max(int(threads or 1), 1),
                    progress=progress and jobs <= 1,
                ),
                lambda pred=pred: _valid_cache(pred),
            )
        )
    pipe.run_parallel(predicting, jobs, progress=progress)

    results = out / "results"
    if config.hessian is not None:
        first = config.model_seeds[0]
        # one run per branch (short, long, muse): the null pair's short_2 is another seed of short
        hessian_runs = [
            r for plan, r in zip(plans[first], runs_of_seed[first], strict=True) if plan.run_name == plan.name
        ]
        _hessian_stage(pipe, data_path, data_sha, hessian_runs, results / "hessian", config, device)
    # The studies' routers are small MLPs: one thread is several times faster than
    # two threads competing on a busy 2-core machine.
    torch.set_num_threads(1 if device == "cpu" else max(int(threads or 1), 1))
    for name in names:
        study = STUDIES[name]
        overrides = dict(config.study_options.get(name, {}))
        options = {**study.defaults(config.quick), **overrides}
        seeds = tuple(s + config.seed for s in study.seeds(config.quick))
        params = parameters(name, preds, options, seeds, device)
        key = stage_key(params, [file_sha256(p) for p in preds])

        def run_one(name=name, seeds=seeds, overrides=overrides, key=key):
            _clear_stale(pipe, f"study_{name}", key, results / name)
            run_study(
                name, preds, results / name, seeds=seeds, device=device, quick=config.quick, **overrides
            )

        pipe.run(
            f"study_{name}",
            key,
            run_one,
            lambda name=name, params=params: _complete(results / name, params, preds),
        )

    figures = out / "figures"
    provenances = sorted(str(p) for p in results.glob(f"*/{PROVENANCE}"))
    figure_key = stage_key([file_sha256(p) for p in provenances], config.figures)
    written: dict = {}

    def draw():
        written.update(make_figures(results, figures, config.figures))
        write_json(figures / "figures.json", {k: [str(p) for p in v] for k, v in written.items()})

    pipe.run("figures", figure_key, draw, lambda: (figures / "figures.json").exists())
    if not written and (figures / "figures.json").exists():
        written.update(json.loads((figures / "figures.json").read_text()))
    if figures_dir is not None:
        copied = copy_figures(figures, figures_dir)
        log(f"copied {len(copied)} key figure(s) to {figures_dir}")

    def report():
        text = final_table_text(results)
        log(text)
        total = time.perf_counter() - start
        path = write_report(figures / "report.md", out, config, results, written, pipe.timings, total, device)
        _add_training_section(path, records)
        log(f"report: {path}")

    pipe.timings.pop("report", None)
    pipe.run("report", stage_key(time.time()), report)
    log(f"scalepool reproduce finished in {time.perf_counter() - start:.0f} s")
    return pipe.timings


def _hessian_stage(
    pipe: Pipeline, data_path: Path, data_sha: str, runs: list[Path], out: Path, config, device
) -> None:
    """The Hessian benchmark (OpenMM finite differences against double backprop) on ``runs``."""
    from . import _hessian_study as hessian

    runs = [r for r in runs if (r / "best.pt").exists()]
    options = {**config.hessian, "device": device}

    def action():
        _, summary = hessian.run(data_path, runs, out, **options)
        for line in hessian.summary_lines(summary):
            pipe.log(f"    {line}")

    pipe.run(
        "study_hessian",
        stage_key([file_sha256(r / "best.pt") for r in runs], data_sha, options),
        action,
        lambda: hessian.complete(out, data_path, runs, **options),
    )


def _clear_stale(pipe: Pipeline, stage: str, key: str, folder: Path) -> None:
    """Empty a study's folder that a finished run of the stage made with another key (other
    caches, settings or code) before the study runs again: its files must not mix with the
    new results (the search study's optuna storage refuses trials of another cache).  A
    folder of an interrupted run with this key has no record yet and is kept (it resumes)."""
    import shutil

    record = pipe.state.get(stage)
    if record is not None and record.get("key") != key and folder.exists():
        pipe.log(f"    {folder} holds results of other inputs or settings; starting it over")
        shutil.rmtree(folder)


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


def _complete(folder: Path, params: dict, preds) -> bool:

    return is_complete(folder, params, preds)


def _muse_available() -> bool:
    """Whether a MuSE branch can be built here (the full run trains it when it can)."""
    try:
        from ..search import build_any_branch

        build_any_branch("muse")
    except (ImportError, ValueError, TypeError, AttributeError):
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
        progress=job.progress,
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
