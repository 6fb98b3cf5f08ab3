"""``scalepool reproduce``: every stage on tiny data, skipping finished stages, redoing invalid ones.

The OpenMM generator is replaced by random frames (its own tests cover it); the
branches are real but tiny, so the whole chain takes seconds.
"""

from __future__ import annotations

import json

import pytest

import scalepool.data
from scalepool.studies import BranchPlan, Pipeline, ReproduceConfig, make_config, reproduce
from scalepool.studies._pipeline import STATE, ParallelStage
from scalepool.testing._systems import random_frames

SMALL = {"n_features": 4, "n_interactions": 1, "n_rbf": 4, "cutoff": 3.0}
FIGURES = ("scale_table", "router_vs_oracle")


def _config() -> ReproduceConfig:
    return ReproduceConfig(
        quick=True,
        seed=0,
        data={"n_frames": 12},
        split_fractions=(0.5, 0.25, 0.25),
        branches=(
            BranchPlan("short", SMALL, epochs=1, max_minutes=1.0),
            BranchPlan("long", SMALL, epochs=1, max_minutes=1.0),
            BranchPlan(
                "muse", {**SMALL, "coarse_nodes": "ions", "coarse_cutoff": 4.0}, epochs=1, max_minutes=1.0
            ),
        ),
        model_seeds=(0,),
        muse=True,
        study_options={
            "search": {"n_trials": 6, "spaces": "pool"},
            "routers": {"router_steps": 10, "points": 100},
            "oracle_table": {"router_steps": 10, "soft_steps": 5, "points": 100},
            "branch_comparison": {"parity_points": 100},
        },
        figures=FIGURES,
        hessian=None,  # needs an OpenMM system: tests/test_muse_hessian.py runs the study
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


def test_reproduce_runs_then_skips_then_redoes_what_is_invalid(tmp_path, fake_openmm):
    lines: list[str] = []
    out = tmp_path / "run"
    timings = reproduce(
        out, config=_config(), progress=False, log=lines.append, figures_dir=tmp_path / "repo_figures", jobs=2
    )
    assert all(info["ran"] for info in timings.values())
    assert any("in 2 worker processes" in line for line in lines)  # the branches trained side by side
    assert {
        "data",
        "train_short_s0",
        "train_long_s0",
        "predict_s0",
        "study_oracle_table",
        "study_search",
        "figures",
    } <= set(timings)
    report = (out / "figures" / "report.md").read_text()
    assert "| continuous oracle (upper bound) |" in report and "![scale_table](scale_table.png)" in report
    assert "| train_short_s0 |" in report
    assert any("MAE on the test split" in line for line in lines)  # the final table is printed
    for name in FIGURES:
        assert (out / "figures" / f"{name}.png").exists() and (out / "figures" / f"{name}.pdf").exists()
    assert sorted(p.name for p in (tmp_path / "repo_figures").iterdir()) == sorted(
        f"{n}.png" for n in FIGURES
    )
    assert (out / "pred" / "seed0.npz").exists() and (out / "runs" / "seed0" / "long" / "best.pt").exists()
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
    """make demo must finish in under 15 minutes on 2 cores: the quick settings stay small."""
    quick, full = make_config(quick=True), make_config(quick=False)
    assert (
        quick.data["n_frames"] <= 80 and quick.data["box_nm"] <= 2.5 and quick.data["equilibration_ps"] <= 5
    )
    assert len(quick.model_seeds) == 1
    assert quick.muse and [b.name for b in quick.branches] == ["short", "long", "muse"]
    # two processes on 2 cores: long (6 min) beside short then MuSE (3 + 3 min): 6 minutes of wall time
    budget = {b.name: b.max_minutes for b in quick.branches}
    assert max(budget["long"], budget["short"] + budget["muse"]) <= 6.0
    assert full.data["n_frames"] > quick.data["n_frames"] and len(full.model_seeds) == 3 and full.muse


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
