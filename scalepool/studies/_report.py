"""The final table (text) and ``report.md`` of a reproduction, read from saved results only."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

from .._files import write_text
from ..provenance import git_commit, library_versions, read_provenance, utc_now
from ..scales import NULL_PREFIX, format_table
from ..units import CONTACT_PAIR_DISTANCE


def _read(path: Path) -> pd.DataFrame | None:
    # only empty fields are missing: pandas would also read the pair label "null" as NaN
    return pd.read_csv(path, keep_default_na=False, na_values=[""]) if path.exists() else None


def _cell(row, metric: str, several: bool, fmt: str = ".1f") -> str:
    """``mean ± std`` (std only with several seeds); ``fmt`` may start with ``+`` for a signed mean."""
    value, std = row[metric], row.get(f"{metric}_std", float("nan"))
    if pd.isna(value):
        return "–"
    return f"{value:{fmt}} ± {std:{fmt.lstrip('+')}}" if several and pd.notna(std) else f"{value:{fmt}}"


def final_table_text(results: str | os.PathLike) -> str:
    """The scale table of ``results/oracle_table`` as aligned text (meV/Å)."""
    table = _read(Path(results) / "oracle_table" / "table.csv")
    if table is None:
        return "(no oracle_table results)"
    table["detail"] = table["detail"].fillna("")
    return format_table(table)


def _markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def verdict(mean: float, std: float, n: int) -> str:
    """Whether a routing row's gain beats its null control, as a sentence fragment.

    The rule is a one-sided paired t-test at 5 %: the mean excess over null
    (percentage points, one paired difference per seed) must exceed
    ``t_0.95(n-1) * std / sqrt(n)`` (6.3 standard errors for two seeds, 2.9
    for three); with one seed only its sign can be read, and the text says so.
    """
    from scipy.stats import t as student

    if pd.isna(mean):
        return "no null control"
    if n >= 2 and pd.notna(std):
        text = f"excess over null {mean:+.1f} ± {std:.1f} pp ({n} seeds)"
        beats = mean > float(student.ppf(0.95, n - 1)) * std / math.sqrt(n)
    else:
        text = f"excess over null {mean:+.1f} pp (one seed, no spread to judge by)"
        beats = mean > 0
    return f"{text}: {'beats' if beats else 'does not beat'} the control"


def _null_rows(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Real rows and the null rows aligned with them (same order), or ``None`` without a control."""
    if "pair" not in table or not (table["pair"] == "null").any():
        return table[table.get("pair", pd.Series("real", index=table.index)) == "real"], None
    real = table[table["pair"] == "real"].reset_index(drop=True)
    null = table[table["pair"] == "null"].reset_index(drop=True)
    # scale_table writes the null block in the real block's method order
    names = null["method"].str.removeprefix(NULL_PREFIX)
    routed = real["fitted_on"].fillna("") != ""
    if len(null) != len(real) or not (names[routed] == real["method"][routed]).all():
        return real, None
    return real, null


def _subset_sentence(results: Path) -> str:
    """What *contact ions* means here, with the subset's size on the test split."""
    table = _read(results / "oracle_table" / "table.csv")
    if table is None or "n_contact_ions" not in table:
        return ""
    return (
        f"*contact ions*: Na and Cl whose nearest counter-ion is within {CONTACT_PAIR_DISTANCE:g} Å (the first "
        f"minimum of the testbed's Na-Cl g(r)): {table['n_contact_ions'].iloc[0]:.0f} ion-frames in "
        f"{table['n_contact_frames'].iloc[0]:.0f} test frames (mean over caches); table.csv also holds "
        "`contact_frame_mae` (all atoms of those frames) and `near_ion_mae` (the paper's 6 Å any-ion subset)."
    )


