"""``OUT/testbeds/report.md``: the testbed benchmarks' tables, generated from their CSV files only.

Sections: the scale tables of both datasets (short against long and against
MuSE; every real row beside the same method on the null pair, mean ± std over
the model seeds), the folding MD stability (every trajectory: steps done,
blow-up and its reason; nothing is hidden), the force errors per folding
state, the binding-curve errors on graphene, the training runs and the stage
timings.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .._files import write_text
from ._reproduce_jobs import _add_training_section
from ._testbeds_config import DATASETS, GENERATORS, TESTBED_FIGURES


def cell(mean, std=float("nan"), digits: int = 1, sign: bool = False) -> str:
    """``mean ± std`` to ``digits`` decimals; ``–`` for a missing mean, no ``±`` for a missing std."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" ± {std:.{digits}f}"
    return text


def table_section(csv: Path, title: str) -> list[str]:
    """Markdown rows of one ``scalepool table`` CSV: each real-pair method beside the same method on the
    null pair (rows matched in order: :func:`scalepool.scales.scale_table` runs the same methods)."""
    df = pd.read_csv(csv, keep_default_na=False, na_values=[""])  # the pair column holds the word "null"
    real, null = df[df["pair"] == "real"].reset_index(), df[df["pair"] == "null"].reset_index()
    seeds = int(df["n_seeds"].iloc[0]) if len(df) else 0
    lines = [
        f"### {title} (test split, force MAE meV/Å, mean ± std over {seeds} seed(s))",
        "",
        "| method | MAE | gain over better branch, % | null pair: method | null MAE | null gain, % | "
        "excess over null, pp |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    if len(null) != len(real):  # single branches have a null twin each; a mismatch means no null pair
        null = pd.DataFrame(index=range(len(real)), columns=df.columns)
    for (_, r), (_, n) in zip(real.iterrows(), null.iterrows(), strict=True):
        lines.append(
            f"| {r['method']} | {cell(r['overall_mae'], r['overall_mae_std'])} | "
            f"{cell(r['gain_pct'], r['gain_pct_std'], sign=True)} | {n['method'] if pd.notna(n['method']) else '–'} | "
            f"{cell(n['overall_mae'], n['overall_mae_std'])} | {cell(n['gain_pct'], n['gain_pct_std'], sign=True)} | "
            f"{cell(r['excess_over_null'], r['excess_over_null_std'], sign=True)} |"
        )
    return [*lines, ""]


def stability_section(summary: Path) -> list[str]:
    """Every folding MD trajectory (``md_summary.csv``): steps done, blow-up and reason."""
    df = pd.read_csv(summary)
    blown = df[(df["model"] != "reference") & df["blown_up"].astype(bool)]
    models = df[df["model"] != "reference"]
    lines = [
        "### Folding MD stability (every trajectory)",
        "",
        f"**{len(blown)} of {len(models)} model trajectories blew up**; the amber14/GBn2 reference "
        f"ran {', '.join(str(int(s)) for s in df[df['model'] == 'reference']['steps_done'])} steps.",
        "",
        "| model | start | seed | steps done | blown up | reason | largest bond stretch | C-alpha RMSD W1 (Å) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _, r in df.iterrows():
        reason = r["reason"] if isinstance(r["reason"], str) and r["reason"] else "–"
        lines.append(
            f"| {r['model']} | {r['start']} | {int(r['seed'])} | {int(r['steps_done'])} | "
            f"{'**yes**' if bool(r['blown_up']) else 'no'} | {reason} | {cell(r['max_bond_stretch'], digits=3)} | "
            f"{cell(r['ca_rmsd_w1'], digits=3)} |"
        )
    return [*lines, ""]


def state_section(errors: Path) -> list[str]:
    """Force MAE per folding state (``state_errors.csv``), mean ± std over the runs of a branch."""
    df = pd.read_csv(errors)
    grouped = df.groupby(["branch", "state"], sort=False).agg(
        mean=("mae_meV_A", "mean"),
        std=("mae_meV_A", "std"),
        runs=("model", "count"),
        frames=("n_frames", "mean"),
    )
    lines = [
        "### Chignolin force MAE per folding state (meV/Å, mean ± std over seeds)",
        "",
        "| branch | state | MAE | runs | test frames per run |",
        "| --- | --- | --- | --- | --- |",
    ]
    for (branch, state), r in grouped.iterrows():
        lines.append(
            f"| {branch} | {state} | {cell(r['mean'], r['std'])} | {int(r['runs'])} | {r['frames']:.0f} |"
        )
    return [*lines, ""]


def graphene_section(summary: Path) -> list[str]:
    """Binding-curve errors per branch and molecule (``summary.csv`` of ``graphene_profiles``)."""
    df = pd.read_csv(summary)
    lines = [
        "### Molecules on graphene: binding curves against GFN2-xTB (mean ± std over seeds)",
        "",
        "| branch | molecule | profile RMSE (eV) | E_b error (eV) | d_eq error (Å) | tail RMSE (eV) | "
        "force MAE (meV/Å) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _, r in df.iterrows():
        lines.append(
            f"| {r['branch']} | {r['molecule']} | {cell(r['profile_rmse_eV'], r['profile_rmse_eV_std'], 3)} | "
            f"{cell(r['e_bind_error_eV'], r['e_bind_error_eV_std'], 3, True)} | "
            f"{cell(r['d_eq_error_A'], r['d_eq_error_A_std'], 2, True)} | "
            f"{cell(r['tail_rmse_eV'], r['tail_rmse_eV_std'], 3)} | "
            f"{cell(r['force_mae_meV_A'], r['force_mae_meV_A_std'])} |"
        )
    return [*lines, ""]


def write_testbed_report(
    out: Path, config, records: list[dict], timings: dict, total_s: float, device: str
) -> Path:
    """Write ``out/report.md`` from ``out/tables/*.csv``, ``out/results/*/*.csv`` and the figures."""
    out = Path(out)
    lines = [
        f"# Testbed benchmarks ({'quick' if config.quick else 'full'} size)",
        "",
        f"Device {device}; random split {config.split_fractions} (seed {config.split_seed}) shared by every "
        f"run of a dataset; short seeds {list(config.seeds('short'))}, long and MuSE seeds "
        f"{list(config.model_seeds)}; the cache of seed k holds short (k), the generator (k) and short_2 "
        "(short seed k + 1): the null pair. Oracle rows read the test labels (upper bounds); only a "
        "positive *excess over null* beyond its std is gain from the scale structure.",
        "",
        "## Scale tables with the null pair",
        "",
    ]
    for d in DATASETS:
        for g in GENERATORS:
            csv = out / "tables" / f"{d}_short_{g}.csv"
            if csv.exists():
                lines += table_section(csv, f"{d}: short against {g}")
    results = out / "results"
    lines += ["## Studies", ""]
    for path, section in (
        (results / "folding" / "md_summary.csv", stability_section),
        (results / "folding" / "state_errors.csv", state_section),
        (results / "graphene_profiles" / "summary.csv", graphene_section),
    ):
        if path.exists():
            lines += section(path)
    figures = [name for name in TESTBED_FIGURES if (out / "figures" / f"{name}.png").exists()]
    if figures:
        lines += ["## Figures", "", *(f"![{n}](figures/{n}.png)" for n in figures), ""]
    lines += ["## Timings", "", "| stage | seconds | ran now |", "| --- | --- | --- |"]
    for name, info in timings.items():
        lines.append(f"| {name} | {info['elapsed_s']:.0f} | {'yes' if info['ran'] else 'no (up to date)'} |")
    lines += ["", f"This invocation: {total_s:.0f} s.", ""]
    path = write_text(out / "report.md", "\n".join(lines))
    _add_training_section(
        path, [{**r, "run": r["stage"].removeprefix("train_")} for r in records]
    )  # + dataset
    return path
