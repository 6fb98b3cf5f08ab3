"""The scale table and its CLI."""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import pytest
import torch

from scalepool.cli import _scales
from scalepool.scales import scale_table, synthetic_cache

FAST = {"router_steps": 100, "soft_steps": 60}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cache(seed=0, **kwargs):
    options = {"n_frames": 20, "n_atoms": 150, "noise": 0.01, "rule": "distance", "seed": seed}
    return synthetic_cache(**{**options, **kwargs})


def _check_rows(table: pd.DataFrame):
    mae = dict(zip(table.method, table.overall_mae, strict=True))
    assert list(table.method) == [
        "short only (s=0)",
        "long only (s=1)",
        "best global s",
        "oracle hard routing {0,1} (upper bound)",
        "continuous oracle (upper bound)",
        "refined-pool oracle (upper bound)",
        "soft-updated-pool oracle (upper bound)",
        "learned hard router",
        "learned continuous s",
    ]
    # every row that reads test labels says so, in its name and its flag
    assert all(
        ("oracle" in m) == ("(upper bound)" in m) == u
        for m, u in zip(table.method, table.upper_bound, strict=True)
    )
    assert set(table.fitted_on[~table.upper_bound]) == {"-", "val", "train"}
    continuous = mae["continuous oracle (upper bound)"]
    hard = mae["oracle hard routing {0,1} (upper bound)"]
    assert continuous <= mae["refined-pool oracle (upper bound)"] <= hard + 1e-9
    assert hard <= min(mae["short only (s=0)"], mae["long only (s=1)"])
    assert table.loc[
        table.method == "continuous oracle (upper bound)", "gain_recovered"
    ].item() == pytest.approx(1)
    assert table.loc[table.method.str.startswith("learned"), "gain_recovered"].min() > 0.5
    assert table[["overall_mae", "close_contact_mae", "ion_mae"]].notna().all().all()


def test_table_on_one_cache():
    table, details = scale_table(_cache(), return_details=True, **FAST)
    _check_rows(table)
    assert table.attrs["unit"] == "meV/Å" and (table.n_seeds == 1).all()
    assert table.overall_mae_std.isna().all()
    pool = details[0]["pool"]
    row = table.set_index("method").loc["refined-pool oracle (upper bound)"]
    assert row.detail == f"pool={pool.label()}" and {0.0, 1.0} <= set(pool.scales)
    # the metric is the mean absolute error over all test force components, in meV/Å
    cache = _cache()
    test = cache.frames("test")
    direct = 1e3 * np.abs(cache.branches["short"][test].astype(float) - cache.forces_ref[test]).mean()
    assert table.overall_mae[0] == pytest.approx(direct, rel=1e-6)


def test_table_over_seeds_and_cli(tmp_path, capsys):
    paths = [_cache(seed).save(tmp_path / f"pred{seed}.npz") for seed in (0, 1)]
    parser = argparse.ArgumentParser(prog="scalepool")
    _scales.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "table.csv"
    args = parser.parse_args(
        [
            "scales",
            "table",
            "--pred",
            *map(str, paths),
            "--csv",
            str(out),
            "--router-steps",
            "100",
            "--history",
            str(tmp_path / "hist"),
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "MAE on the test split, meV/Å (2 seed(s))" in printed and " ± " in printed
    table = pd.read_csv(out, keep_default_na=False, na_values=[""])
    assert table.columns[0] == "method" and (table.n_seeds == 2).all()
    _check_rows(table)
    assert (table.overall_mae_std > 0).all()
    assert (tmp_path / "hist" / "pred0.refinement.json").exists()


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_table_on_cuda_matches_cpu_oracles():
    cache = _cache()
    cpu = scale_table(cache, **FAST)
    gpu = scale_table(cache, device="cuda", **FAST)
    _check_rows(gpu)
    oracle = cpu.method.str.contains("upper bound") & ~cpu.method.str.startswith("soft")
    np.testing.assert_allclose(gpu.overall_mae[oracle], cpu.overall_mae[oracle], rtol=1e-9)
