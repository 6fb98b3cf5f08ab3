"""Memory and time per atom of the branches, from CSVs written by ``benchmarks/memory.py``.

Each CSV row is one (system, branch, mode) case: ``n_atoms``, ``status`` (``ok``,
``skipped``, ``failed``, ``killed``), ``peak_mb`` (peak resident set size of one
step **above** the process's idle baseline, MB = 2**20 bytes), ``kb_per_atom``
(``peak_mb * 1024 / n_atoms``) and ``cpu_s`` (CPU seconds of the second step).

:func:`load_memory_results` reads and checks several such files,
:func:`memory_table_markdown` renders the README table (targets: 60 KB/atom for
inference, 200 KB/atom for training), :func:`memory_summary_markdown` the summary
by edge path (CSVs with a ``chunked`` column: unchunked or chunked edge pass), and
:func:`draw_memory_figure` draws KB/atom and CPU ms/atom against atom count (log x)
to a PNG.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from .._files import write_atomic
from ._style import color, plt, use_style

#: The memory targets, KB of peak RSS above baseline per atom, by mode.
MEMORY_TARGETS_KB_PER_ATOM = {"infer": 60.0, "train": 200.0}
#: Columns ``benchmarks/memory.py`` writes that the report reads.
MEMORY_COLUMNS = ("system", "n_atoms", "branch", "mode", "status", "peak_mb", "kb_per_atom", "cpu_s")
_MODES = ("infer", "train")


def _read_one(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"memory results {path} do not exist")
    table = pd.read_csv(path)
    missing = [c for c in MEMORY_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; is it a benchmarks/memory.py CSV?")
    if table.empty:
        raise ValueError(f"{path}: no rows")
    for i, row in table.iterrows():
        where = f"{path} row {i + 2} ({row['system']}, {row['branch']}, {row['mode']})"
        if row["mode"] not in _MODES:
            raise ValueError(f"{where}: mode {row['mode']!r} is not one of {_MODES}")
        if not (np.isfinite(row["n_atoms"]) and row["n_atoms"] > 0):
            raise ValueError(f"{where}: n_atoms must be a positive count, got {row['n_atoms']!r}")
        if row["status"] != "ok":
            continue
        for field in ("peak_mb", "kb_per_atom", "cpu_s"):
            if not np.isfinite(row[field]) or row[field] < 0:
                raise ValueError(f"{where}: {field} must be finite and >= 0, got {row[field]!r}")
        expected = row["peak_mb"] * 1024.0 / row["n_atoms"]
        if not np.isclose(row["kb_per_atom"], expected, rtol=1e-6, atol=1e-9):
            raise ValueError(
                f"{where}: kb_per_atom {row['kb_per_atom']!r} is not peak_mb * 1024 / n_atoms = {expected!r}"
            )
    table = table.copy()
    table["source"] = str(path)
    return table


def load_memory_results(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """All cases of ``paths`` (CSVs of ``benchmarks/memory.py``), one row per (system, branch, mode).

    A measured (``ok``) case replaces a skipped or failed one of another file; two measured
    rows of one case are an error naming both files.  Added columns: ``mb_above_baseline``
    (MB), ``cpu_ms_per_atom`` (ms), ``target_kb_per_atom`` and ``target_met`` (bool; ``NaN``
    for cases not measured), ``source`` (the file).  Rows sorted by mode, branch (in order of
    first appearance), atoms.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no memory results given")
    table = pd.concat([_read_one(p) for p in paths], ignore_index=True)
    table["n_atoms"] = table["n_atoms"].astype(int)
    key = ["system", "branch", "mode"]
    ok = table[table["status"] == "ok"]
    twice = ok[ok.duplicated(key, keep=False)]
    if not twice.empty:
        first = twice.iloc[0]
        files = sorted(twice[(twice[key] == first[key]).all(axis=1)]["source"])
        raise ValueError(
            f"case ({first['system']}, {first['branch']}, {first['mode']}) measured in more than one file: {files}"
        )
    measured = set(map(tuple, ok[key].to_numpy()))
    rest = table[table["status"] != "ok"].drop_duplicates(key)
    rest = rest[[tuple(r) not in measured for r in rest[key].to_numpy()]]
    table = pd.concat([ok, rest], ignore_index=True)
    branch_order = {b: i for i, b in enumerate(dict.fromkeys(table["branch"]))}
    table = table.assign(
        _m=table["mode"].map(_MODES.index), _b=table["branch"].map(branch_order)
    ).sort_values(["_m", "_b", "n_atoms", "system"], kind="stable")
    table = table.drop(columns=["_m", "_b"]).reset_index(drop=True)
    measured_rows = table["status"] == "ok"
    table["mb_above_baseline"] = table["peak_mb"].where(measured_rows)
    table["cpu_ms_per_atom"] = (table["cpu_s"] * 1e3 / table["n_atoms"]).where(measured_rows)
    table["target_kb_per_atom"] = table["mode"].map(MEMORY_TARGETS_KB_PER_ATOM)
    met = table["kb_per_atom"] <= table["target_kb_per_atom"]
    table["target_met"] = met.astype(object).where(measured_rows, np.nan)
    if "chunked" not in table.columns:
        table["chunked"] = np.nan
    table["edge_pass"] = table["chunked"].map(_edge_pass)
    return table