def scale_table_markdown(results: Path) -> str | None:
    """Real rows beside their null control (null pair's MAE, gains over the better single
    branch, excess over null), or the plain table for results without a null control."""
    table = _read(results / "oracle_table" / "table.csv")
    if table is None:
        return None
    several = int(table["n_seeds"].max()) > 1
    real, null = _null_rows(table)
    rows = []
    for i, row in real.iterrows():
        cells = {"method": row["method"]}
        for metric, name in (
            ("overall_mae", "overall"),
            ("close_contact_mae", "contact ions"),
            ("ion_mae", "ions"),
        ):
            cells[name] = _cell(row, metric, several)
            if null is not None:
                cells[f"null: {name}"] = _cell(null.loc[i], metric, several)
        cells["gap recovered"] = "–" if pd.isna(row["gain_recovered"]) else f"{row['gain_recovered']:.2f}"
        if null is not None:
            gains = (row["gain_pct"], null.loc[i, "gain_pct"])
            cells["gain % (real / null)"] = " / ".join("–" if pd.isna(g) else f"{g:+.1f}" for g in gains)
            cells["excess over null (pp)"] = _cell(row, "excess_over_null", several, "+.1f")
        cells["fitted on"] = "" if pd.isna(row["fitted_on"]) else row["fitted_on"]
        rows.append(cells)
    return _markdown(pd.DataFrame(rows))


def null_verdicts(results: Path) -> list[str]:
    """One line per routing row: its excess over the null control and whether it beats it."""
    table = _read(results / "oracle_table" / "table.csv")
    if table is None:
        return []
    real, null = _null_rows(table)
    if null is None:
        record = read_provenance(results / "oracle_table") or {}
        note = record.get("null_control") or "no null control in these results"
        return [
            f"{note[0].upper()}{note[1:]}. The gains above are not tested against routing between two "
            "runs of one branch.",
            "",
        ]
    pair = (read_provenance(results / "oracle_table") or {}).get("null_pair") or ["?", "?"]
    lines = [
        f"Null control: every method also routes between `{pair[0]}` and `{pair[1]}` (two runs of one "
        "branch); *gain %* is the change against the better single branch of each pair, *excess over "
        "null* the real pair's gain minus the null pair's, paired per seed (mean ± std over seeds); the "
        f"single-branch rows show the null pair's branches (s=1: `{pair[1]}`). A row beats the control when "
        "its mean excess is above zero by a one-sided paired t-test over seeds at 5 %.",
        "",
    ]
    for _, row in real[real["fitted_on"].fillna("") != ""].iterrows():
        std = row.get("excess_over_null_std", float("nan"))
        lines.append(f"- {row['method']}: {verdict(row['excess_over_null'], std, int(row['n_seeds']))}.")
    return [*lines, ""]


def _section_deployable(results: Path) -> list[str]:
    """The saved mixed model against the better branch, beside its null-pair twin."""
    summary = _read(results / "deployable" / "summary.csv")
    if summary is None or summary.empty:
        return []
    several = int(summary["n_caches"].max()) > 1
    rows = [
        {
            "pair": row["pair"],
            "model": row["model"],
            "overall": _cell(row, "overall_mae", several),
            "ions": _cell(row, "ion_mae", several),
            "gain over the better branch (%)": "–"
            if pd.isna(row.get("gain_pct_over_better_branch", float("nan")))
            else _cell(row, "gain_pct_over_better_branch", several),
        }
        for _, row in summary.iterrows()
    ]
    lines = [
        "## Deployable mixed model (test split, meV/Å)",
        "",
        "The conservative mixed model a user can save and run MD with: router fitted end to end on the train "
        "split through the model's own forces (`scalepool mix`), scored by `scalepool evaluate` on the saved "
        "file. The null row is the same model built on two runs of one branch.",
        "",
        _markdown(pd.DataFrame(rows)),
        "",
    ]
    real = summary[(summary["pair"] == "real") & summary["model"].str.startswith("mixed")]
    if not real.empty and "excess_over_null" in real:
        row = real.iloc[0]
        lines += [
            f"Deployable mixed model, gain over its better branch against the null pair's: "
            f"{verdict(row['excess_over_null'], row.get('excess_over_null_std', float('nan')), int(row['n_caches']))}.",
            "",
        ]
    return lines


