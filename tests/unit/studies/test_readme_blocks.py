"""README blocks beyond results/quick: the generator registry, memory, backbone and testbed blocks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from scalepool.cli import main
from scalepool.studies import BLOCK_GENERATORS, MEMORY_CSVS, generate_blocks, stale_blocks, write_readme

REPO = Path(__file__).resolve().parents[3]
TESTBED_TABLES = sorted((REPO / "results" / "testbeds_quick" / "tables").glob("*.csv"))


def block(name: str, body: str = "stale\n") -> str:
    return f"<!-- BEGIN generated:{name} -->\n{body}<!-- END generated:{name} -->\n"


def table_rows(text: str, first_cell: str | None = None) -> list[list[str]]:
    """Body rows of every markdown table in ``text`` (header and rule rows dropped)."""
    rows = [
        [c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")
    ]
    rows = [
        r for r in rows if not set("".join(r)) <= set("-: ") and r[0] not in ("backbone", "method", "branch")
    ]
    return [r for r in rows if first_cell is None or r[0] == first_cell]


def mean_std(cell: str) -> tuple[float, float]:
    mean, std = cell.split(" ± ")
    return float(mean), float(std)


def near(printed: float, value: float, decimals: int = 1) -> bool:
    return abs(printed - value) <= 0.5 * 10.0**-decimals + 1e-12


def test_registry_names():
    assert {"quick-provenance", "quick-results", "memory-table", "backbones-small", "testbeds-quick"} <= set(
        BLOCK_GENERATORS
    )
    assert MEMORY_CSVS == ("results/memory/final_*.csv",)


def test_memory_block_fails_check_without_its_files_and_follows_them(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# t\n\n" + block("memory-table") + "tail\n")
    # the block is in the README, its files are not: --check fails and says which block
    assert main(["readme", "--check", "--readme", str(readme)]) == 2
    err = capsys.readouterr().err
    assert "'memory-table'" in err and "final_*.csv" in err
    with pytest.raises(FileNotFoundError, match="memory-table"):
        stale_blocks(readme)
    memory = tmp_path / "results" / "memory"
    memory.mkdir(parents=True)
    for name in ("after_infer.csv", "after_train_20k.csv"):
        shutil.copy(REPO / "tests" / "data" / "memory" / name, memory / f"final_{name}")
    assert main(["readme", "--check", "--readme", str(readme)]) == 1
    quick = tmp_path / "results" / "quick"
    quick.mkdir()
    assert main(["readme", "--write", "--readme", str(readme)]) == 0
    assert list(quick.iterdir()) == []  # --write without --run regenerates only, exports nothing
    assert main(["readme", "--check", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# t\n") and text.endswith("tail\n") and "stale" not in text
    assert "`results/memory/final_after_infer.csv`" in text
    raw = pd.read_csv(memory / "final_after_train_20k.csv").set_index("branch")
    row = table_rows(text, "muse")[-1]  # the muse training row comes last
    assert row[1] == "train" and near(float(row[6]), raw.loc["muse", "peak_mb"] * 1024 / 17604)  # KB/atom
    readme.write_text(text.replace(row[6], "150.0"))  # a hand edit of a generated number
    assert stale_blocks(readme) == ["memory-table"]


def test_backbones_block_equals_the_study_files():
    text = generate_blocks(["backbones-small"], REPO)["backbones-small"]
    studies = sorted((REPO / "results" / "backbones_small").glob("study_*"))
    rows = table_rows(text)
    assert len(rows) == 3 * len(studies) == 9
    for study in studies:
        runs = pd.read_csv(study / "runs.csv")
        summary = pd.read_csv(study / "summary.csv").set_index("variant")
        for row in rows:
            if row[0] != summary["backbone"].iloc[0]:
                continue
            variant = row[1]
            per_seed = runs[runs["variant"] == variant]["overall_mae"]
            mean, std = mean_std(row[2])
            assert near(mean, per_seed.mean()) and near(std, per_seed.std(ddof=1))
            assert near(mean_std(row[3])[0], summary.loc[variant, "ion_mae"])
            assert int(row[6]) == len(per_seed) == 3
            if variant == "alone":
                assert row[5] == "–"
                continue
            # gain over the backbone alone, % of its MAE, per seed, then mean ± std (from runs.csv)
            alone = runs[runs["variant"] == "alone"].set_index("seed")["overall_mae"]
            other = runs[runs["variant"] == variant].set_index("seed")["overall_mae"]
            gains = 100.0 * (alone - other) / alone
            g_mean, g_std = mean_std(row[5])
            assert near(g_mean, gains.mean()) and near(g_std, gains.std(ddof=1))


def test_testbeds_block_rows_beside_null_control():
    text = generate_blocks(["testbeds-quick"], REPO)["testbeds-quick"]
    assert len(TESTBED_TABLES) == 4
    sections = text.split("**")[1::2]
    assert sections == ["graphene, short / long", "graphene, short / muse", "peptide, short / long",
                        "peptide, short / muse"]  # fmt: skip
    for path, part in zip(TESTBED_TABLES, text.split("**")[2::2], strict=True):
        table = pd.read_csv(path, keep_default_na=False, na_values=[""])
        real = table[table["pair"] == "real"].reset_index(drop=True)
        null = table[table["pair"] == "null"].reset_index(drop=True)
        rows = table_rows(part)
        assert [r[0] for r in rows] == list(real["method"])
        for i, row in enumerate(rows):
            assert near(mean_std(row[1])[0], real.loc[i, "overall_mae"])
            assert near(mean_std(row[2])[0], null.loc[i, "overall_mae"])
            real_gain, null_gain = (float(g) for g in row[3].split(" / "))
            assert near(real_gain, real.loc[i, "gain_pct"]) and near(null_gain, null.loc[i, "gain_pct"])
            if row[4] != "–":  # excess over null = real gain - null gain (percentage points)
                assert near(mean_std(row[4])[0], real.loc[i, "excess_over_null"])


def test_testbed_table_without_null_control_is_an_error(tmp_path):
    tables = tmp_path / "results" / "testbeds_quick" / "tables"
    tables.mkdir(parents=True)
    table = pd.read_csv(TESTBED_TABLES[0], keep_default_na=False, na_values=[""])
    table[table["pair"] == "real"].to_csv(tables / "x_short_long.csv", index=False)
    with pytest.raises(ValueError, match="x_short_long.csv: no null-control rows"):
        generate_blocks(["testbeds-quick"], tmp_path)


def test_write_regenerates_every_block_from_its_root(tmp_path):
    """Blocks of several sources in one README; --check covers each, --write mends each."""
    shutil.copytree(REPO / "results" / "backbones_small", tmp_path / "results" / "backbones_small")
    shutil.copytree(REPO / "results" / "quick", tmp_path / "results" / "quick")
    readme = tmp_path / "README.md"
    readme.write_text(block("quick-provenance") + "text\n" + block("backbones-small"))
    assert stale_blocks(readme) == ["backbones-small", "quick-provenance"]
    assert write_readme(readme) == ["backbones-small", "quick-provenance"]
    assert stale_blocks(readme) == []
    provenance = (REPO / "README.md").read_text().split("generated:quick-provenance -->\n")[1]
    assert provenance.split("<!-- END")[0] in readme.read_text()


def test_backbones_scale_block_equals_the_scale_tables():
    """Each printed cell is the study's scale_table.csv mean ± std; the excess over null is the
    real gain minus the null pair's gain, paired per seed pair (so its mean is their difference)."""
    text = generate_blocks(["backbones-scale"], REPO)["backbones-scale"]
    rows = table_rows(text)
    studies = sorted((REPO / "results" / "backbones_small").glob("study_*"))
    assert len(rows) == len(studies) * 2 * 5
    tables = {
        s.name.removeprefix("study_"): pd.read_csv(
            s / "scale_table.csv", keep_default_na=False, na_values=[""]
        )
        for s in studies
    }
    for backbone, generator, method, gain, null, excess, ions, n in rows:
        t = tables[backbone]

        def value(gen, metric, t=t, method=method):
            hit = t[(t["generator"] == gen) & (t["row"] == method) & (t["metric"] == metric)]
            assert len(hit) == 1, (gen, method, metric)
            return float(hit["mean"].iloc[0]), float(hit["std"].iloc[0])

        for cell, (mean, std) in [
            (gain, value(generator, "gain_pct")),
            (null, value("null", "gain_pct")),
            (excess, value(generator, "excess_over_null")),
            (ions, value(generator, "excess_over_null_ions")),
        ]:
            printed_mean, printed_std = mean_std(cell)
            assert near(printed_mean, mean) and near(printed_std, std)
        assert near(mean_std(excess)[0], value(generator, "gain_pct")[0] - value("null", "gain_pct")[0], 1)
        assert int(n) == 2


