"""Studies on tiny synthetic caches: values, provenance, skipping, scripts, a clean work tree."""

from __future__ import annotations

import dataclasses
import json
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from scalepool.data import PredictionCache
from scalepool.provenance import file_sha256, is_complete, read_provenance
from scalepool.scales import synthetic_cache
from scalepool.studies import STUDIES, run_study, study_main
from scalepool.units import EV_TO_MEV

REPO = Path(__file__).resolve().parents[1]
#: studies that read prediction caches (the Hessian study reads a dataset and runs; its own tests)
CACHE_STUDIES = [name for name, study in STUDIES.items() if study.inputs == "pred"]
#: Options that keep every study to about a second on the tiny caches.
TINY = {
    "oracle_table": {"router_steps": 20, "soft_steps": 10, "points": 300},
    "routers": {"router_steps": 20, "points": 300},
    "generator_swap": {"router_steps": 20, "soft_steps": 10},
    "search": {"n_trials": 12, "router_trials": 2, "spaces": "pool+refine"},
    "branch_comparison": {"parity_points": 200},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The routers' small networks run several times faster on one thread of a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cache(seed: int = 0, muse: bool = False) -> PredictionCache:
    cache = synthetic_cache(n_frames=10, n_atoms=60, n_ions=4, seed=seed, true_scales=(0.0, 0.5, 1.0))
    if muse:
        rng = np.random.default_rng(seed + 10)
        f0, f1 = cache.anchor_forces()
        branches = {**cache.branches, "muse": f0 + 0.5 * (f1 - f0) + 0.05 * rng.normal(size=f0.shape)}
        cache = dataclasses.replace(cache, branches=branches, meta=dict(cache.meta))
    return cache


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    folder = tmp_path_factory.mktemp("caches")
    paths = [tiny_cache(seed).save(folder / f"seed{seed}.npz") for seed in (0, 1)]
    paths.append(tiny_cache(2, muse=True).save(folder / "muse.npz"))
    return paths


@pytest.fixture(scope="module")
def results(caches, tmp_path_factory):
    """Every study run once on the two plain caches (the swap study on the MuSE one)."""
    root = tmp_path_factory.mktemp("results")
    for name in CACHE_STUDIES:
        preds = caches[2:] if name == "generator_swap" else caches[:2]
        run_study(name, preds, root / name, seeds=(0, 1), **TINY.get(name, {}))
    return root


def test_every_study_writes_provenance(results, caches):
    for name in CACHE_STUDIES:
        record = read_provenance(results / name)
        assert record is not None, name
        assert record["study"] == name and record["seeds"] == [0, 1]
        assert record["created"].endswith("+00:00") and record["versions"]["optuna"]
        assert "git_commit" in record and record["parameters"]["options"]
        preds = caches[2:] if name == "generator_swap" else caches[:2]
        assert [i["sha256"] for i in record["inputs"]] == [file_sha256(p) for p in preds]
        assert record["outputs"], name
        for output, digest in record["outputs"].items():
            assert file_sha256(results / name / output) == digest
        assert is_complete(results / name)


def test_branch_comparison_matches_direct_errors(results, caches):
    errors = pd.read_csv(results / "branch_comparison" / "errors.csv")
    cache = PredictionCache.load(caches[0]).select("test")
    for branch, forces in cache.branches.items():
        expected = EV_TO_MEV * np.abs(forces.astype(float) - cache.forces_ref).mean()
        row = errors[(errors.cache == "seed0") & (errors.split == "test") & (errors.model == branch)]
        assert row.set_index("subset").loc["overall", "mae_meV_A"] == pytest.approx(expected, rel=1e-6)
    assert {"overall", "ions", "close", "non-close", "Na", "Cl", "O", "H"} <= set(errors.subset)
    summary = pd.read_csv(results / "branch_comparison" / "summary.csv")
    assert (summary.n == 2).all() and (summary.mae_meV_A_std.dropna() >= 0).all()
    assert set(pd.read_csv(results / "branch_comparison" / "parity.csv").branch) == {"short", "long"}


def test_oracle_table_orders_and_curves(results):
    table = pd.read_csv(results / "oracle_table" / "table.csv").set_index("method")
    mae = table.overall_mae
    hard, continuous = mae["oracle hard routing {0,1} (upper bound)"], mae["continuous oracle (upper bound)"]
    assert continuous <= hard <= min(mae["short only (s=0)"], mae["long only (s=1)"]) + 1e-9
    assert mae["refined-pool oracle (upper bound)"] <= hard + 1e-9
    assert (table.n_seeds == 2).all()
    curve = pd.read_csv(results / "oracle_table" / "global_s_curve.csv")
    test = curve[curve.split == "test"].set_index("s")
    assert test.overall_mae.loc[0.0] == pytest.approx(mae["short only (s=0)"], rel=1e-6)
    assert test.overall_mae.loc[1.0] == pytest.approx(mae["long only (s=1)"], rel=1e-6)
    profile = pd.read_csv(results / "oracle_table" / "oracle_s_vs_distance.csv")
    assert set(profile.subset) == {"all atoms", "ions"} and profile["mean"].between(0, 1).all()
    # the synthetic reference gives the closest atoms the largest scale
    rows = profile[profile.subset == "all atoms"].sort_values("center")
    assert rows["mean"].iloc[0] > rows["mean"].iloc[-1]
    gains = pd.read_csv(results / "oracle_table" / "gains.csv")
    assert gains.overall_change_pct.iloc[0] == pytest.approx(0.0) or gains.overall_change_pct.iloc[
        1
    ] == pytest.approx(0.0)


def test_pool_refinement_rounds(results):
    rounds = pd.read_csv(results / "pool_refinement" / "rounds.csv")
    for _, rows in rounds.groupby("cache"):
        assert rows.pool.iloc[0] == "{0, 1}" and rows.test_gap_recovered.iloc[0] == pytest.approx(0.0)
        assert np.all(np.diff(rows.val_oracle_loss) <= 1e-9)  # refinement never raises the val loss
    assert (pd.read_csv(results / "pool_refinement" / "summary.csv").test_gap_recovered > 0.5).all()
    reference = pd.read_csv(results / "pool_refinement" / "reference_pools.csv").set_index("pool")
    assert reference.loc["continuous oracle", "overall_mae"] <= reference.loc["anchors {0,1}", "overall_mae"]
    history = json.loads(next((results / "pool_refinement").glob("history_*.json")).read_text())
    assert history["rounds"][0]["pool"] == [0.0, 1.0]


def test_routers_against_oracles(results):
    table = pd.read_csv(results / "routers" / "routers.csv")
    assert set(table.seed) == {0, 1} and set(table.cache) == {"seed0", "seed1"}
    continuous = table[table.method == "continuous oracle (upper bound)"].overall_mae.min()
    learned = table[~table.upper_bound]
    assert (learned.overall_mae >= continuous - 1e-9).all()
    choices = pd.read_csv(results / "routers" / "choices.csv")
    assert {"oracle_pool_s", "router_pool_s", "oracle_continuous_s", "router_continuous_s"} <= set(choices)
    confusion = pd.read_csv(results / "routers" / "confusion.csv")
    assert confusion["count"].sum() > 0
    agreement = json.loads((results / "routers" / "agreement.json").read_text())
    assert len(agreement) == 4 and all(0 <= a["hard_router_matches_oracle"] <= 1 for a in agreement)


def test_generator_swap_runs_with_muse_and_skips_without(results, caches, tmp_path, capsys):
    comparison = pd.read_csv(results / "generator_swap" / "comparison.csv")
    assert set(comparison.generator) == {"short->muse", "short->long"}
    out, ran = run_study("generator_swap", caches[:1], tmp_path / "swap", **TINY["generator_swap"])
    assert ran and "skipped" in capsys.readouterr().out
    record = read_provenance(out)
    assert record["status"] == "skipped" and "forces_muse" in record["reason"]
    assert is_complete(out) and not (out / "comparison.csv").exists()


def test_search_study(results):
    best = pd.read_csv(results / "search" / "best.csv")
    assert set(best.space) == {"pool", "refine"} and set(best.seed) == {0, 1}
    assert (best.n_finished == 12).all()
    # a pool chosen on val never does worse on test than... the anchors' oracle it starts from
    assert (best.test_pool_oracle <= best.test_anchor_oracle + 1e-6).all()
    assert (results / "search" / "pool_seed0_trials.csv").exists()


def test_skip_existing_and_invalidation(caches, tmp_path):
    out, ran = run_study("pool_refinement", caches[:1], tmp_path / "p", skip_existing=True)
    assert ran
    assert run_study("pool_refinement", caches[:1], tmp_path / "p", skip_existing=True) == (out, False)
    # other settings, or a changed output, mean the result must be redone
    assert run_study("pool_refinement", caches[:1], tmp_path / "p", skip_existing=True, tol=0.01)[1]
    (out / "rounds.csv").write_text("tampered\n")
    assert not is_complete(out)
    with pytest.raises(ValueError, match="has no option"):
        run_study("pool_refinement", caches[:1], tmp_path / "p", no_such_option=1)


def _git_status() -> set[str]:
    result = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO, capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip("not a git checkout")
    return set(result.stdout.splitlines())


def test_scripts_write_only_their_results_folder(caches, tmp_path, monkeypatch, capsys):
    """Every studies/<name>.py runs on tiny data, from an unrelated working directory,
    and leaves nothing behind outside its --out folder (repository and cwd unchanged)."""
    before = _git_status()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for name in CACHE_STUDIES:
        script = REPO / "studies" / f"{name}.py"
        out = tmp_path / "results" / name
        options = []
        for key, value in TINY.get(name, {}).items():
            options += [f"--{key.replace('_', '-')}", str(value)]
        pred = caches[2] if name == "generator_swap" else caches[0]
        argv = [str(script), "--pred", str(pred), "--out", str(out), "--seeds", "0", *options]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as stop:
            runpy.run_path(str(script), run_name="__main__")
        assert stop.value.code == 0, capsys.readouterr().out
        assert read_provenance(out)["command"][0] == f"{name}.py"
    assert list(cwd.iterdir()) == []
    assert _git_status() == before


def test_script_runs_alone_in_a_subprocess(caches, tmp_path, capsys):
    out = tmp_path / "bc"
    result = subprocess.run(
        [sys.executable, str(REPO / "studies" / "branch_comparison.py"), "--pred", str(caches[0]), "--out", str(out),
         "--parity-points", "50"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and is_complete(out)
    # a missing input is a clean error (exit code 2 and a message), not a traceback
    code = study_main("routers", ["--pred", str(tmp_path / "none.npz"), "--out", str(tmp_path / "r")])
    assert code == 2 and "prediction cache not found" in capsys.readouterr().err
