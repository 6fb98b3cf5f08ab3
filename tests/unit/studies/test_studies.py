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
from scalepool.scales import CONTINUOUS_ORACLE, HARD_ORACLE, NULL_PREFIX, REFINED_ORACLE, synthetic_cache
from scalepool.studies import STUDIES, run_study, study_main
from scalepool.units import EV_TO_MEV

REPO = Path(__file__).resolve().parents[3]
#: studies that read prediction caches (the Hessian study reads a dataset and runs; its own tests)
CACHE_STUDIES = [name for name, study in STUDIES.items() if study.inputs == "pred"]
#: Options that keep every study to about a second on the tiny caches.
TINY = {
    "oracle_table": {"router_steps": 20, "soft_steps": 10, "points": 300},
    "routers": {"router_steps": 20, "points": 300},
    "generator_swap": {"router_steps": 20, "soft_steps": 10},
    "search": {"n_trials": 12, "router_trials": 2, "spaces": "pool+refine"},
    "branch_comparison": {"parity_points": 200},
    "pool_refinement": {"search_trials": 8},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The routers' small networks run several times faster on one thread of a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cache(seed: int = 0, muse: bool = False) -> PredictionCache:
    """10 frames of 60 atoms; with ``muse`` a MuSE branch, otherwise ``short_2``, a second
    "run" of the short branch (the short forces plus 0.05 eV/Å noise) for the null control."""
    cache = synthetic_cache(n_frames=10, n_atoms=60, n_ions=4, seed=seed, true_scales=(0.0, 0.5, 1.0))
    rng = np.random.default_rng(seed + 10)
    f0, f1 = cache.anchor_forces()
    if muse:
        extra = {"muse": f0 + 0.5 * (f1 - f0) + 0.05 * rng.normal(size=f0.shape)}
    else:
        extra = {"short_2": f0 + 0.05 * rng.normal(size=f0.shape)}
    return dataclasses.replace(cache, branches={**cache.branches, **extra}, meta=dict(cache.meta))


def split_arrays(cache: PredictionCache, anchors=None):
    """``(a, d)``: per-atom residuals ``F_ref - F_0`` and ``F_1 - F_0`` of the test split, (atoms, 3) eV/Å."""
    test = cache.frames("test")
    f0, f1 = (cache.branches[name][test].astype(np.float64) for name in anchors or cache.anchors)
    return (cache.forces_ref[test].astype(np.float64) - f0).reshape(-1, 3), (f1 - f0).reshape(-1, 3)


def brute_force(cache: PredictionCache, pool=None, anchors=None) -> tuple[float, np.ndarray]:
    """Oracle test MAE (meV/Å) and per-atom scales by exhaustive search, independent of the
    package: over ``pool``, or for ``pool=None`` over [0, 1] (the convex piecewise-linear
    per-atom loss is smallest at 0, 1 or a clipped breakpoint a_k / d_k)."""
    a, d = split_arrays(cache, anchors)
    if pool is None:
        scales = np.concatenate([np.clip(np.divide(a, d, out=np.zeros_like(a), where=d != 0), 0, 1),
                                 np.broadcast_to([0.0, 1.0], (len(a), 2))], axis=1)  # fmt: skip
    else:
        scales = np.broadcast_to(np.asarray(list(pool), float), (len(a), len(pool)))
    loss = np.abs(scales[:, :, None] * d[:, None, :] - a[:, None, :]).sum(-1)  # (atoms, K)
    best = np.argmin(loss, axis=1)
    return 1e3 * loss.min(axis=1).sum() / a.size, np.take_along_axis(scales, best[:, None], 1)[:, 0]


def branch_mae(cache: PredictionCache, name: str) -> float:
    test = cache.frames("test")
    return 1e3 * float(np.abs(cache.branches[name][test].astype(float) - cache.forces_ref[test]).mean())


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
        # the deployable study needs trained runs (tests/unit/scales/test_deployable.py): on synthetic caches it skips
        assert record["outputs"] or (name == "deployable" and record["status"].startswith("skipped")), name
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
    assert {"overall", "ions", "near-ion", "far-from-ions", "Na", "Cl", "O", "H"} <= set(errors.subset)
    summary = pd.read_csv(results / "branch_comparison" / "summary.csv")
    assert (summary.n == 2).all() and (summary.mae_meV_A_std.dropna() >= 0).all()
    assert set(pd.read_csv(results / "branch_comparison" / "parity.csv").branch) == {
        "short",
        "long",
        "short_2",
    }


def test_oracle_table_orders_and_curves(results, caches):
    table = pd.read_csv(results / "oracle_table" / "table.csv").set_index("method")
    mae = table.overall_mae
    hard, continuous = mae[HARD_ORACLE], mae[CONTINUOUS_ORACLE]
    assert continuous <= hard <= min(mae["short only (s=0)"], mae["long only (s=1)"]) + 1e-9
    assert mae[REFINED_ORACLE] <= hard + 1e-9
    assert (table.n_seeds == 2).all()
    loaded = [PredictionCache.load(p) for p in caches[:2]]
    # oracle rows: one row each (mean over the two caches), equal to an exhaustive search per atom
    assert hard == pytest.approx(np.mean([brute_force(c, (0.0, 1.0))[0] for c in loaded]), rel=1e-5)
    assert continuous == pytest.approx(np.mean([brute_force(c)[0] for c in loaded]), rel=1e-5)
    curve = pd.read_csv(results / "oracle_table" / "global_s_curve.csv")
    test = curve[curve.split == "test"].set_index("s")
    assert test.overall_mae.loc[0.0] == pytest.approx(mae["short only (s=0)"], rel=1e-6)
    assert test.overall_mae.loc[1.0] == pytest.approx(mae["long only (s=1)"], rel=1e-6)
    # the distance profile holds every test atom of both caches, with the brute-force oracle's mean s
    profile = pd.read_csv(results / "oracle_table" / "oracle_s_vs_distance.csv")
    assert profile.upper_bound.all()
    everything = profile[profile.subset == "all atoms"]
    scales = np.concatenate([brute_force(c)[1] for c in loaded])
    assert everything.n.sum() == scales.size
    assert np.average(everything["mean"], weights=everything.n) == pytest.approx(scales.mean(), abs=1e-6)
    # the synthetic reference gives the closest atoms the largest scale
    rows = everything.sort_values("center")
    assert rows["mean"].iloc[0] > rows["mean"].iloc[-1]


def test_oracle_table_null_control(results, caches, tmp_path):
    """Null rows route short against short_2; gains and excess match an independent recomputation."""
    # only empty fields are missing values (pandas reads the label "null" as NaN by default)
    table = pd.read_csv(results / "oracle_table" / "table.csv", keep_default_na=False, na_values=[""])
    table = table.set_index("method")
    null_hard = NULL_PREFIX + HARD_ORACLE
    assert table.pair[null_hard] == "null" and table.pair[HARD_ORACLE] == "real"
    assert table.upper_bound[null_hard] and table.fitted_on[null_hard] == "test (oracle)"
    assert pd.isna(table.excess_over_null[null_hard])
    loaded = [PredictionCache.load(p) for p in caches[:2]]
    for method, pool in ((HARD_ORACLE, (0.0, 1.0)), (CONTINUOUS_ORACLE, None)):
        gains = {}
        for pair in (("short", "long"), ("short", "short_2")):
            per_cache = []
            for cache in loaded:
                best = min(branch_mae(cache, name) for name in pair)
                per_cache.append(100 * (best - brute_force(cache, pool, pair)[0]) / best)
            gains[pair] = np.array(per_cache)
        assert table.gain_pct[method] == pytest.approx(gains["short", "long"].mean(), rel=1e-4)
        assert table.gain_pct[NULL_PREFIX + method] == pytest.approx(
            gains["short", "short_2"].mean(), rel=1e-4
        )
        paired = gains["short", "long"] - gains["short", "short_2"]
        assert table.excess_over_null[method] == pytest.approx(paired.mean(), rel=1e-4)
        assert table.excess_over_null_std[method] == pytest.approx(paired.std(ddof=1), rel=1e-3)
    gains_csv = pd.read_csv(results / "oracle_table" / "gains.csv", keep_default_na=False, na_values=[""])
    assert set(gains_csv.pair) == {"real", "null"} and "excess_over_null" in gains_csv
    record = read_provenance(results / "oracle_table")
    assert record["null_pair"] == ["short", "short_2"] and "short_2" in record["null_control"]
    # a cache without a second run of the short branch: no null rows, and the provenance says so
    out, _ = run_study("oracle_table", caches[2:], tmp_path / "no_null", **TINY["oracle_table"])
    alone = pd.read_csv(out / "table.csv")
    assert (alone.pair == "real").all() and alone.excess_over_null.isna().all()
    record = read_provenance(out)
    assert record["null_pair"] is None and record["null_control"].startswith("no null control")


def test_pool_refinement_rounds(results, caches):
    loaded = {f"seed{i}": PredictionCache.load(p) for i, p in enumerate(caches[:2])}
    rounds = pd.read_csv(results / "pool_refinement" / "rounds.csv")
    assert rounds.upper_bound.all()
    for label, rows in rounds.groupby("cache"):
        assert np.all(np.diff(rows.val_oracle_loss) <= 1e-9)  # refinement never raises the val loss
        for row in rows.itertuples():  # each round's pool, oracle-routed on test, by exhaustive search
            pool = [float(s) for s in row.pool.strip("{}").split(",")]
            assert row.test_overall_mae == pytest.approx(brute_force(loaded[label], pool)[0], rel=1e-5)
    summary = pd.read_csv(results / "pool_refinement" / "summary.csv")
    assert (summary.test_gap_recovered > 0.5).all() and summary.upper_bound.all()
    reference = pd.read_csv(results / "pool_refinement" / "reference_pools.csv").set_index("pool")
    assert reference.upper_bound.all()
    hard = np.array([brute_force(c, (0.0, 1.0))[0] for c in loaded.values()])
    continuous = np.array([brute_force(c)[0] for c in loaded.values()])
    assert reference.overall_mae[CONTINUOUS_ORACLE] == pytest.approx(continuous.mean(), rel=1e-5)
    assert reference.overall_mae["anchors {0,1}"] == pytest.approx(hard.mean(), rel=1e-5)


def test_equal_size_pools(results, caches):
    table = pd.read_csv(results / "pool_refinement" / "equal_size_pools.csv")
    assert table.upper_bound.all() and (table.n == 2).all()
    methods = {size: set(rows.method) for size, rows in table.groupby("size")}
    searched = "optuna search (val, 8 trials)"
    base = {"loss-guided refinement (val)", "uniform grid", searched}
    assert methods == {5: base, 7: base | {"paper {0,.125,.25,.375,.5,.75,1}"}, 9: base}
    rows = table.set_index(["size", "method"])
    loaded = [PredictionCache.load(p) for p in caches[:2]]
    hard = np.array([brute_force(c, (0.0, 1.0))[0] for c in loaded])
    continuous = np.array([brute_force(c)[0] for c in loaded])
    for size in (5, 7, 9):
        uniform = np.array([brute_force(c, np.linspace(0, 1, size))[0] for c in loaded])
        row = rows.loc[(size, "uniform grid")]
        assert row.overall_mae == pytest.approx(uniform.mean(), rel=1e-5) and row.n_scales == size
        gap = (hard - uniform) / (hard - continuous)
        assert row.gap_recovered == pytest.approx(gap.mean(), rel=1e-5)
        assert row.gap_recovered_std == pytest.approx(gap.std(ddof=1), rel=1e-4)
        assert 2 < rows.loc[(size, "loss-guided refinement (val)")].n_scales <= size
        assert rows.loc[(size, searched)].n_scales == size
    paper = rows.loc[(7, "paper {0,.125,.25,.375,.5,.75,1}")]
    expected = np.mean([brute_force(c, (0, 0.125, 0.25, 0.375, 0.5, 0.75, 1))[0] for c in loaded])
    assert paper.overall_mae == pytest.approx(expected, rel=1e-5)


def test_routers_against_oracles(results, caches):
    table = pd.read_csv(results / "routers" / "routers.csv")
    assert set(table.cache) == {"seed0", "seed1"}
    # learned routers once per seed, oracles (seed-free) once per cache
    learned = table[~table.upper_bound]
    assert set(learned.seed) == {0, 1} and len(learned) == 2 * 2 * 2
    assert table[table.upper_bound].seed.isna().all() and len(table[table.upper_bound]) == 2 * 2
    # the continuous oracle of cache seed0 against an exhaustive per-atom search
    oracle = table[table.method.str.contains("continuous oracle") & (table.cache == "seed0")]
    assert oracle.upper_bound.all()
    expected = brute_force(PredictionCache.load(caches[0]))[0]
    np.testing.assert_allclose(oracle.overall_mae, expected, rtol=1e-5)
    choices = pd.read_csv(results / "routers" / "choices.csv")
    assert {"oracle_pool_s", "router_pool_s", "oracle_continuous_s", "router_continuous_s"} <= set(choices)
    # the confusion matrix (first cache, first seed) counts every test atom once, and its
    # diagonal is the agreement reported for that cache and seed
    confusion = pd.read_csv(results / "routers" / "confusion.csv")
    cache = PredictionCache.load(caches[0])
    assert confusion["count"].sum() == cache.frames("test").size * cache.n_atoms
    agreement = json.loads((results / "routers" / "agreement.json").read_text())
    assert len(agreement) == 4
    diagonal = confusion.loc[np.isclose(confusion.oracle_s, confusion.router_s), "count"].sum()
    assert agreement[0]["hard_router_matches_oracle"] == pytest.approx(diagonal / confusion["count"].sum())


def test_report_sets_real_rows_beside_the_null_control(results):
    from scalepool.studies._report import _section_equal_pools, null_verdicts, scale_table_markdown, verdict

    table = pd.read_csv(results / "oracle_table" / "table.csv", keep_default_na=False, na_values=[""])
    table = table.set_index("method")
    real, null = table.loc[HARD_ORACLE], table.loc[NULL_PREFIX + HARD_ORACLE]
    markdown = scale_table_markdown(results).splitlines()
    assert "| null: overall |" in markdown[0] and "| excess over null (pp) |" in markdown[0]
    line = next(row for row in markdown if row.startswith(f"| {HARD_ORACLE} |"))
    assert f"| {null.overall_mae:.1f} ± {null.overall_mae_std:.1f} |" in line
    assert f"| {real.excess_over_null:+.1f} ± {real.excess_over_null_std:.1f} |" in line
    assert not any(row.startswith(f"| {NULL_PREFIX}") for row in markdown)  # null rows sit beside, not below
    verdicts = [row for row in null_verdicts(results) if row.startswith("- ")]
    routed = table[(table.pair == "real") & table.excess_over_null.notna()]
    assert len(verdicts) == len(routed) == 7
    for row, text in zip(routed.itertuples(), verdicts, strict=True):
        beats = row.excess_over_null > 6.314 * row.excess_over_null_std / np.sqrt(2)  # t_0.95 with 1 dof
        assert text.startswith(f"- {row.Index}: excess over null {row.excess_over_null:+.1f} ± ")
        assert text.endswith("the control.") and (": does not beat " in text) != beats
    assert verdict(2.1, 0.8, 3) == "excess over null +2.1 ± 0.8 pp (3 seeds): beats the control"
    assert verdict(1.3, 0.8, 3).endswith("does not beat the control")  # t = 2.8 < t_0.95(2) = 2.92
    assert verdict(1.5, 0.4, 2).endswith("does not beat the control")  # t = 5.3 < t_0.95(1) = 6.31
    assert "one seed" in verdict(-1.0, float("nan"), 1) and verdict(-1.0, float("nan"), 1).endswith(
        "not beat the control"
    )
    equal = "\n".join(_section_equal_pools(results))
    assert "| 7 | paper {0,.125,.25,.375,.5,.75,1} | 7 |" in equal and "upper bounds" in equal


def test_generator_swap_runs_with_muse_and_skips_without(results, caches, tmp_path, capsys):
    comparison = pd.read_csv(results / "generator_swap" / "comparison.csv")
    assert set(comparison.generator) == {"short->muse", "short->long"}
    out, ran = run_study("generator_swap", caches[:1], tmp_path / "swap", **TINY["generator_swap"])
    assert ran and "skipped" in capsys.readouterr().out
    record = read_provenance(out)
    assert record["status"] == "skipped" and "forces_muse" in record["reason"]
    assert is_complete(out) and not (out / "comparison.csv").exists()


def test_search_study(results, caches):
    best = pd.read_csv(results / "search" / "best.csv")
    assert set(best.space) == {"pool", "refine"} and set(best.seed) == {0, 1}
    assert (best.n_finished == 12).all()
    # the best pool's test scores against an exhaustive per-atom search on the searched cache
    cache = PredictionCache.load(caches[0])
    for row in best[best.space == "pool"].itertuples():
        record = json.loads((results / "search" / f"pool_seed{row.seed}_best.json").read_text())
        assert row.test_pool_oracle == pytest.approx(brute_force(cache, record["pool"])[0], rel=1e-5)
    assert best.test_anchor_oracle.to_numpy() == pytest.approx(brute_force(cache, (0.0, 1.0))[0], rel=1e-5)
    assert best.test_continuous_oracle.to_numpy() == pytest.approx(brute_force(cache)[0], rel=1e-5)
    assert (results / "search" / "pool_seed0_trials.csv").exists()


def test_skip_existing_and_invalidation(caches, tmp_path):
    tiny = TINY["pool_refinement"]
    out, ran = run_study("pool_refinement", caches[:1], tmp_path / "p", skip_existing=True, **tiny)
    assert ran
    assert run_study("pool_refinement", caches[:1], tmp_path / "p", skip_existing=True, **tiny) == (
        out,
        False,
    )
    # other settings, or a changed output, mean the result must be redone
    assert run_study("pool_refinement", caches[:1], tmp_path / "p", skip_existing=True, tol=0.01, **tiny)[1]
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
