"""``scalepool reproduce``: every stage on tiny data, skipping finished stages, redoing invalid ones.

The OpenMM generator is replaced by random frames (its own tests cover it); the
branches are real but tiny, so the whole chain takes seconds.  Two model seeds,
each with the real pair (short, long) and the null pair's short_2; MuSE for the
first seed only, as in the quick run.
"""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pandas as pd
import pytest

import scalepool.data
from scalepool.data import PredictionCache
from scalepool.studies import BranchPlan, Pipeline, ReproduceConfig, make_config, reproduce
from scalepool.studies._pipeline import STATE, ParallelStage
from scalepool.studies._reproduce import (
    TRAINING_RECORD,
    TrainJob,
    _add_training_section,
    _trained,
    train_branch,
)
from scalepool.testing._systems import random_frames

SMALL = {"n_features": 4, "n_interactions": 1, "n_rbf": 4, "cutoff": 3.0}
FIGURES = ("scale_table", "router_vs_oracle")


SHORT = BranchPlan("short", SMALL, epochs=1, expected_minutes=1.0)
MUSE = {**SMALL, "coarse_nodes": "ions", "coarse_cutoff": 4.0}
#: the tiny run's stages of training: both seeds' real and null pairs, MuSE for seed 0 only
TRAINING = {f"train_{run}_s{k}" for run in ("short", "long", "short_2") for k in (0, 1)} | {"train_muse_s0"}


def _config() -> ReproduceConfig:
    return ReproduceConfig(
        quick=True,
        seed=0,
        data={"n_frames": 12},
        split_fractions=(0.5, 0.25, 0.25),
        branches=(
            SHORT,
            BranchPlan("long", SMALL, epochs=1, expected_minutes=1.0),
            SHORT.null_twin(),
            BranchPlan("muse", MUSE, epochs=1, expected_minutes=1.0, first_seed_only=True),
        ),
        model_seeds=(0, 1),
        muse=True,
        study_options={
            "search": {"n_trials": 6, "spaces": "pool"},
            "routers": {"router_steps": 10, "points": 100},
            "oracle_table": {"router_steps": 10, "soft_steps": 5, "points": 100},
            "branch_comparison": {"parity_points": 100},
        },
        figures=FIGURES,
        hessian=None,  # needs an OpenMM system: tests/unit/md/test_muse_hessian.py runs the study
    )


@pytest.fixture
def fake_openmm(monkeypatch):
    calls = []

    def generate(n_frames=12, seed=0, out=None, **kwargs):
        calls.append(n_frames)
        frames = random_frames(n_atoms=16, box=8.0, n_frames=n_frames, seed=seed, triclinic=False)
        frames.save(out)
        return frames

    monkeypatch.setattr(scalepool.data, "generate_nacl", generate)
    return calls


@pytest.fixture
def fixed_code_version(monkeypatch):
    """Stage keys hash the code version, uncommitted changes included: pin it, so that an edit made
    elsewhere in the working tree while this test runs does not redo every stage."""
    import scalepool.studies._pipeline as pipeline

    monkeypatch.setattr(pipeline, "code_version", lambda: "test-version")


