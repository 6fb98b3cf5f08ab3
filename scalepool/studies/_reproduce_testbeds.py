"""``scalepool reproduce --testbeds``: the graphene and chignolin folding benchmarks, end to end.

A second :class:`Pipeline` in ``OUT/testbeds/`` (its own ``stages.json``), with
stages keyed like the NaCl ones (settings, input checksums, code version) and
skipped when a rerun finds them done and valid:

1. ``data_<dataset>``: :func:`scalepool.data.generate_graphene` and
   :func:`scalepool.data.generate_peptide` (what ``scalepool data graphene|peptide``
   call) -> ``data/graphene.npz`` (+ ``graphene.profile.npz``), ``data/peptide.npz``;
   side by side, each resuming from its own checkpoint
2. ``train_<dataset>_<branch>_s<k>`` -> ``runs/<dataset>/<branch>_s<k>/``: short
   seeds 0, 1, 2, long and MuSE seeds 0, 1, one random split (``split_seed``) per
   dataset, budgets in epochs, ``jobs`` processes side by side, longest first
3. ``predict_<dataset>_<g>_s<k>`` -> ``pred/<dataset>_short_<g>_s<k>.npz`` holding
   ``short`` (seed k), ``g`` (seed k) and ``short_2`` (short seed k + 1, the null pair)
4. ``table_<dataset>_short_<g>`` -> ``tables/<dataset>_short_<g>.csv`` (and ``.txt``,
   ``.provenance.json``): :func:`scalepool.scales.scale_table` over the seeds' caches,
   real and null rows; ``study_folding``, ``study_graphene_profiles`` -> ``results/``
   (tables and studies side by side)
5. ``figures`` -> ``figures/`` (``folding_md``, ``folding_errors``, ``graphene_profiles``),
   copied to ``figures_dir``
6. ``report`` -> ``report.md`` (:mod:`._testbeds_report`), from the files above
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from .._files import write_csv, write_json, write_text
from ..provenance import PROVENANCE, file_sha256, is_complete, provenance
from ._pipeline import ParallelStage, Pipeline, stage_key
from ._reproduce_jobs import (
    PredictJob,
    TrainJob,
    _trained,
    _training_records,
    _valid_cache,
    default_jobs,
    predict_seed,
    train_branch,
)
from ._testbeds_config import DATASETS, GENERATORS, TESTBED_FIGURES, TestbedConfig, make_testbed_config


def reproduce_testbeds(
    out,
    quick: bool = False,
    device: str = "cpu",
    seed: int = 0,
    threads: int = 1,
    figures_dir=None,
    force=(),
    progress: bool = True,
    config: TestbedConfig | None = None,
    log: Callable[[str], None] = print,
    jobs: int = 1,
) -> dict:
    """Run (or continue) the testbed benchmarks in ``out`` (e.g. ``OUT/testbeds``); returns the
    timings per stage.  Arguments as :func:`scalepool.studies.reproduce` (``jobs`` processes of
    ``threads`` torch threads each; ``config`` overrides :func:`make_testbed_config`)."""
    start = time.perf_counter()
    out = Path(out).resolve()
    config = config or make_testbed_config(quick, seed)
    threads = max(int(threads or 1), 1)
    jobs = max(int(jobs), 1) if device == "cpu" else 1
    pipe = Pipeline(out, force, log)
    datasets = [d for d in DATASETS if d in config.data]
    n_train = sum(len(config.seeds(b.name)) for b in config.branches) * len(datasets)
    n_pred = len(datasets) * len(GENERATORS) * len(config.model_seeds)
    pipe.total = len(datasets) * (1 + len(GENERATORS)) + n_train + n_pred + len(datasets) + 2
    log(
        f"scalepool reproduce --testbeds ({'quick' if config.quick else 'full'}) in {out}: {pipe.total} stages"
    )

    data = {d: out / "data" / f"{d}.npz" for d in datasets}
    pipe.run_parallel(
        [
            ParallelStage(
                f"data_{d}",
                stage_key("data", d, config.data[d], config.seed),
                make_testbed_data,
                DataJob(d, dict(config.data[d]), data[d], config.seed, progress and jobs <= 1),
                lambda d=d: _data_valid(data[d]),
            )
            for d in datasets
        ],
        jobs,
        progress=progress,
    )
    data_sha = {d: file_sha256(p) for d, p in data.items()}

    runs = {d: {} for d in datasets}  # dataset -> (branch, seed) -> run folder
    training = []
    for d in datasets:
        for plan in config.branches:
            for k in config.seeds(plan.name):
                run_dir = runs[d].setdefault((plan.name, k), out / "runs" / d / f"{plan.name}_s{k}")
                key = stage_key(plan.key(), config.split_fractions, config.split_seed, k, data_sha[d], device)
                job = TrainJob(
                    plan, run_dir, key, k, data[d], config.split_fractions, device, threads=threads,
                    progress=progress and jobs <= 1, split_mode="random", split_seed=config.split_seed,
                )  # fmt: skip
                training.append(
                    ParallelStage(
                        f"train_{d}_{plan.name}_s{k}", key, train_branch, job, lambda r=run_dir: _trained(r)
                    )
                )
    pipe.run_parallel(
        sorted(training, key=lambda s: -(s.argument.plan.expected_minutes or 0.0)), jobs, progress=progress
    )
    records = _training_records(training, pipe.timings)
    write_json(out / "runs" / "training.json", records)
    for record in records:
        if not record["complete"]:
            log(f"    warning: {record['stage']} is INCOMPLETE (safety stop); rerun to continue it")

    short_seeds = config.seeds("short")
    preds: dict[tuple[str, str], list[Path]] = {}
    predicting = []
    for d in datasets:
        for g in GENERATORS:
            for k in config.model_seeds:
                partner = short_seeds[short_seeds.index(k) + 1]
                members = (runs[d][("short", k)], runs[d][(g, k)], runs[d][("short", partner)])
                pred = out / "pred" / f"{d}_short_{g}_s{k}.npz"
                preds.setdefault((d, g), []).append(pred)
                predicting.append(
                    ParallelStage(
                        f"predict_{d}_{g}_s{k}",
                        stage_key([file_sha256(r / "best.pt") for r in members], data_sha[d]),
                        predict_seed,
                        PredictJob(
                            members, pred, data[d], device, threads=threads, progress=progress and jobs <= 1
                        ),
                        lambda pred=pred: _valid_cache(pred),
                    )
                )
    pipe.run_parallel(predicting, jobs, progress=progress)

    results, tables = out / "results", out / "tables"
    evaluating = [_study_stage(name, data, runs, config, results, device) for name in _studies(datasets)]
    for (d, g), paths in preds.items():
        name = f"{d}_short_{g}"
        options = {**config.table_options, "device": device}
        key = stage_key("table", options, [file_sha256(p) for p in paths])
        job = TableJob(name, tuple(paths), tables, options, threads)
        evaluating.append(
            ParallelStage(f"table_{name}", key, make_table, job, lambda job=job: _table_valid(job))
        )
    pipe.run_parallel(evaluating, jobs, progress=progress)  # the folding study (the longest) first

    figures = out / "figures"
    provenances = sorted(str(p) for p in results.glob(f"*/{PROVENANCE}"))

    def draw():
        from ..plots import make_figures

        written = make_figures(results, figures, TESTBED_FIGURES)
        write_json(figures / "figures.json", {k: [str(p) for p in v] for k, v in written.items()})

    pipe.run(
        "figures",
        stage_key([file_sha256(p) for p in provenances], TESTBED_FIGURES),
        draw,
        lambda: (figures / "figures.json").exists(),
    )
    if figures_dir is not None:
        from ..plots import copy_figures

        copied = copy_figures(figures, figures_dir, TESTBED_FIGURES)
        log(f"copied {len(copied)} testbed figure(s) to {figures_dir}")

    def report():
        from ._testbeds_report import write_testbed_report

        path = write_testbed_report(out, config, records, pipe.timings, time.perf_counter() - start, device)
        log(f"testbed report: {path}")

    inputs = [*sorted(tables.glob("*.csv")), *sorted(results.glob("*/*.csv")), figures / "figures.json"]
    report_key = stage_key([file_sha256(p) for p in inputs if p.exists()], records)
    pipe.run("report", report_key, report, lambda: (out / "report.md").exists())
    log(f"scalepool reproduce --testbeds finished in {time.perf_counter() - start:.0f} s")
    return pipe.timings


def testbeds_part(out, quick, device, seed, threads, figures_dir, force, progress, config, log, jobs) -> dict:
    """``reproduce(..., testbeds=True)``: the benchmarks in ``out/testbeds``, ``jobs`` (``None``: one
    process per ``threads`` of this machine's CPUs); timings keyed ``testbeds/<stage>``."""
    jobs = max(int(jobs if jobs is not None else default_jobs(threads)), 1)
    timings = reproduce_testbeds(
        Path(out).resolve() / "testbeds", quick=quick, device=device, seed=seed, threads=threads,
        figures_dir=figures_dir, force=force, progress=progress, config=config, log=log, jobs=jobs,
    )  # fmt: skip
    return {f"testbeds/{name}": info for name, info in timings.items()}


# ------------------------------------------------------------------ data
@dataclasses.dataclass(frozen=True)
class DataJob:
    """One testbed dataset's generation, picklable for a worker process."""

    name: str
    options: dict
    out: Path
    seed: int
    progress: bool = True


def make_testbed_data(job: DataJob) -> tuple[str, float]:
    """Generate (or resume) one testbed dataset; returns a summary line and the seconds spent."""
    from ..data import generate_graphene, generate_peptide

    start = time.perf_counter()
    generate = {"graphene": generate_graphene, "peptide": generate_peptide}[job.name]
    options = dict(seed=job.seed, progress=job.progress, out=job.out, **job.options)
    if job.name == "peptide":
        options.setdefault("threads", 1)  # OpenMM
    else:  # tblite's OpenMP threads, read when tblite loads: one, as the other process runs beside it
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    job.out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint, note = job.out.with_name(job.out.name + ".partial"), ""
    try:
        generate(checkpoint=checkpoint, **options)
    except ValueError as err:  # a checkpoint of other settings: start over
        note = f"    {err}; starting {job.name} over\n"
        generate(checkpoint=checkpoint, restart=True, **options)
    return f"{note}    {job.out.name}: {job.options}", time.perf_counter() - start


def _data_valid(path: Path) -> bool:
    from ..data import graphene_profile_path

    return path.exists() and (path.stem != "graphene" or graphene_profile_path(path).exists())


# ------------------------------------------------------------------ scale tables
@dataclasses.dataclass(frozen=True)
class TableJob:
    """The scale table of one (dataset, generator) over its seeds' caches."""

    name: str
    preds: tuple[Path, ...]
    folder: Path
    options: dict
    threads: int = 1

    @property
    def files(self) -> dict[str, Path]:
        return {s: self.folder / f"{self.name}{s}" for s in (".csv", ".txt", ".provenance.json")}


def make_table(job: TableJob) -> tuple[str, float]:
    """Write ``<name>.csv`` (the table, real and null rows), ``<name>.txt`` (as ``scalepool table``
    prints it) and ``<name>.provenance.json`` (inputs, settings, output checksums)."""
    import torch

    from ..data import PredictionCache
    from ..scales import format_table, scale_table

    start = time.perf_counter()
    torch.set_num_threads(job.threads)
    caches = [PredictionCache.load(p) for p in job.preds]
    for path, cache in zip(job.preds, caches, strict=True):
        cache.meta["source"] = str(path)  # names the file in scale_table's errors
    table = scale_table(caches, null_pair="auto", **job.options)
    files = job.files
    write_csv(files[".csv"], table, index=False)
    write_text(files[".txt"], f"{format_table(table)}\n{table.attrs['null_note']}\n")
    record = provenance("scale_table", _table_parameters(job), (), list(job.preds))
    record["outputs"] = {files[s].name: file_sha256(files[s]) for s in (".csv", ".txt")}
    write_json(files[".provenance.json"], record)
    return f"    {files['.csv'].name}: {len(table)} rows, {len(caches)} seed(s)", time.perf_counter() - start


def _table_parameters(job: TableJob) -> dict:
    return {"table": job.name, "options": dict(sorted(job.options.items())), "null_pair": "auto"}


def _table_valid(job: TableJob) -> bool:
    """The table's files exist with the checksums its provenance recorded, for these inputs."""
    try:
        record = json.loads(job.files[".provenance.json"].read_text())
        outputs_ok = all(file_sha256(job.folder / n) == h for n, h in record["outputs"].items())
        inputs_ok = [i["sha256"] for i in record["inputs"]] == [file_sha256(p) for p in job.preds]
    except (OSError, KeyError, json.JSONDecodeError):
        return False
    return outputs_ok and inputs_ok and len(record["outputs"]) == 2


# ------------------------------------------------------------------ studies
def _studies(datasets: list[str]) -> list[str]:
    return [name for name, d in (("folding", "peptide"), ("graphene_profiles", "graphene")) if d in datasets]


@dataclasses.dataclass(frozen=True)
class StudyJob:
    """One registered study on a dataset and its runs (``scalepool study NAME --data --run``)."""

    name: str
    data: Path
    runs: tuple[Path, ...]
    out: Path
    options: dict
    quick: bool
    device: str
    threads: int = 1


def run_testbed_study(job: StudyJob) -> tuple[str, float]:
    """Run one study into its folder; returns a summary line and the seconds spent."""
    import torch

    from ._registry import run_study

    start = time.perf_counter()
    torch.set_num_threads(job.threads)
    run_study(job.name, (job.data, job.runs), job.out, device=job.device, quick=job.quick, **job.options)
    return f"    study {job.name}: {job.out}", time.perf_counter() - start


def _study_stage(name, data, runs, config: TestbedConfig, results: Path, device: str) -> ParallelStage:
    from ._registry import STUDIES, parameters

    dataset = "peptide" if name == "folding" else "graphene"
    members = tuple(runs[dataset][(b, k)] for k in config.model_seeds for b in ("short", *GENERATORS))
    overrides = dict(config.study_options.get(name, {}))
    study = STUDIES[name]
    options = {**study.defaults(config.quick), **overrides}
    seeds = study.seeds(config.quick)
    params = parameters(name, [data[dataset]], options, seeds, device)
    inputs = [data[dataset]]
    if name == "graphene_profiles":
        from ..data import graphene_profile_path

        inputs.append(graphene_profile_path(data[dataset]))
    key = stage_key(params, [file_sha256(p) for p in inputs], [file_sha256(r / "best.pt") for r in members])
    job = StudyJob(name, data[dataset], members, results / name, overrides, config.quick, device)
    return ParallelStage(
        f"study_{name}", key, run_testbed_study, job, lambda: is_complete(job.out, params, inputs)
    )
