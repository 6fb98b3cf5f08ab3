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

``testbeds=True`` then runs the graphene and chignolin folding benchmarks in
``OUT/testbeds/`` (:mod:`._reproduce_testbeds`); ``testbeds_only`` runs them alone.
The jobs both recipes share (training, prediction) live in :mod:`._reproduce_jobs`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from .._files import write_json
from ..provenance import PROVENANCE, file_sha256, is_complete
from ._pipeline import ParallelStage, Pipeline, stage_key
from ._reproduce_config import ReproduceConfig, make_config
from ._reproduce_jobs import TRAINING_RECORD as TRAINING_RECORD  # the jobs moved there; names kept here
from ._reproduce_jobs import (
    PredictJob,
    TrainJob,
    _add_training_section,
    _trained,
    _training_records,
    _valid_cache,
    default_jobs,
    predict_seed,
    train_branch,
)


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
    testbeds: bool = False,
    testbeds_only: bool = False,
    testbed_config=None,
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

    ``testbeds`` also runs the graphene and folding benchmarks in ``out/testbeds``
    after the NaCl stages (:func:`._reproduce_testbeds.reproduce_testbeds`,
    ``testbed_config`` overriding its settings); ``testbeds_only`` runs them alone.
    Their timings join the returned dict as ``testbeds/<stage>``.
    """
    import torch

    from ._reproduce_testbeds import testbeds_part as _testbeds

    testbed_args = (out, quick, device, seed, threads, figures_dir, force, progress, testbed_config, log, jobs)  # fmt: skip
    if testbeds_only:
        return _testbeds(*testbed_args)

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
    if testbeds:
        pipe.timings.update(_testbeds(*testbed_args))
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