def test_reproduce_runs_then_skips_then_redoes_what_is_invalid(tmp_path, fake_openmm, fixed_code_version):
    lines: list[str] = []
    out = tmp_path / "run"
    timings = reproduce(
        out, config=_config(), progress=False, log=lines.append, figures_dir=tmp_path / "repo_figures", jobs=2
    )
    assert all(info["ran"] for info in timings.values())
    assert any("in 2 worker processes" in line for line in lines)  # the branches trained side by side
    assert {"data", "predict_s0", "predict_s1", "study_oracle_table", "study_search", "figures"} <= set(
        timings
    )
    assert {name for name in timings if name.startswith("train_")} == TRAINING

    # every run trained its budget in steps (6 training frames, batch 1, one epoch), none cut short
    for name in TRAINING:
        assert timings[name]["steps"] == 6 and timings[name]["epochs"] == 1 and timings[name]["complete"]
    listed = json.loads((out / "runs" / "training.json").read_text())
    assert [r["stage"] for r in listed] == [  # cache order, whatever order they trained in
        *(f"train_{run}_s0" for run in ("short", "long", "short_2", "muse")),
        *(f"train_{run}_s1" for run in ("short", "long", "short_2")),
    ]
    records = {r["stage"]: r for r in listed}
    null = records["train_short_2_s1"]
    assert (null["branch"], null["model_seed"], null["train_seed"]) == ("short", 1, 1001)
    assert json.loads((out / "runs" / "seed1" / "short_2" / "config.json").read_text())["seed"] == 1001

    # the caches: anchors short and long, the null pair's short_2 beside them, MuSE for seed 0 only
    for seed, names in ((0, ["short", "long", "short_2", "muse"]), (1, ["short", "long", "short_2"])):
        cache = PredictionCache.load(out / "pred" / f"seed{seed}.npz")
        assert list(cache.branches) == names and tuple(cache.anchors) == ("short", "long")
        assert cache.meta["run_branches"]["short_2"] == "short"
        assert not np.array_equal(cache.branches["short"], cache.branches["short_2"])  # two independent seeds

    report = (out / "figures" / "report.md").read_text()
    assert "![scale_table](scale_table.png)" in report  # the rows and numbers: _check_report_numbers
    assert "| train_short_s0 |" in report and "| train_short_2_s1 |" in report
    _check_report_numbers(report, out)
    assert any("MAE on the test split" in line for line in lines)  # the final table is printed
    for name in FIGURES:
        assert (out / "figures" / f"{name}.png").exists() and (out / "figures" / f"{name}.pdf").exists()
    assert sorted(p.name for p in (tmp_path / "repo_figures").iterdir()) == sorted(
        f"{n}.png" for n in FIGURES
    )
    assert (out / "pred" / "seed0.npz").exists() and (out / "runs" / "seed0" / "long" / "best.pt").exists()
    assert not (out / "runs" / "seed1" / "muse").exists()
    swap = out / "results" / "generator_swap"
    assert (swap / "comparison.csv").exists() and not (swap / "skipped.json").exists()  # MuSE was trained

    # a second run redoes nothing
    lines.clear()
    timings = reproduce(out, config=_config(), progress=False, log=lines.append)
    ran = {name for name, info in timings.items() if info["ran"]}
    assert ran == {"report"} and fake_openmm == [12]
    assert sum("up to date" in line for line in lines) == len(timings) - 1

    # an invalid study result is redone, and only what depends on it
    (out / "results" / "routers" / "provenance.json").unlink()
    timings = reproduce(out, config=_config(), progress=False, log=lines.append)
    assert {name for name, info in timings.items() if info["ran"]} == {"study_routers", "figures", "report"}

    # a forced stage is redone, and what reads its output
    timings = reproduce(
        out, config=_config(), progress=False, log=lines.append, force=("study_pool_refinement",)
    )
    assert {name for name, info in timings.items() if info["ran"]} == {
        "study_pool_refinement",
        "figures",
        "report",
    }
    assert set(json.loads((out / STATE).read_text())) >= {"data", "predict_s0", "figures", "report"}

    # a new prediction cache (here redone by force; after a retrained run alike) redoes every study on
    # it, and a study folder made from the old cache starts over (the search's optuna storage would
    # refuse to mix trials of two caches)
    lines.clear()
    timings = reproduce(out, config=_config(), progress=False, log=lines.append, force=("predict_s0",))
    ran = {name for name, info in timings.items() if info["ran"]}
    assert {"predict_s0", "study_search", "study_oracle_table", "figures", "report"} <= ran
    assert not any(name.startswith("train_") or name == "predict_s1" for name in ran)
    assert any("search holds results of other inputs" in line for line in lines)


def _markdown_rows(report: str, heading: str) -> list[dict[str, str]]:
    """The first markdown table after ``heading``: one ``{column: cell}`` per body row."""
    lines = report[report.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))

    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.strip().strip("|").split("|")]

    header, rows = cells(lines[start]), []
    for line in lines[start + 2 :]:  # after the header and the rule
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, cells(line), strict=True)))
    return rows


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+\.?\d*", cell)]