def _section_equal_pools(results: Path) -> list[str]:
    table = _read(results / "pool_refinement" / "equal_size_pools.csv")
    if table is None:
        return []
    several = int(table["n"].max()) > 1
    rows = [
        {
            "size": int(row["size"]),
            "pool": row["method"],
            "scales reached": f"{row['n_scales']:.3g}",
            "overall": _cell(row, "overall_mae", several),
            "close contact": _cell(row, "close_contact_mae", several),
            "ions": _cell(row, "ion_mae", several),
            "gap recovered": _cell(row, "gap_recovered", several, ".2f"),
        }
        for _, row in table.iterrows()
    ]
    return [
        "## Pools of equal size (oracle-routed on test: upper bounds; MAE meV/Å)",
        "",
        "*gap recovered*: share of the gap between oracle hard routing over {0, 1} and the [0,1]-constrained "
        "continuous oracle.",
        "",
        _markdown(pd.DataFrame(rows)),
        "",
    ]


def _section_routers(results: Path) -> list[str]:
    summary = _read(results / "routers" / "summary.csv")
    if summary is None:
        return []
    several = int(summary["n"].max()) > 1
    rows = [
        {
            "method": row["method"],
            "overall": _cell(row, "overall_mae", several),
            "close contact": _cell(row, "close_contact_mae", several),
            "runs (caches x seeds)": int(row["n"]),
        }
        for _, row in summary.iterrows()
    ]
    lines = ["## Learned routers against the oracles", "", _markdown(pd.DataFrame(rows)), ""]
    agreement = results / "routers" / "agreement.json"
    if agreement.exists():
        data = pd.DataFrame(json.loads(agreement.read_text()))
        lines += [
            f"The hard router picks the oracle's pool member for {100 * data.hard_router_matches_oracle.mean():.0f}% "
            f"of the test samples; the continuous router's s correlates with the continuous oracle's at "
            f"r = {data.continuous_s_correlation.mean():.2f}.",
            "",
        ]
    return lines


def _section_branches(results: Path) -> list[str]:
    summary = _read(results / "branch_comparison" / "summary.csv")
    if summary is None:
        return []
    wide = summary.pivot_table(index="model", columns="subset", values="mae_meV_A", sort=False)
    keep = [c for c in ("overall", "ions", "near-ion", "far-from-ions", "O", "H", "Na", "Cl") if c in wide.columns]
    wide = wide[keep].round(1).reset_index()
    return ["## Branches (test split, MAE meV/Å)", "", _markdown(wide), ""]


def _section_pool(results: Path) -> list[str]:
    summary = _read(results / "pool_refinement" / "summary.csv")
    if summary is None:
        return []
    lines = ["## Pool refinement from {0, 1} (refined on val, oracle-routed on test: upper bounds)", ""]
    for row in summary.itertuples(index=False):
        lines.append(
            f"- {row.cache}: {row.final_pool} after {row.n_rounds} round(s), test MAE {row.test_overall_mae:.1f} "
            f"meV/Å, {100 * row.test_gap_recovered:.0f}% of the hard-to-continuous oracle gap recovered"
        )
    return [*lines, ""]


def _section_search(results: Path) -> list[str]:
    best = _read(results / "search" / "best.csv")
    if best is None:
        return []
    lines = ["## Optuna searches (objective on val, best trial re-run on test)", ""]
    for row in best.itertuples(index=False):
        rate = f", {row.trials_per_minute:.0f} trials/min" if pd.notna(row.trials_per_minute) else ""
        lines.append(f"- {row.space} (seed {row.seed}): {row.n_finished} trials{rate}; best val objective "
                     f"{row.best_value:.2f} meV/Å; {row.best_params}")  # fmt: skip
    return [*lines, ""]


