"""``scalepool reproduce``: from the OpenMM testbed to the final table, figures and report.

Stages, each skipped when its recorded key (settings and input checksums)
matches ``stages.json`` and its output is still valid, so a killed run
continues where it stopped (and the training and data stages resume from
their own checkpoints):

1. ``data``: :func:`scalepool.data.generate_nacl` -> ``data/nacl.npz``
2. ``train_<branch>_s<k>``: :func:`scalepool.train.train` -> ``runs/seed<k>/<branch>/``
3. ``predict_s<k>``: :func:`scalepool.train.predict_cache` -> ``pred/seed<k>.npz``
4. ``study_<name>``: every registered study -> ``results/<name>/``
5. ``figures``: :func:`scalepool.plots.make_figures` -> ``figures/``
6. ``report``: the final table on stdout and ``figures/report.md``
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path

from .._files import write_json
from ..provenance import PROVENANCE, file_sha256, is_complete
from ._pipeline import ParallelStage, Pipeline, stage_key
from ._reproduce_config import BranchPlan, ReproduceConfig, make_config


def _budget_left(run_dir: Path, plan: BranchPlan) -> float:
    """Minutes of the branch's training budget not yet spent by earlier sessions."""
    history = run_dir / "history.csv"
    spent = 0.0
    if history.exists():
        import pandas as pd

        table = pd.read_csv(history)
        if len(table):
            spent = float(table["elapsed_s"].iloc[-1]) / 60.0
    return plan.max_minutes - spent


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

    ``jobs`` branches train side by side, each in its own process with
    ``threads`` threads (CPU only; on CUDA they take turns).  The default,
    ``cpu_count // threads``, trains two single-thread branches at once on a
    2-core machine: each trains at about the speed it has alone, so the quick
    run trains three branches in the wall time of two.
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
    branches = [b for b in config.branches if b.name != "muse" or (config.muse and _muse_available())]
    names = [name for name, study in STUDIES.items() if study.inputs == "pred"]  # hessian: own stage
    pipe.total = (
        1 + len(config.model_seeds) * (len(branches) + 1) + len(names) + 2 + (config.hessian is not None)
    )
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
    for model_seed in config.model_seeds:
        runs_of_seed[model_seed] = []
        for plan in branches:
            run_dir = out / "runs" / f"seed{model_seed}" / plan.name
            runs_of_seed[model_seed].append(run_dir)
            key = stage_key(plan, config.split_fractions, model_seed, data_sha, device)
            job = TrainJob(
                plan, run_dir, key, model_seed, data_path, config.split_fractions, device,
                threads=max(int(threads or 1), 1), progress=progress and jobs <= 1,
            )  # fmt: skip
            training.append(
                ParallelStage(
                    f"train_{plan.name}_s{model_seed}",
                    key,
                    train_branch,
                    job,
                    lambda run_dir=run_dir: (run_dir / "best.pt").exists(),
                )
            )
    pipe.run_parallel(training, jobs, progress=progress)

    @functools.cache
    def load_frames():  # once for every seed's prediction, and only when one runs
        from ..data import FrameSet

        return FrameSet.load(data_path)

    preds = []
    for model_seed, runs in runs_of_seed.items():
        pred = out / "pred" / f"seed{model_seed}.npz"
        preds.append(pred)

        def predict(runs=runs, pred=pred):
            from ..train import predict_cache

            predict_cache(runs, load_frames(), pred, device=device, data_path=data_path, progress=progress)

        pipe.run(
            f"predict_s{model_seed}",
            stage_key([file_sha256(r / "best.pt") for r in runs if (r / "best.pt").exists()], data_sha),
            predict,
            lambda pred=pred: _valid_cache(pred),
        )

    results = out / "results"
    if config.hessian is not None:
        _hessian_stage(
            pipe,
            data_path,
            data_sha,
            runs_of_seed[config.model_seeds[0]],
            results / "hessian",
            config,
            device,
        )
    # The studies' routers are small MLPs: one thread is several times faster than
    # two threads competing on a busy 2-core machine.
    torch.set_num_threads(1 if device == "cpu" else max(int(threads or 1), 1))
    for name in names:
        study = STUDIES[name]
        overrides = dict(config.study_options.get(name, {}))
        options = {**study.defaults(config.quick), **overrides}
        seeds = tuple(s + config.seed for s in study.seeds(config.quick))
        params = parameters(name, preds, options, seeds, device)
        pipe.run(
            f"study_{name}",
            stage_key(params, [file_sha256(p) for p in preds]),
            lambda name=name, seeds=seeds, overrides=overrides: run_study(
                name, preds, results / name, seeds=seeds, device=device, quick=config.quick, **overrides
            ),
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


def train_branch(job: TrainJob) -> tuple[str, float]:
    """Train (or continue) one branch of a reproduction; returns a summary line and the seconds spent.

    Runs in the calling process or in a worker process of
    :meth:`Pipeline.run_parallel`; the run folder is claimed first, so a folder
    holding a run with other settings starts over and one with these settings resumes.
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
    left = _budget_left(run_dir, plan)
    if left <= 0.01 and (run_dir / "best.pt").exists():
        return "\n".join(
            [*notes, f"    {plan.name}: training budget already spent"]
        ), time.perf_counter() - start
    torch.manual_seed(job.model_seed)
    model = build_any_branch(plan.name, **plan.options)
    result = train(
        model, FrameSet.load(job.data_path), run_dir, epochs=plan.epochs, max_minutes=max(left, 0.05),
        batch_size=plan.batch_size, lr=plan.lr, patience=plan.patience, split_fractions=job.split_fractions,
        seed=job.model_seed, device=job.device, branch=plan.name, data_path=job.data_path,
        progress=job.progress,
    )  # fmt: skip
    summary = (
        f"    {plan.name} (seed {job.model_seed}): {result.stop_reason} after {result.epochs_completed} "
        f"epoch(s), best val force MAE {result.best_val_force_mae:.1f} meV/Å (epoch {result.best_epoch})"
    )
    return "\n".join([*notes, summary]), time.perf_counter() - start