def _assert_cell(cell: str, row: pd.Series, metric: str) -> None:
    """A ``mean ± std`` cell of the report shows the CSV's numbers (to its one decimal)."""
    if pd.isna(row[metric]):
        assert cell == "–"
        return
    std = row.get(f"{metric}_std", float("nan"))
    expected = [row[metric]] + ([std] if pd.notna(std) else [])
    assert _numbers(cell) == pytest.approx(expected, abs=0.05 + 1e-9), (row["method"], metric, cell)


def _check_report_numbers(report: str, out) -> None:
    """The report's tables hold the numbers of the result files, not only the right row names."""
    # only empty fields are missing (pandas would read the pair label "null" as NaN)
    table = pd.read_csv(out / "results" / "oracle_table" / "table.csv", keep_default_na=False, na_values=[""])
    assert int(table["n_seeds"].max()) == 2  # two model seeds: mean ± std over the caches
    pair = table["pair"] if "pair" in table else pd.Series("real", index=table.index)
    real = table[pair == "real"].reset_index(drop=True)
    null = table[pair == "null"].reset_index(drop=True)
    rows = _markdown_rows(report, "## Scale layer on the test split")
    assert [r["method"] for r in rows] == list(real["method"])

    def pairs(row: pd.Series) -> list[tuple[float, float]]:  # (mean, std) of every metric of a CSV row
        return [(row[m], row[f"{m}_std"]) for m in row.index if f"{m}_std" in row.index and pd.notna(row[m])]

    for i, row in enumerate(rows):
        _assert_cell(row["overall"], real.iloc[i], "overall_mae")
        # every other "mean ± std" cell (subsets, the null pair's columns, excess over null) is a
        # number pair of this method's CSV rows, whatever its column is called
        candidates = pairs(real.iloc[i]) + (pairs(null.iloc[i]) if len(null) == len(real) else [])
        shown = [cell for cell in row.values() if "±" in cell]
        assert len(shown) >= 3
        for cell in shown:
            assert any(_numbers(cell) == pytest.approx(list(c), abs=0.05 + 1e-9) for c in candidates), (
                row["method"],
                cell,
            )
        if pd.notna(real["gain_recovered"].iloc[i]):
            assert float(row["gap recovered"]) == pytest.approx(
                real["gain_recovered"].iloc[i], abs=0.005 + 1e-9
            )

    records = {
        (r["run"], r["model_seed"]): r for r in json.loads((out / "runs" / "training.json").read_text())
    }
    rows = _markdown_rows(report, "## Training")
    assert len(rows) == len(records) == len(TRAINING)
    for row in rows:
        record = records[(row["run"], int(row["model seed"]))]
        assert int(row["training seed"]) == record["train_seed"]
        assert row["epochs"] == f"{record['epochs']}/{record['epochs_planned']}"
        assert row["optimizer steps"] == f"{record['steps']}/{record['steps_planned']}"
        assert float(row["seconds"]) == pytest.approx(record["train_s"], abs=0.5 + 1e-9)
        assert row["safety stop"] == "not fired"
        assert float(row["best val force MAE (meV/Å)"]) == pytest.approx(
            record["best_val_force_mae_meV_A"], abs=0.05 + 1e-9
        )
    assert f"All {len(records)} runs complete" in report

    stages = json.loads((out / STATE).read_text())
    timing = {r["stage"]: r for r in _markdown_rows(report, "## Timings")}
    for name in TRAINING | {"data", "predict_s0", "study_oracle_table"}:
        assert float(timing[name]["seconds"]) == pytest.approx(stages[name]["elapsed_s"], abs=0.5 + 1e-9)