def _section_swap(results: Path) -> list[str]:
    folder = results / "generator_swap"
    skipped = folder / "skipped.json"
    if skipped.exists():
        return ["## Generator swap (MuSE)", "", json.loads(skipped.read_text())["reason"], ""]
    table = _read(folder / "comparison.csv")
    if table is None:
        return []
    rows = table[["generator", "method", "overall_mae", "close_contact_mae"]].round(1)
    return ["## Generator swap (MuSE against the cutoff branches, test MAE meV/Å)", "", _markdown(rows), ""]


def _section_hessian(results: Path) -> list[str]:
    path = results / "hessian" / "hessian.json"
    if not path.exists():
        return []
    summary = json.loads(path.read_text())
    rows = [
        {
            "model": label,
            "eigenvalue MAE (eV/Å²)": f"{info['eigenvalue_mae']:.3g}",
            "wavenumber MAE (cm⁻¹)": f"{info['wavenumber_mae']:.0f}",
            **{f"{block} RMSE (eV/Å²)": f"{err['rmse']:.3g}" for block, err in info["blocks"].items()},
            "negative modes": info["n_negative"],
        }
        for label, info in summary["models"].items()
    ]
    reference = summary["reference"]
    return [
        f"## Hessian benchmark ({summary['n_selected']} atoms around the closest ion pair, frame "
        f"{summary['frame']}, {summary['n_modes']} modes in the {summary['compared_in']})",
        "",
        _markdown(pd.DataFrame(rows)),
        "",
        f"OpenMM reference: finite differences ({summary['fd_step_angstrom']} Å, "
        f"{summary['openmm_platform']} platform), {reference['n_negative']} negative modes, wavenumbers "
        f"{reference['wavenumber_range'][0]:.0f} to {reference['wavenumber_range'][1]:.0f} cm⁻¹.",
        "",
    ]


def write_report(
    path, out: Path, config, results: Path, figures: dict, timings: dict, total_s: float, device: str
) -> Path:
    """Write ``report.md``: settings, tables, figure links, commit, stage timings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "quick" if config.quick else "full"
    lines = [
        f"# scalepool reproduction ({mode})",
        "",
        f"- commit: `{git_commit()}`; created {utc_now()}; device `{device}`",
        f"- versions: {', '.join(f'{k} {v}' for k, v in library_versions().items())}",
        f"- testbed: {config.data.get('n_frames')} frames, {config.data.get('stride_ps')} ps apart, "
        f"{config.data.get('box_nm')} nm box at {config.data.get('molarity')} M; time-block split "
        f"{'/'.join(str(f) for f in config.split_fractions)}; model seeds {list(config.model_seeds)}",
        f"- run folder: `{out}`",
        "",
        "## Scale layer on the test split (force MAE, meV/Å)",
        "",
        "Rows marked *(upper bound)* read the test labels (oracles); the learned routers are fitted on the "
        "train split only (the hard router's pool is refined on val). *gap recovered*: share of the gap "
        "between the better single branch (chosen on val) and the [0,1]-constrained continuous oracle. "
        "Columns *null: ...* hold the same method routing between two runs of one branch. "
        + _subset_sentence(results),
        "",
        scale_table_markdown(results) or "(no results)",
        "",
        *null_verdicts(results),
        *_section_deployable(results),
        *_section_routers(results),
        *_section_branches(results),
        *_section_pool(results),
        *_section_equal_pools(results),
        *_section_swap(results),
        *_section_hessian(results),
        *_section_search(results),
        "## Figures",
        "",
    ]
    for name, paths in figures.items():
        png = Path(paths[0]).name
        lines += [
            f"### {name.replace('_', ' ')}",
            "",
            f"![{name}]({png}) ([PDF]({Path(png).with_suffix('.pdf')}))",
            "",
        ]
    lines += ["## Timings", "", "| stage | seconds | this run |", "| --- | --- | --- |"]
    for stage, info in timings.items():
        lines.append(f"| {stage} | {info['elapsed_s']:.0f} | {'ran' if info['ran'] else 'reused'} |")
    lines += ["", f"Wall time of this invocation: {total_s:.0f} s.", ""]
    write_text(path, "\n".join(lines))
    return path