def _edge_pass(chunked) -> str:
    """``chunked`` column value (bool, 'True'/'False', or missing in older CSVs) -> label."""
    if isinstance(chunked, str):
        chunked = {"true": True, "false": False}.get(chunked.strip().lower(), np.nan)
    if chunked is None or (isinstance(chunked, float) and np.isnan(chunked)):
        return "–"
    return "chunked" if bool(chunked) else "unchunked"


def memory_table_markdown(paths: Iterable[str | os.PathLike], root: str | os.PathLike | None = None) -> str:
    """The README table of ``paths``: branch, mode, system, atoms, MB above baseline, KB/atom,
    CPU s per step, CPU ms per atom, target met (60 KB/atom infer, 200 KB/atom train).

    Cases not measured (skipped by ``--max-rss-gb``, failed) follow in one line.  Sources are
    named relative to ``root`` when given.
    """
    table = load_memory_results(paths)
    lines = [
        "| branch | mode | system | atoms | edge pass | MB above baseline | KB/atom | CPU s per step "
        "| CPU ms per atom | target met (KB/atom) |",
        "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    measured = table[table["status"] == "ok"]
    for _, r in measured.iterrows():
        target = f"{'yes' if r['target_met'] else 'no'} (≤ {r['target_kb_per_atom']:g})"
        lines.append(
            f"| {r['branch']} | {r['mode']} | {r['system']} | {r['n_atoms']:,} | {r['edge_pass']} "
            f"| {r['mb_above_baseline']:.0f} "
            f"| {r['kb_per_atom']:.1f} | {r['cpu_s']:.2f} | {r['cpu_ms_per_atom']:.3f} | {target} |"
        )
    rest = table[table["status"] != "ok"]
    if not rest.empty:
        cases = "; ".join(
            f"{r['branch']} {r['mode']} {r['system']} ({r['n_atoms']:,} atoms): {r['status']}"
            for _, r in rest.iterrows()
        )
        lines += ["", f"Not measured: {cases}."]
    sources = sorted(dict.fromkeys(table["source"]))
    if root is not None:
        sources = [Path(s).resolve().relative_to(Path(root).resolve()).as_posix() for s in sources]
    lines += ["", "From " + ", ".join(f"`{s}`" for s in sources) + "."]
    return "\n".join(lines) + "\n"


def memory_summary_markdown(paths: Iterable[str | os.PathLike]) -> str:
    """The README summary of ``paths``, one row per (branch, mode, edge pass) of the measured cases.

    Columns: atom range, KB/atom range (min-max), CPU ms/atom range, the largest case
    (atoms, GiB above baseline) and, on chunked rows, the CPU per atom over the unchunked
    path's (ratio of their medians, same branch and mode).  Every number comes from the
    CSVs; cases from files without a ``chunked`` column have edge pass "–".
    """
    table = load_memory_results(paths)
    measured = table[table["status"] == "ok"]
    if measured.empty:
        raise ValueError("no measured (status ok) case to summarise")
    lines = [
        "| branch | mode | edge pass | atoms | KB/atom | CPU ms per atom | largest case | CPU per atom vs unchunked |",
        "| --- | --- | --- | --- | --- | --- | --- | ---: |",
    ]
    for (branch, mode), part in measured.groupby(["branch", "mode"], sort=False):
        medians = part.groupby("edge_pass")["cpu_ms_per_atom"].median()
        for path in [p for p in ("unchunked", "chunked", "–") if p in set(part["edge_pass"])]:
            rows = part[part["edge_pass"] == path]
            largest = rows.loc[rows["n_atoms"].idxmax()]
            ratio = "–"
            if path == "chunked" and "unchunked" in medians.index:
                ratio = f"{medians['chunked'] / medians['unchunked']:.2f}x"
            lines.append(
                f"| {branch} | {mode} | {path} | {_span(rows['n_atoms'], ',.0f')} "
                f"| {_span(rows['kb_per_atom'], '.1f')} | {_span(rows['cpu_ms_per_atom'], '.2f')} "
                f"| {largest['n_atoms']:,} atoms: {largest['mb_above_baseline'] / 1024:.2f} GiB | {ratio} |"
            )
    return "\n".join(lines) + "\n"


def _span(values: pd.Series, spec: str) -> str:
    lo, hi = format(values.min(), spec), format(values.max(), spec)
    return lo if lo == hi else f"{lo}-{hi}"


def draw_memory_figure(paths: Iterable[str | os.PathLike], png: str | os.PathLike) -> Path:
    """Two panels against atom count (log x): KB/atom above baseline and CPU ms/atom, one
    line per (branch, mode) (solid, circles: infer; dotted, squares: train), the KB/atom targets dashed.

    Writes ``png`` atomically and returns its path.
    """
    table = load_memory_results(paths)
    measured = table[table["status"] == "ok"]
    if measured.empty:
        raise ValueError("no measured (status ok) case to draw")
    with use_style():
        fig, (mem, cpu) = plt.subplots(1, 2, figsize=(9.0, 3.6))
        for i, ((branch, mode), part) in enumerate(measured.groupby(["branch", "mode"], sort=False)):
            part = part.sort_values("n_atoms")
            style = {"color": color(branch, i), "ls": "-" if mode == "infer" else ":"}
            style["marker"] = "o" if mode == "infer" else "s"
            mem.plot(part["n_atoms"], part["kb_per_atom"], label=f"{branch} {mode}", **style)
            cpu.plot(part["n_atoms"], part["cpu_ms_per_atom"], label=f"{branch} {mode}", **style)
        for mode in dict.fromkeys(measured["mode"]):
            target = MEMORY_TARGETS_KB_PER_ATOM[mode]
            mem.axhline(target, color="0.3", ls="--", lw=1.0)
            mem.annotate(f"{mode} target {target:g}", (0.01, target), xycoords=("axes fraction", "data"),
                         fontsize=7, va="bottom", color="0.3")  # fmt: skip
        mem.set(xscale="log", xlabel="atoms", ylabel="peak RSS above baseline (KB/atom)", ylim=(0, None))
        cpu.set(xscale="log", xlabel="atoms", ylabel="CPU time per step (ms/atom)", ylim=(0, None))
        mem.legend()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
    return write_atomic(png, buffer.getvalue())