def test_train_branch_safety_stop_marks_the_run_incomplete_and_a_rerun_finishes_it(tmp_path):
    """The wall-clock limit is only a safety stop: when it fires the run is incomplete (the stage is not
    valid, the report says so) and the next run continues it to the same end as an uninterrupted run."""
    data = random_frames(n_atoms=16, box=8.0, n_frames=12, seed=0, triclinic=False).save(tmp_path / "d.npz")
    plan = BranchPlan("short", SMALL, epochs=2, expected_minutes=1e-8)
    job = TrainJob(plan, tmp_path / "cut", "k", 0, data, (0.5, 0.25, 0.25), "cpu", progress=False)
    message, _ = train_branch(job)
    record = json.loads((tmp_path / "cut" / TRAINING_RECORD).read_text())
    assert "INCOMPLETE" in message and not record["complete"] and record["stop_reason"] == "time_budget"
    assert record["steps"] == 1 and record["steps_planned"] == 12 and not _trained(tmp_path / "cut")

    report = tmp_path / "report.md"
    report.write_text("# report\n\n## Timings\n")
    _add_training_section(report, [{"stage": "train_short_s0", **record}])
    text = report.read_text()
    assert (
        "INCOMPLETE" in text
        and "1 run(s) incomplete" in text
        and text.index("## Training") < text.index("## Timings")
    )

    # same key (the safety stop is not part of it): the run resumes and completes
    message, _ = train_branch(dataclasses.replace(job, plan=dataclasses.replace(plan, expected_minutes=10.0)))
    record = json.loads((tmp_path / "cut" / TRAINING_RECORD).read_text())
    assert (
        record["complete"] and record["steps"] == 12 and record["epochs"] == 2 and _trained(tmp_path / "cut")
    )
    assert plan.key() == dataclasses.replace(plan, expected_minutes=10.0).key()
    # ... and ends exactly where an uninterrupted run ends (one thread: bit for bit)
    whole = dataclasses.replace(
        job, run_dir=tmp_path / "whole", plan=dataclasses.replace(plan, expected_minutes=None)
    )
    train_branch(whole)
    columns = ["epoch", "train_loss", "val_force_mae_meV_A", "lr"]
    cut = pd.read_csv(tmp_path / "cut" / "history.csv", dtype=str)[columns]
    assert cut.equals(pd.read_csv(tmp_path / "whole" / "history.csv", dtype=str)[columns])


def test_config_names_runs_as_the_cache_does():
    with pytest.raises(ValueError, match="name it 'short_2'"):
        ReproduceConfig(
            quick=True, seed=0, data={}, split_fractions=(0.5, 0.25, 0.25), model_seeds=(0,), muse=False,
            branches=(SHORT, BranchPlan("long", SMALL, epochs=1), dataclasses.replace(SHORT, seed_offset=7)),
        )  # fmt: skip
    twin = SHORT.null_twin()
    assert (twin.run_name, twin.seed_offset, twin.epochs, twin.options) == ("short_2", 1000, 1, SMALL)


def test_pipeline_skips_forces_and_validates(tmp_path):
    calls = []
    pipe = Pipeline(tmp_path, log=lambda line: None)
    pipe.total = 3
    pipe.run("a", "k1", lambda: calls.append("a"))
    pipe.run("b", "k1", lambda: calls.append("b"), valid=lambda: True)
    again = Pipeline(tmp_path, force=("b",), log=lambda line: None)
    again.run("a", "k1", lambda: calls.append("a2"))  # same key: skipped
    again.run("b", "k1", lambda: calls.append("b2"))  # forced
    again.run("a", "k2", lambda: calls.append("a3"))  # new key: redone
    third = Pipeline(tmp_path, log=lambda line: None)
    third.run("b", "k1", lambda: calls.append("b3"), valid=lambda: False)  # output gone: redone
    assert calls == ["a", "b", "b2", "a3", "b3"]


def test_interrupted_stage_is_redone(tmp_path):
    pipe = Pipeline(tmp_path, log=lambda line: None)

    def killed():
        raise KeyboardInterrupt

    pipe.run("fast", "k", lambda: None)
    with pytest.raises(KeyboardInterrupt):
        pipe.run("slow", "k", killed)
    assert set(json.loads((tmp_path / STATE).read_text())) == {"fast"}
    done = []
    Pipeline(tmp_path, log=lambda line: None).run("slow", "k", lambda: done.append(1))
    assert done == [1]


