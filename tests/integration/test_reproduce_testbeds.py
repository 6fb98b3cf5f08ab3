"""``scalepool reproduce --testbeds``: the graphene and folding benchmarks end to end on tiny settings.

Real generators (tblite GFN2-xTB on a 3x3 sheet with water, OpenMM amber14/GBn2
chignolin with 0.1 ps segments), real but tiny branches (one epoch), the real
studies and scale tables; then a rerun that skips every stage, and stages made
invalid or forced that rerun alone.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from scalepool.data import FrameSet, PredictionCache, graphene_profile_path
from scalepool.provenance import file_sha256, read_provenance
from scalepool.studies import BranchPlan, reproduce
from scalepool.studies._pipeline import STATE
from scalepool.studies._reproduce_jobs import TRAINING_RECORD
from scalepool.studies._testbeds_config import TestbedConfig, make_testbed_config
from scalepool.studies._testbeds_report import cell, table_section

SMALL = {"n_features": 4, "n_interactions": 1, "n_rbf": 4, "cutoff": 3.0}
FIGURES = ("folding_md", "folding_errors", "graphene_profiles")


def _config() -> TestbedConfig:
    return TestbedConfig(
        quick=True,
        seed=0,
        data={
            "graphene": {"n_frames": 8, "sheet_size": 3, "molecules": ["water"], "profile_step": 1.5},
            "peptide": {"n_frames": 9, "stride_ps": 0.1, "equilibration_ps": 0.1, "minimize_iterations": 20},
        },
        split_fractions=(0.5, 0.25, 0.25),
        split_seed=7,
        branches=(
            BranchPlan("short", SMALL, epochs=1, expected_minutes=1.0),
            BranchPlan("long", SMALL, epochs=1, expected_minutes=1.0),
            BranchPlan("muse", {**SMALL, "coarse_n_rbf": 4}, epochs=1, expected_minutes=1.0),
        ),
        study_options={"folding": {"md_steps": 10, "record_every": 5, "timestep_fs": 0.25}},
        table_options={"router_steps": 10, "soft_steps": 5},
    )


@pytest.fixture
def fixed_code_version(monkeypatch):
    """Pin the code version in the stage keys (other edits in the working tree must not redo stages)."""
    import scalepool.studies._pipeline as pipeline

    monkeypatch.setattr(pipeline, "code_version", lambda: "test-version")


def _ran(timings: dict) -> set[str]:
    return {name.removeprefix("testbeds/") for name, info in timings.items() if info["ran"]}


@pytest.mark.slow
def test_testbeds_run_end_to_end_then_resume_and_redo_only_what_is_invalid(tmp_path, fixed_code_version):
    out, lines = tmp_path / "run", []
    config = _config()
    timings = reproduce(
        out, testbeds_only=True, testbed_config=config, progress=False, log=lines.append,
        figures_dir=tmp_path / "repo_figures", jobs=1,
    )  # fmt: skip
    assert not (out / "data").exists() and not (out / "runs").exists()  # the NaCl pipeline was skipped
    assert all(name.startswith("testbeds/") for name in timings) and all(i["ran"] for i in timings.values())
    tb = out / "testbeds"
    training = {f"train_{d}_{b}_s{k}" for d in ("graphene", "peptide") for b, ks in
                (("short", (0, 1, 2)), ("long", (0, 1)), ("muse", (0, 1))) for k in ks}  # fmt: skip
    assert {n for n in _ran(timings) if n.startswith("train_")} == training

    # data: what the `scalepool data` generators write, with their parameters in meta
    graphene, peptide = (
        FrameSet.load(tb / "data" / "graphene.npz"),
        FrameSet.load(tb / "data" / "peptide.npz"),
    )
    assert graphene.n_frames == 8 and peptide.n_frames == 9 and graphene.ragged is not None
    assert graphene.meta["parameters"]["sheet_size"] == 3 and "pdb" in peptide.meta
    assert graphene_profile_path(tb / "data" / "graphene.npz").exists()

    # every run of a dataset shares one random split (seeded by split_seed, not the training seed)
    for d in ("graphene", "peptide"):
        splits = []
        for b, k in (("short", 0), ("short", 2), ("long", 1), ("muse", 0)):
            run_config = json.loads((tb / "runs" / d / f"{b}_s{k}" / "config.json").read_text())
            assert run_config["seed"] == k and run_config["split"]["mode"] == "random"
            splits.append(run_config["split"]["indices"])
            record = json.loads((tb / "runs" / d / f"{b}_s{k}" / TRAINING_RECORD).read_text())
            assert record["complete"] and record["epochs"] == 1
        assert all(s == splits[0] for s in splits)

    # caches: short (seed k), the generator (seed k), short_2 = short seed k + 1 (the null pair)
    for d in ("graphene", "peptide"):
        for g in ("long", "muse"):
            for k in (0, 1):
                cache = PredictionCache.load(tb / "pred" / f"{d}_short_{g}_s{k}.npz")
                assert list(cache.branches) == ["short", g, "short_2"] and tuple(cache.anchors) == (
                    "short",
                    g,
                )
                assert not np.array_equal(cache.branches["short"], cache.branches["short_2"])

    # tables with real and null rows, each with a provenance naming its input caches by checksum
    for d in ("graphene", "peptide"):
        for g in ("long", "muse"):
            csv = tb / "tables" / f"{d}_short_{g}.csv"
            table = pd.read_csv(csv, keep_default_na=False, na_values=[""])  # pair "null" is a word
            assert set(table["pair"]) == {"real", "null"} and (table["n_seeds"] == 2).all()
            assert f"{g} only (s=1)" in set(table["method"]) and "null: short_2 only (s=1)" in set(
                table["method"]
            )
            record = json.loads((tb / "tables" / f"{d}_short_{g}.provenance.json").read_text())
            assert record["outputs"][csv.name] == file_sha256(csv)
            assert [i["sha256"] for i in record["inputs"]] == [
                file_sha256(tb / "pred" / f"{d}_short_{g}_s{k}.npz") for k in (0, 1)
            ]

    # studies, each closed by its provenance; six runs (short, long, muse of seeds 0 and 1)
    for name, files in (
        ("folding", ("md_summary.csv", "state_errors.csv")),
        ("graphene_profiles", ("summary.csv",)),
    ):
        record = read_provenance(tb / "results" / name)
        assert record is not None and set(files) <= set(record["outputs"])
    summary = pd.read_csv(tb / "results" / "folding" / "md_summary.csv")
    assert set(summary["model"]) == {
        "reference",
        *(f"{b}-s{k}" for b in ("short", "long", "muse") for k in (0, 1)),
    }
    assert json.loads((tb / "results" / "folding" / "folding.json").read_text())["md"]["timestep_fs"] == 0.25
    for name in FIGURES:
        assert (tb / "figures" / f"{name}.png").exists() and (tb / "figures" / f"{name}.pdf").exists()
    assert sorted(p.name for p in (tmp_path / "repo_figures").iterdir()) == sorted(
        f"{n}.png" for n in FIGURES
    )

    # the report shows the CSVs' numbers, real rows beside their null rows, and every MD trajectory
    report = (tb / "report.md").read_text()
    table = pd.read_csv(tb / "tables" / "peptide_short_muse.csv")
    first = table[table["pair"] == "real"].iloc[0]
    assert f"| {first['method']} | {first['overall_mae']:.1f} ± {first['overall_mae_std']:.1f} |" in report
    assert "| null: short only (s=0) |" in report and "| peptide_muse_s1 | 1 | 1 | 1/1 |" in report
    blown = int((summary["model"].ne("reference") & summary["blown_up"]).sum())
    assert f"**{blown} of {len(summary) - 2} model trajectories blew up**" in report
    assert report.count("| short-s0 | folded |") == 1 and "![folding_md](figures/folding_md.png)" in report

    # a rerun skips every stage
    lines.clear()
    timings = reproduce(out, testbeds_only=True, testbed_config=config, progress=False, log=lines.append)
    assert _ran(timings) == set() and sum("up to date" in line for line in lines) == len(timings)

    # a table whose provenance is lost is redone, alone (the same CSV: the report stays)
    before = (tb / "tables" / "peptide_short_muse.csv").read_bytes()
    (tb / "tables" / "peptide_short_muse.provenance.json").unlink()
    timings = reproduce(out, testbeds_only=True, testbed_config=config, progress=False, log=lines.append)
    assert _ran(timings) == {"table_peptide_short_muse"}
    assert (tb / "tables" / "peptide_short_muse.csv").read_bytes() == before

    # a training run cut short (the safety stop's record) is continued, and nothing else reruns
    path = tb / "runs" / "graphene" / "long_s1" / TRAINING_RECORD
    path.write_text(json.dumps({**json.loads(path.read_text()), "complete": False}))
    timings = reproduce(out, testbeds_only=True, testbed_config=config, progress=False, log=lines.append)
    assert _ran(timings) == {"train_graphene_long_s1"} and json.loads(path.read_text())["complete"]

    # a forced stage is redone, alone
    timings = reproduce(
        out, testbeds_only=True, testbed_config=config, progress=False, log=lines.append, force=("figures",)
    )
    assert _ran(timings) == {"figures"}
    assert "figures" in json.loads((tb / STATE).read_text())


def test_report_puts_each_real_row_beside_its_null_row(tmp_path):
    rows = [
        ("short only (s=0)", "real", 10.0, 1.0, -5.0, 0.5, None, None),
        ("best global s", "real", 8.0, 0.2, 12.5, 2.0, 3.25, 1.5),
        ("null: short only (s=0)", "null", 10.0, 1.0, 0.0, 0.0, None, None),
        ("null: best global s", "null", 9.0, 0.4, 9.25, 1.0, None, None),
    ]
    columns = ["method", "pair", "overall_mae", "overall_mae_std", "gain_pct", "gain_pct_std",
               "excess_over_null", "excess_over_null_std"]  # fmt: skip
    pd.DataFrame(rows, columns=columns).assign(n_seeds=2).to_csv(tmp_path / "t.csv", index=False)
    lines = table_section(tmp_path / "t.csv", "peptide: short against muse")
    assert "2 seed(s)" in lines[0]
    assert (
        lines[4]
        == "| short only (s=0) | 10.0 ± 1.0 | -5.0 ± 0.5 | null: short only (s=0) | 10.0 ± 1.0 | +0.0 ± 0.0 | – |"
    )
    assert lines[5] == (
        "| best global s | 8.0 ± 0.2 | +12.5 ± 2.0 | null: best global s | 9.0 ± 0.4 | +9.2 ± 1.0 | +3.2 ± 1.5 |"
    )
    assert cell(float("nan")) == "–" and cell(1.234, float("nan"), 2) == "1.23"


def test_quick_and_full_settings_follow_the_brief():
    quick, full = make_testbed_config(quick=True), make_testbed_config(quick=False)
    for config in (quick, full):
        assert config.seeds("short") == (0, 1, 2) and config.seeds("long") == config.seeds("muse") == (0, 1)
        assert len({b.epochs for b in config.branches}) == 1  # equal optimiser steps for every branch
    assert full.data["peptide"]["n_frames"] == 600 and full.data["graphene"]["n_frames"] == 200
    assert full.data["graphene"]["profile_step"] == 0.1 and full.data["graphene"]["sheet_size"] == 5
    assert all(b.options["n_interactions"] == 2 for b in quick.branches)  # the small run's 1 blew up
    with pytest.raises(ValueError, match="one plan each of short, long, muse"):
        TestbedConfig(quick=True, seed=0, data={"peptide": {}}, split_fractions=(0.8, 0.1, 0.1), split_seed=0,
                      branches=quick.branches[:2])  # fmt: skip
    with pytest.raises(ValueError, match="datasets must be among"):
        TestbedConfig(quick=True, seed=0, data={"nacl": {}}, split_fractions=(0.8, 0.1, 0.1), split_seed=0,
                      branches=quick.branches)  # fmt: skip


def test_cli_testbed_flags_are_exclusive(capsys):
    from scalepool.cli._main import main

    with pytest.raises(SystemExit):
        main(["reproduce", "--out", "x", "--testbeds", "--testbeds-only"])
    assert "not allowed with argument" in capsys.readouterr().err
