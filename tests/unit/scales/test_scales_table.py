"""The scale table, its null control and its CLI."""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import pandas as pd
import pytest
import torch

from scalepool.cli import _scales
from scalepool.data import PredictionCache
from scalepool.scales import (
    CONTINUOUS_ORACLE,
    EXCESS,
    HARD_ORACLE,
    HARD_ROUTER,
    NULL_PREFIX,
    REFINED_ORACLE,
    SOFT_ORACLE,
    scale_table,
    synthetic_cache,
)

FAST = {"router_steps": 100, "soft_steps": 60}
REAL = [
    "short only (s=0)",
    "long only (s=1)",
    "best global s",
    HARD_ORACLE,
    CONTINUOUS_ORACLE,
    REFINED_ORACLE,
    SOFT_ORACLE,
    HARD_ROUTER,
    "learned continuous s",
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cache(seed=0, **kwargs):
    options = {"n_frames": 20, "n_atoms": 150, "noise": 0.01, "rule": "distance", "seed": seed}
    return synthetic_cache(**{**options, **kwargs})


def _noisy_copies(seed: int, structured: bool, sigma: float = 0.05) -> PredictionCache:
    """Branches ``short`` and ``short_2``: one predictor P plus independent noise (sigma eV/Å).

    ``structured``: ``long`` is a genuinely different scale and the reference
    interpolates P and ``long`` with an s* that depends on the nearest-ion
    distance (``synthetic_cache``, rule ``distance``); otherwise ``long`` is a
    third noisy copy of P and the reference is P plus noise.
    """
    cache = _cache(seed, true_scales=(0.0, 0.25, 0.5, 1.0))
    rng = np.random.default_rng(1000 + seed)
    p, f1 = (f.astype(np.float64) for f in cache.anchor_forces())

    def copy():
        return p + sigma * rng.normal(size=p.shape)

    short, short_2 = copy(), copy()
    long, ref = (f1, cache.forces_ref) if structured else (copy(), p + 0.01 * rng.normal(size=p.shape))
    branches = {"short": short, "long": long, "short_2": short_2}
    return dataclasses.replace(cache, forces_ref=ref, branches=branches, meta={})


def _check_rows(table: pd.DataFrame):
    real = table[table.pair == "real"]
    assert list(real.method) == REAL
    mae = dict(zip(real.method, real.overall_mae, strict=True))
    fitted = table.fitted_on.fillna("")  # "" is read back from CSV as NaN
    # every row that reads test labels says so: in its name, its flag and its fitted_on
    assert all(
        ("oracle" in m) == ("(upper bound)" in m) == u == (f == "test (oracle)")
        for m, u, f in zip(table.method, table.upper_bound, fitted, strict=True)
    )
    assert dict(zip(real.method, fitted[real.index], strict=True)) == {
        **dict.fromkeys(REAL[:2], ""),
        "best global s": "val",
        **dict.fromkeys(REAL[3:7], "test (oracle)"),
        **dict.fromkeys(REAL[7:], "train"),
    }
    continuous, hard = mae[CONTINUOUS_ORACLE], mae[HARD_ORACLE]
    assert continuous <= mae[REFINED_ORACLE] <= hard + 1e-9
    assert hard <= min(mae["short only (s=0)"], mae["long only (s=1)"])
    assert real.loc[real.method == CONTINUOUS_ORACLE, "gain_recovered"].item() == pytest.approx(1)
    assert real.loc[real.method.str.startswith("learned"), "gain_recovered"].min() > 0.5
    assert table[["overall_mae", "close_contact_mae", "ion_mae"]].notna().all().all()


def _brute_force(cache: PredictionCache, pool) -> dict[str, float]:
    """Test-split oracle MAEs (meV/Å) by exhaustive search per atom, independent of
    ``scalepool.scales._oracle``: the summed |s d - a| of an atom is convex and piecewise
    linear in s, so its minimum over [0, 1] is at 0, 1 or a clipped breakpoint a_k / d_k;
    a grid of 201 scales is searched too as a check."""
    test = cache.frames("test")
    f0, f1 = (cache.branches[name][test].astype(np.float64) for name in cache.anchors)
    a = (cache.forces_ref[test].astype(np.float64) - f0).reshape(-1, 3)  # (atoms, 3)
    d = (f1 - f0).reshape(-1, 3)
    breaks = np.clip(np.divide(a, d, out=np.zeros_like(a), where=d != 0), 0.0, 1.0)
    grid = np.broadcast_to(np.linspace(0.0, 1.0, 201), (len(a), 201))
    candidates = np.concatenate([breaks, grid], axis=1)  # (atoms, 204)

    def best(scales):  # (atoms, K) -> mean over components of the per-atom minimum, meV/Å
        loss = np.abs(scales[:, :, None] * d[:, None, :] - a[:, None, :]).sum(-1)
        return 1e3 * loss.min(axis=1).sum() / a.size

    pool = np.broadcast_to(np.asarray(list(pool), float), (len(a), len(pool)))
    return {
        "continuous": best(candidates),
        "hard": best(np.broadcast_to([0.0, 1.0], (len(a), 2))),
        "pool": best(pool),
    }


def test_table_on_one_cache():
    cache = _cache()
    table, details = scale_table(cache, return_details=True, **FAST)
    _check_rows(table)
    assert table.attrs["unit"] == "meV/Å" and (table.n_seeds == 1).all()
    assert table.overall_mae_std.isna().all()
    # no short_2 in the cache: no null rows, and the table says why
    assert (table.pair == "real").all() and table.attrs["null_pair"] is None
    assert "short_2" in table.attrs["null_note"] and table[list(EXCESS)].isna().all().all()
    # oracle rows against an exhaustive per-atom search over s
    mae = table.set_index("method").overall_mae
    brute = _brute_force(cache, details[0]["pool"])
    assert mae[CONTINUOUS_ORACLE] == pytest.approx(brute["continuous"], rel=1e-5)
    assert mae[HARD_ORACLE] == pytest.approx(brute["hard"], rel=1e-5)
    assert mae[REFINED_ORACLE] == pytest.approx(brute["pool"], rel=1e-5)
    # the metric is the mean absolute error over all test force components, in meV/Å
    test = cache.frames("test")
    direct = 1e3 * np.abs(cache.branches["short"][test].astype(float) - cache.forces_ref[test]).mean()
    assert table.overall_mae[0] == pytest.approx(direct, rel=1e-6)
    # gain_pct: change against the better single branch of this metric (here, one cache)
    singles = table.overall_mae[:2].min()
    expected = 100 * (singles - mae[HARD_ORACLE]) / singles
    assert table.set_index("method").gain_pct[HARD_ORACLE] == pytest.approx(expected)


def test_best_global_s_against_a_search_on_val():
    """The global s minimises the val MAE (exhaustive over breakpoints), then is scored on test."""
    cache = _cache(seed=3)
    table = scale_table(cache, router_steps=5, soft_steps=5)
    row = table.set_index("method").loc["best global s"]

    def split_arrays(name):
        index = cache.frames(name)
        f0, f1 = (cache.branches[b][index].astype(np.float64).ravel() for b in cache.anchors)
        return cache.forces_ref[index].astype(np.float64).ravel() - f0, f1 - f0

    a, d = split_arrays("val")
    candidates = np.clip(a[d != 0] / d[d != 0], 0, 1)
    losses = np.abs(candidates[:, None] * d[None, :] - a[None, :]).sum(axis=1)
    s = candidates[np.argmin(losses)]
    assert float(row.detail.removeprefix("s=")) == pytest.approx(s, rel=1e-3)
    a, d = split_arrays("test")
    assert row.overall_mae == pytest.approx(1e3 * np.abs(s * d - a).mean(), rel=1e-4)


def test_null_control_sees_genuine_scale_structure():
    """Null pair: two noisy copies of one predictor; real pair: a scale structure depending on
    position.  Every routing row's excess over null is clearly positive."""
    table = scale_table([_noisy_copies(s, structured=True) for s in (0, 1)], router_steps=40, soft_steps=20)
    assert table.attrs["null_pair"] == ["short", "short_2"]
    real, null = table[table.pair == "real"], table[table.pair == "null"]
    assert list(real.method) == REAL
    assert list(null.method) == [
        "null: short only (s=0)",
        "null: short_2 only (s=1)",
        *(NULL_PREFIX + m for m in REAL[2:]),
    ]
    assert (null.upper_bound.to_numpy() == real.upper_bound.to_numpy()).all()
    assert null[list(EXCESS)].isna().all().all() and real[list(EXCESS)][:2].isna().all().all()
    routed = real.iloc[2:]
    # the null pair still gains from oracle routing (the user's observation) ...
    assert null.set_index("method").gain_pct[NULL_PREFIX + HARD_ORACLE] > 3
    # ... but the real pair gains far more, on every routing row, on every seed
    assert (routed.excess_over_null > 15).all(), routed[["method", "excess_over_null"]]
    assert (routed.excess_over_null - 3 * routed.excess_over_null_std > 0).all()
    # excess is the difference of the matched rows' gains (means of paired differences)
    gains = null.set_index(null.method.str.removeprefix(NULL_PREFIX)).gain_pct
    np.testing.assert_allclose(routed.excess_over_null, routed.gain_pct - routed.method.map(gains).to_numpy())
    assert (table.n_seeds == 2).all() and table.excess_over_null_std[routed.index].notna().all()


def test_null_control_of_a_pair_without_structure_is_zero():
    """When the "real" pair is also two noisy copies, no method beats the null control:
    |excess over null| < 3 percentage points on every routing row (tolerance for two seeds
    of 4 test frames x 150 atoms)."""
    table = scale_table([_noisy_copies(s, structured=False) for s in (0, 1)], router_steps=40, soft_steps=20)
    routed = table[(table.pair == "real") & table.excess_over_null.notna()]
    assert len(routed) == len(REAL) - 2
    assert (routed.excess_over_null.abs() < 3).all(), routed[["method", "excess_over_null"]]
    # while both pairs gain a lot from the oracles (routing between any two predictors)
    assert (routed.set_index("method").gain_pct[[HARD_ORACLE, CONTINUOUS_ORACLE]] > 10).all()


def test_null_pair_arguments():
    cache = _cache()
    with pytest.raises(ValueError, match="null pair"):
        scale_table(cache, null_pair=("short", "nope"))
    with pytest.raises(ValueError, match="two different branches"):
        scale_table(cache, null_pair=("short", "short"))


def test_table_over_seeds_and_cli(tmp_path, capsys):
    paths = [_noisy_copies(seed, structured=True).save(tmp_path / f"pred{seed}.npz") for seed in (0, 1)]
    parser = argparse.ArgumentParser(prog="scalepool")
    _scales.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "table.csv"
    args = parser.parse_args(
        ["table", "--pred", *map(str, paths), "--csv", str(out), "--router-steps", "60",
         "--history", str(tmp_path / "hist")]
    )  # fmt: skip
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "MAE on the test split, meV/Å (2 seed(s))" in printed and " ± " in printed
    assert "null control" in printed and f"{NULL_PREFIX}{HARD_ORACLE}" in printed
    assert "excess over null, pp" in printed
    table = pd.read_csv(out, keep_default_na=False, na_values=[""])
    assert table.columns[0] == "method" and (table.n_seeds == 2).all()
    assert {"pair", "upper_bound", "fitted_on", "excess_over_null", "excess_over_null_std"} <= set(table)
    _check_rows(table)
    assert (table.overall_mae_std > 0).all()
    assert (tmp_path / "hist" / "pred0.refinement.json").exists()
    # --null-pair none: the real rows only
    args = parser.parse_args(["table", "--pred", str(paths[0]), "--router-steps", "5",
                              "--null-pair", "none"])  # fmt: skip
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert NULL_PREFIX not in printed and "null_pair=None" in printed


def test_table_needs_three_splits():
    cache = _cache()
    with pytest.raises(ValueError, match="split 'val' is empty"):
        scale_table(cache.select("train"))


def test_table_at_testbed_size():
    """100 frames x 1,500 atoms (18 ions), the size of the NaCl testbed; prints the time."""
    cache = synthetic_cache(n_frames=100, n_atoms=1500, n_ions=18, noise=0.02, rule="distance", seed=0)
    start = time.perf_counter()
    table, details = scale_table(cache, return_details=True)
    elapsed = time.perf_counter() - start
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in details[0]["timings_s"].items())
    print(f"\nscale table, 100 frames x 1,500 atoms: {elapsed:.1f} s ({timings})")
    _check_rows(table)


def test_scale_settings_are_checked_once_with_the_setting_named():
    from scalepool.scales import ScaleSettings
    from scalepool.studies import STUDIES, run_study

    with pytest.raises(ValueError, match="granularity must be one of"):
        ScaleSettings.validated(granularity="molecule")
    with pytest.raises(ValueError, match=r"unknown scale setting\(s\) \['tolerance'\]"):
        ScaleSettings.validated(tolerance=0.1)
    # the studies' defaults are the settings' defaults (stated once)
    assert STUDIES["oracle_table"].options["tol"].default == ScaleSettings.tol
    with pytest.raises(ValueError, match="max_size must be at least 2"):
        run_study("oracle_table", ["unused.npz"], "unused", max_size=1)