def test_quick_settings_fit_the_demo_budget():
    """make demo must finish in under 15 minutes on 2 cores (with ~45 s of installation and ~100 s of
    data): budgets in epochs, equal steps for every branch, three seeds of the real and the null pair."""
    quick, full = make_config(quick=True), make_config(quick=False)
    assert (
        quick.data["n_frames"] <= 80 and quick.data["box_nm"] <= 2.5 and quick.data["equilibration_ps"] <= 5
    )
    assert quick.model_seeds == (0, 1, 2) and full.model_seeds == (0, 1, 2)
    for config in (quick, full):
        runs = [b.run_name for b in config.branches]
        assert (
            runs == ["short", "long", "short_2", "muse"] and config.muse
        )  # anchors first, then the null twin
        assert len({b.epochs for b in config.branches}) == 1  # equal compute, counted in optimiser steps
        assert len({(b.batch_size, b.lr) for b in config.branches}) == 1
        assert all(b.patience is None for b in config.branches)  # every run takes its whole budget
        null = config.branches[2]
        assert null.name == "short" and null.seed_offset > max(config.model_seeds)
        assert null.key() == {**config.branches[0].key(), "seed_offset": null.seed_offset, "run": "short_2"}
        # the wall clock is only a generous safety stop, outside the stage key
        for plan in config.branches:
            assert plan.safety_minutes == pytest.approx(6 * plan.expected_minutes)
            assert "expected_minutes" not in plan.key() and "safety_factor" not in plan.key()
    assert [b.first_seed_only for b in quick.branches] == [False, False, False, True]  # MuSE: seed 0 only
    assert quick.branches[0].options["n_interactions"] == 1 and quick.branches[0].epochs >= 5
    # two single-thread processes: the expected training time (measured per epoch, see the config) is
    # at most 6 minutes of wall time, so the demo stays near 12 minutes with prediction and studies
    expected = sum(
        b.expected_minutes * (len(quick.model_seeds) if not b.first_seed_only else 1) for b in quick.branches
    )
    assert expected / 2 <= 6.0
    assert (
        full.data["n_frames"] > quick.data["n_frames"] and full.branches[0].epochs > quick.branches[0].epochs
    )


def _job(argument):
    if argument == "bad":
        raise ValueError("no such branch")
    return f"    ran {argument}", 0.5


def test_parallel_stages_record_each_and_report_failures(tmp_path):
    lines: list[str] = []
    pipe = Pipeline(tmp_path, log=lines.append)
    pipe.total = 3
    stages = [ParallelStage(name, "k", _job, name) for name in ("a", "b", "bad")]
    with pytest.raises(RuntimeError, match="bad: ValueError: no such branch"):
        pipe.run_parallel(stages, workers=2, progress=False)
    state = json.loads((tmp_path / STATE).read_text())
    assert set(state) == {"a", "b"} and state["a"]["elapsed_s"] == 0.5  # finished stages are kept
    assert "    ran a" in lines
    # rerun: the recorded stages are up to date, only the failed one runs again (here, in this process)
    again = Pipeline(tmp_path, log=lines.append)
    again.total = 3
    with pytest.raises(ValueError, match="no such branch"):
        again.run_parallel(stages, workers=2, progress=False)
    assert set(again.timings) == {"a", "b"} and not any(t["ran"] for t in again.timings.values())


def _slow_job(marker):
    import time
    from pathlib import Path

    time.sleep(60)
    Path(marker).write_text("finished")
    return "", 60.0


def test_interrupt_stops_running_and_queued_stages(tmp_path, monkeypatch):
    """Ctrl-C while branches train side by side: nothing queued starts, the running workers stop
    (their checkpoints let the next run resume), and no stage is recorded as done."""
    import concurrent.futures
    import time

    calls = []

    def interrupted_wait(futures, timeout=None, return_when=None):
        calls.append(1)
        time.sleep(2.0)  # let the workers start their jobs
        raise KeyboardInterrupt

    monkeypatch.setattr(concurrent.futures, "wait", interrupted_wait)
    pipe = Pipeline(tmp_path, log=lambda line: None)
    pipe.total = 3
    markers = [tmp_path / f"{name}.done" for name in "abc"]
    stages = [ParallelStage(m.stem, "k", _slow_job, str(m)) for m in markers]
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        pipe.run_parallel(stages, workers=2, progress=False)
    assert time.perf_counter() - start < 50  # the 60 s jobs did not run to their end
    assert calls == [1] and not any(m.exists() for m in markers)
    assert not (tmp_path / STATE).exists()