def _npt_rows(args, reference_stats, model_stats):
    """Rows as benchmarks/npt_density.py's main builds them: (name, stats) with the reference first."""
    return [("OpenMM", reference_stats), (args.model[0], model_stats)]


def test_npt_block_from_the_benchmark_summary(tmp_path):
    """The benchmark's --out CSV, rendered: every printed number is the CSV's, the reference first,
    a stopped run named with its reason; two reference runs are an error."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("npt_density", REPO / "benchmarks" / "npt_density.py")
    npt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(npt)
    data, model = tmp_path / "nacl.npz", tmp_path / "runs" / "long" / "best.pt"
    model.parent.mkdir(parents=True)
    data.write_bytes(b"frames"), model.write_bytes(b"weights")
    out = tmp_path / "results" / "npt" / "quick.csv"
    out.parent.mkdir(parents=True)
    args = argparse.Namespace(model=[str(model)], data=str(data), seed=0, out=str(out), steps=300)
    reference = dict(start=0.9806, mean=1.0283, std=0.0137, drift=-0.003, pressure=float("nan"), steps=10000,
                     ps=20.0, s_per_step=0.004)  # fmt: skip
    stopped = dict(start=0.9806, mean=1.1473, std=0.0284, drift=0.70, pressure=-2677.0, temperature=312.4,
                   steps=278, ps=0.278, s_per_step=0.9, failure="stopped at step 279: SHAKE failed")  # fmt: skip
    virial = {"OpenMM": -1662.0, str(model): -7625.0}
    npt._write_summary(args, _npt_rows(args, reference, stopped), virial, 1328.0, reference["mean"],
                       {str(model): 20429.0})  # fmt: skip
    assert out.with_name("quick.csv.provenance.json").exists()
    text = generate_blocks(["npt-density"], tmp_path)["npt-density"]
    rows = [r for r in table_rows(text) if r[0] != "run"]
    assert [r[0] for r in rows] == ["OpenMM TIP3P/JC (reference)", "long (stopped)"]
    assert rows[0][1:6] == ["10000", "20.00", "0.9806", "1.0283", "0.0137"]
    assert rows[0][9:] == ["–", "–", "-1662", "–"]
    assert rows[1][1:] == ["278", "0.28", "0.9806", "1.1473", "0.0284", "+0.700", "+0.167", "+0.119",
                           "-2677", "312", "-7625", "20429"]  # fmt: skip
    assert "- long: stopped at step 279: SHAKE failed" in text and "adds 1328 bar" in text
    assert "`results/npt/quick.csv`" in text
    shutil.copy(out, out.with_name("again.csv"))
    with pytest.raises(ValueError, match="expected one OpenMM reference run"):
        generate_blocks(["npt-density"], tmp_path)


def test_precision_speed_block_pairs_runs_by_case(tmp_path):
    """CPU s/step of two branches.py runs side by side, precision from each provenance, ratio by hand."""
    import json

    folder = tmp_path / "results" / "precision"
    folder.mkdir(parents=True)
    header = "branch,impl,batch,mode,ms/step,frames/s,atom-steps/s,cpu s/step\n"
    for precision, cpu in (("float32", (0.44, 1.32)), ("bf16-mixed", (0.29, 0.99))):
        path = folder / f"speed_{precision}.csv"
        path.write_text(header + f"short,painn-fused,1,infer,300,3.3,5000,{cpu[0]}\n"
                        f"short,painn-fused,1,train,900,1.1,1700,{cpu[1]}\n")  # fmt: skip
        Path(str(path) + ".provenance.json").write_text(json.dumps({"parameters": {"precision": precision}}))
    text = generate_blocks(["precision-speed"], tmp_path)["precision-speed"]
    rows = [r for r in table_rows(text) if r[0] != "branch"]
    assert rows == [
        ["short (painn-fused)", "1", "infer", "0.44", "0.29", "0.66"],
        ["short (painn-fused)", "1", "train", "1.32", "0.99", "0.75"],
    ]
    Path(str(folder / "speed_float32.csv") + ".provenance.json").unlink()
    with pytest.raises(FileNotFoundError, match="names the run's precision"):
        generate_blocks(["precision-speed"], tmp_path)
