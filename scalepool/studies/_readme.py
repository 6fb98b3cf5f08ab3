"""The README's result blocks, generated from committed results (never typed by hand).

Every block of the README between ``<!-- BEGIN generated:NAME -->`` and
``<!-- END generated:NAME -->`` has a generator in :data:`BLOCK_GENERATORS`: a
function of the repository root that reads committed results files and returns
the block's markdown.

- ``quick-provenance``, ``quick-results``: ``results/quick/`` (``make demo`` ends
  with ``scalepool readme --write --run runs/demo``: the run's report, final table
  and stage timings are copied there with a ``provenance.json`` of the commit and
  the files' SHA-256);
- ``memory-table``: ``results/memory/final_*.csv`` (:data:`MEMORY_CSVS`, written by
  ``benchmarks/memory.py``), rendered by :func:`scalepool.plots.memory_table_markdown`;
  ``memory-summary``: the same files by edge path (:func:`scalepool.plots.memory_summary_markdown`);
- ``precision-speed``: ``results/precision/speed_*.csv`` (``benchmarks/branches.py --csv``,
  one file per ``--precision``);
- ``npt-density``: ``results/npt/*.csv`` (``benchmarks/npt_density.py --out`` on the
  quick demo's models), the OpenMM reference first;
- ``backbones-small``: ``results/backbones_small/study_*/`` (``summary.csv`` and
  ``gains.csv`` of the backbone study), mean ± std over seeds;
- ``backbones-scale``: ``scale_table.csv`` of the same studies: the scale layer with
  MuSE(X) and X + P3M as generators beside the null pair;
- ``testbeds-quick``: ``results/testbeds_quick/tables/*.csv`` (the scale tables of
  ``make demo-testbeds``), each routing row beside its null control;
- markdown written by a command, shown verbatim (:data:`MARKDOWN_TABLES`):
  ``precision-table`` (``benchmarks/precision.py --markdown``) and
  ``testbeds-quick-studies`` (the "Studies" section of the testbed run's ``report.md``).

``scalepool readme --check`` (run by the tests, hence by CI) fails when a block
differs from what its files generate, when a block has no generator and when a
block's source files are missing; ``--write`` rewrites the blocks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from .._files import write_atomic, write_json, write_text
from ..plots import memory_summary_markdown, memory_table_markdown
from ..provenance import file_sha256, git_commit, utc_now
from ..scales import NULL_PREFIX

#: run-folder path -> name under ``results/quick/``
EXPORTED = {
    "figures/report.md": "report.md",
    "results/oracle_table/table.csv": "table.csv",
    "results/oracle_table/gains.csv": "gains.csv",
    "results/pool_refinement/equal_size_pools.csv": "equal_size_pools.csv",
    "results/pool_refinement/reference_pools.csv": "reference_pools.csv",
    "results/branch_comparison/summary.csv": "branch_summary.csv",
    "results/routers/summary.csv": "routers_summary.csv",
    "results/deployable/summary.csv": "deployable_summary.csv",
    "results/deployable/deployable.csv": "deployable.csv",
    "results/generator_swap/table.csv": "generator_swap_table.csv",
    "results/hessian/hessian.json": "hessian.json",
    "stages.json": "stages.json",
}
_BLOCK = re.compile(
    r"(<!-- BEGIN generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- END generated:(?P=name) -->)", re.S
)


def export_results(run: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Copy a ``reproduce`` run's report and tables into ``dest`` with a provenance record.

    Returns the names written.  The run must hold at least ``figures/report.md`` and
    the scale table; a file the run lacks is left out (and removed from ``dest``).
    """
    run, dest = Path(run), Path(dest)
    for required in ("figures/report.md", "results/oracle_table/table.csv"):
        if not (run / required).exists():
            raise FileNotFoundError(f"{run} holds no {required}: is it a finished 'scalepool reproduce' run?")
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for source, name in EXPORTED.items():
        target = dest / name
        if (run / source).exists():
            write_atomic(target, (run / source).read_bytes())
            written.append(name)
        else:
            target.unlink(missing_ok=True)
    write_json(
        dest / "provenance.json",
        {
            "run": str(run.resolve()),
            "exported": utc_now(),
            "git_commit": git_commit(),
            "files": {name: file_sha256(dest / name) for name in written},
        },
    )
    return written


def readme_blocks(results: str | os.PathLike) -> dict[str, str]:
    """Generated README blocks from a results folder: ``quick-results`` (the report's
    tables, headings one level down) and ``quick-provenance`` (commit and date)."""
    results = Path(results)
    report = (results / "report.md").read_text()
    sections = re.split(r"(?m)^(?=## )", report)
    keep = [s for s in sections[1:] if not s.startswith(("## Figures",))]
    body = re.sub(r"(?m)^(#+) ", r"#\1 ", "".join(keep))  # one level down inside the README
    header = [line for line in sections[0].splitlines() if line.startswith("- ") and "run folder" not in line]
    return {
        "quick-provenance": "\n".join(header) + "\n",
        "quick-results": body.strip() + "\n",
    }


def _quick(name: str, results: Path | None = None) -> Callable[[Path], str]:
    def generate(root: Path) -> str:
        return readme_blocks(root / QUICK_RESULTS if results is None else results)[name]

    generate.__doc__ = f"The ``{name}`` block from ``{QUICK_RESULTS}/report.md`` (or the given folder)."
    return generate


#: Folder of the quick run's committed results, relative to the repository root.
QUICK_RESULTS = "results/quick"
#: The memory benchmark's committed CSVs (glob patterns relative to the repository root).
MEMORY_CSVS = ("results/memory/final_*.csv",)
#: the same benchmark on the code before chunked edge passes (commit e6de2b8)
MEMORY_BEFORE_CSVS = ("results/memory/before_*.csv",)
#: The committed small backbone study (one ``study_<backbone>/`` folder each).
BACKBONES_SMALL = "results/backbones_small"
#: The committed scale tables of the small testbed run.
#: the scale tables of ``scalepool reproduce --quick --testbeds-only`` (``make demo-testbeds``)
TESTBEDS_QUICK_TABLES = "results/testbeds_quick/tables"
#: ``benchmarks/npt_density.py --out`` CSVs of the quick demo's models (glob, relative to the root)
NPT_CSVS = ("results/npt/*.csv",)
#: ``benchmarks/branches.py --csv`` runs, one per ``--precision`` (named in each provenance)
PRECISION_SPEED_CSVS = ("results/precision/speed_*.csv",)
#: committed markdown shown verbatim: block -> (file, the ``## `` section to show or None for all)
MARKDOWN_TABLES = {
    "precision-table": ("results/precision/quick_models.md", None),
    "testbeds-quick-studies": ("results/testbeds_quick/report.md", "## Studies"),
}


def _sources(root: Path, patterns, what: str) -> list[Path]:
    found = sorted({p for pattern in patterns for p in root.glob(pattern)})
    if not found:
        raise FileNotFoundError(f"{what}: no file matches {[str(root / p) for p in patterns]}")
    return found


def memory_block(root: str | os.PathLike) -> str:
    """``memory-table``: the memory benchmark's table over :data:`MEMORY_CSVS`."""
    root = Path(root)
    return memory_table_markdown(_sources(root, MEMORY_CSVS, "memory-table"), root=root)


def npt_block(root: str | os.PathLike) -> str:
    """``npt-density``: the NPT density runs of :data:`NPT_CSVS`, the OpenMM reference first.

    Densities g/cm^3 (statistics over the last half of each run; "vs OpenMM" against the
    one reference run of the files), pressures bar,
    temperature K; "start virial" is the molecular virial pressure of the start frame
    without the kinetic term (OpenMM's by a finite difference of its energy); "start atomic
    virial" the models' atomic one (rigid water: constraint forces left out).
    """
    root = Path(root)
    paths = _sources(root, NPT_CSVS, "npt-density")
    runs = pd.concat([_read_csv(p).assign(source=p.relative_to(root).as_posix()) for p in paths])
    runs["failure"] = runs["failure"].fillna("")
    reference = runs[runs["model"].isna()]
    if len(reference) != 1:
        raise ValueError(f"npt-density: expected one OpenMM reference run in {paths}, found {len(reference)}")
    runs = pd.concat([reference, runs[runs["model"].notna()]], ignore_index=True)
    rho_reference = float(reference["rho_mean"].iloc[0])  # vs OpenMM: also for files run without it
    lines = [
        "| run | steps | ps | rho_0 | rho mean (last half) | std | drift /ps | vs start | vs OpenMM "
        "| P bar (last half) | T K (last half) | start virial P (bar) | start atomic virial P (bar) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def num(value, spec):
        return "–" if pd.isna(value) else format(value, spec)

    for _, r in runs.iterrows():
        lines.append(
            f"| {r['run']}{' (stopped)' if r['failure'] else ''} | {int(r['steps'])} | {r['ps']:.2f} | {r['rho_start']:.4f} | {r['rho_mean']:.4f} "
            f"| {r['rho_std']:.4f} | {num(r['drift_per_ps'], '+.3f')} | {r['vs_start']:+.3f} "
            f"| {r['rho_mean'] - rho_reference:+.3f} | {num(r['pressure_bar'], '.0f')} | {num(r['temperature_K'], '.0f')} "
            f"| {r['start_virial_bar']:.0f} | {num(r.get('start_atomic_virial_bar'), '.0f')} |"
        )
    stopped = runs[runs["failure"] != ""]
    notes = [f"- {r['run']}: {r['failure']}" for _, r in stopped.iterrows()]
    ideal = runs["ideal_gas_bar"].iloc[0]
    text = "\n".join(lines) + "\n"
    if notes:  # their last-half statistics include the blow-up
        text += "\nStopped runs (their statistics cover the last half of the steps run, blow-up included):\n"
        text += "\n".join(notes) + "\n"
    text += (
        f"\nThe centre-of-mass ideal-gas term adds {ideal:.0f} bar to the start virial pressures. "
        "From " + ", ".join(f"`{p}`" for p in dict.fromkeys(runs["source"])) + ".\n"
    )
    return text


def precision_speed_block(root: str | os.PathLike) -> str:
    """``precision-speed``: CPU seconds per step of each branch and mode by precision, from
    :data:`PRECISION_SPEED_CSVS` (the precision is read from each file's provenance), with
    each mixed precision's ratio to float32 (same branch, implementation, batch and mode)."""
    import json

    root = Path(root)
    tables = []
    for path in _sources(root, PRECISION_SPEED_CSVS, "precision-speed"):
        record = Path(str(path) + ".provenance.json")
        if not record.exists():
            raise FileNotFoundError(f"precision-speed: {record} is missing (it names the run's precision)")
        precision = json.loads(record.read_text())["parameters"]["precision"]
        tables.append(pd.read_csv(path).assign(precision=precision, source=path.relative_to(root).as_posix()))
    runs = pd.concat(tables, ignore_index=True)
    key = ["branch", "impl", "batch", "mode"]
    if runs.duplicated([*key, "precision"]).any():
        raise ValueError("precision-speed: a case is measured twice at one precision")
    wide = runs.pivot_table(index=key, columns="precision", values="cpu s/step", sort=False)
    if "float32" not in wide.columns:
        raise ValueError("precision-speed: no float32 run to compare with")
    mixed = [c for c in wide.columns if c != "float32"]
    lines = [
        "| branch | batch | mode | float32 CPU s/step | "
        + " | ".join(f"{m} CPU s/step | {m} / float32" for m in mixed) + " |",
        "| --- | ---: | --- | ---: | " + " | ".join("---: | ---:" for _ in mixed) + " |",
    ]
    for (branch, impl, batch, mode), r in wide.iterrows():
        cells = [f"{r[m]:.2f} | {r[m] / r['float32']:.2f}" if pd.notna(r[m]) else "– | –" for m in mixed]
        lines.append(f"| {branch} ({impl}) | {batch} | {mode} | {r['float32']:.2f} | " + " | ".join(cells) + " |")
    sources = ", ".join(f"`{s}`" for s in dict.fromkeys(runs["source"]))
    return "\n".join(lines) + f"\n\nFrom {sources}.\n"


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    # only empty fields are missing: pandas would also read the pair label "null" as NaN
    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def _pm(mean, std, fmt: str = ".1f") -> str:
    """``mean ± std`` (``–`` for a missing mean; no ``±`` without a std)."""
    if pd.isna(mean):
        return "–"
    return f"{mean:{fmt}}" if pd.isna(std) else f"{mean:{fmt}} ± {std:{fmt.lstrip('+')}}"


def backbones_block(root: str | os.PathLike) -> str:
    """``backbones-small``: test force MAE (meV/Å, mean ± std over seeds) of each backbone alone,
    with the long branch and with MuSE, and their gains over the backbone alone (% of its MAE)."""
    root = Path(root)
    studies = [p for p in _sources(root, (f"{BACKBONES_SMALL}/study_*",), "backbones-small") if p.is_dir()]
    lines = [
        "| backbone | variant | overall MAE (meV/Å) | ions MAE (meV/Å) | parameters | gain over alone (%) | seeds |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for study in studies:
        summary, gains = _read_csv(study / "summary.csv"), _read_csv(study / "gains.csv")
        for column in ("backbone", "variant", "overall_mae", "overall_mae_std", "ion_mae", "ion_mae_std",
                       "parameters", "n"):  # fmt: skip
            if column not in summary:
                raise ValueError(f"{study / 'summary.csv'}: no column {column!r}")
        for _, row in summary.iterrows():
            gain = gains[gains["backbone"] == row["backbone"]]
            if row["variant"] == "alone":
                cell = "–"
            elif len(gain) != 1 or f"{row['variant']}_gain_pct" not in gain:
                raise ValueError(
                    f"{study / 'gains.csv'}: no {row['variant']}_gain_pct row for backbone {row['backbone']!r}"
                )
            else:
                g = gain.iloc[0]
                cell = _pm(g[f"{row['variant']}_gain_pct"], g[f"{row['variant']}_gain_pct_std"], "+.1f")
            lines.append(
                f"| {row['backbone']} | {row['variant']} | {_pm(row['overall_mae'], row['overall_mae_std'])} "
                f"| {_pm(row['ion_mae'], row['ion_mae_std'])} | {row['parameters']:,.0f} | {cell} "
                f"| {row['n']:.0f} |"
            )
    names = ", ".join(f"`{s.relative_to(root).as_posix()}/`" for s in studies)
    return "\n".join(lines) + f"\n\nFrom `summary.csv` and `gains.csv` of {names}.\n"


#: the scale-layer rows of the backbones study shown in the README (``scale_table.csv`` row names)
BACKBONE_SCALE_ROWS = (
    "best global s",
    "oracle hard routing {0,1} (upper bound)",
    "[0,1]-constrained continuous oracle (upper bound)",
    "learned hard router (pool chosen on val)",
    "learned continuous s",
)


def backbones_scale_block(root: str | os.PathLike) -> str:
    """``backbones-scale``: the scale layer per backbone X with MuSE(X) and X + P3M as generators
    (``scale_table.csv`` of each study): gain over the better single branch (%), the same method's
    gain on the null pair (X alone, two seeds), and the excess over null (pp) overall and on the
    ions, mean ± std over seed pairs."""
    root = Path(root)
    studies = [p for p in _sources(root, (f"{BACKBONES_SMALL}/study_*",), "backbones-scale") if p.is_dir()]
    lines = [
        "| backbone | generator | method | gain (%) | null pair: gain (%) | excess over null (pp) "
        "| excess on ions (pp) | seed pairs |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for study in studies:
        path = study / "scale_table.csv"
        if not path.exists():
            raise FileNotFoundError(f"backbones-scale: {path} is missing (run the study with --scale-layer)")
        table = _read_csv(path).set_index(["backbone", "generator", "row", "metric"])

        def cell(key, fmt, path=path, table=table):
            if key not in table.index:
                raise ValueError(f"{path}: no row {key}")
            found = table.loc[key]
            return _pm(found["mean"], found["std"], fmt), int(found["n"])

        for backbone in sorted({k[0] for k in table.index}):
            for generator in ("muse", "long"):
                for row in BACKBONE_SCALE_ROWS:
                    gain, n = cell((backbone, generator, row, "gain_pct"), "+.1f")
                    null, _ = cell((backbone, "null", row, "gain_pct"), "+.1f")
                    excess, _ = cell((backbone, generator, row, "excess_over_null"), "+.1f")
                    ions, _ = cell((backbone, generator, row, "excess_over_null_ions"), "+.1f")
                    lines.append(
                        f"| {backbone} | {generator} | {row} | {gain} | {null} | {excess} | {ions} | {n} |"
                    )
    names = ", ".join(f"`{s.relative_to(root).as_posix()}/`" for s in studies)
    return "\n".join(lines) + f"\n\nFrom `scale_table.csv` of {names}.\n"


def _null_aligned(table: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Real rows and their null-control rows, in the same order (as ``scale_table`` writes them)."""
    if "pair" not in table:
        raise ValueError(f"{path}: no 'pair' column (real / null); is it a scale table?")
    real = table[table["pair"] == "real"].reset_index(drop=True)
    null = table[table["pair"] == "null"].reset_index(drop=True)
    if null.empty:
        raise ValueError(f"{path}: no null-control rows (pair == 'null')")
    routed = real["fitted_on"].fillna("") != ""
    names = null["method"].str.removeprefix(NULL_PREFIX)
    if len(null) != len(real) or not (names[routed] == real["method"][routed]).all():
        raise ValueError(f"{path}: the null rows do not follow the real rows' methods")
    return real, null


def testbeds_block(
    root: str | os.PathLike, tables: str = TESTBEDS_QUICK_TABLES, name: str = "testbeds-quick"
) -> str:
    """``testbeds-quick``: each scale table of a testbed run (``tables``: its
    folder of ``scalepool table`` CSVs), test force MAE (meV/Å) of the real pair beside the null
    pair, gains over the better single branch (%) and the excess over null (percentage points),
    mean ± std over seeds."""
    root = Path(root)
    parts = []
    for path in _sources(root, (f"{tables}/*.csv",), name):
        table = _read_csv(path)
        real, null = _null_aligned(table, path)
        testbed, _, pair = path.stem.partition("_")
        parts += [
            f"**{testbed}, {pair.replace('_', ' / ')}** (`{path.relative_to(root).as_posix()}`, "
            f"{int(table['n_seeds'].max())} seeds)",
            "",
            "| method | overall MAE (meV/Å) | null: overall MAE | gain % (real / null) | excess over null (pp) | fitted on |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for i, row in real.iterrows():
            gains = " / ".join(
                "–" if pd.isna(g) else f"{g:+.1f}" for g in (row["gain_pct"], null.loc[i, "gain_pct"])
            )
            fitted = "" if pd.isna(row["fitted_on"]) else row["fitted_on"]
            parts.append(
                f"| {row['method']} | {_pm(row['overall_mae'], row['overall_mae_std'])} "
                f"| {_pm(null.loc[i, 'overall_mae'], null.loc[i, 'overall_mae_std'])} | {gains} "
                f"| {_pm(row['excess_over_null'], row['excess_over_null_std'], '+.1f')} | {fitted} |"
            )
        parts.append("")
    return "\n".join(parts)


def markdown_block(root: str | os.PathLike, name: str) -> str:
    """Committed markdown (:data:`MARKDOWN_TABLES`) verbatim, or one of its ``## `` sections with its
    headings one level down, with its source named."""
    source, section = MARKDOWN_TABLES[name]
    (path,) = _sources(Path(root), (source,), name)
    text = path.read_text()
    if section is not None:
        parts = [p for p in re.split(r"(?m)^(?=## )", text) if p.startswith(section + "\n")]
        if not parts:
            raise ValueError(f"{path}: no section {section!r} for block {name!r}")
        text = re.sub(r"(?m)^(#+) ", r"##\1 ", parts[0].split("\n", 1)[1])  # inside a ### README section
    return text.strip("\n") + f"\n\nFrom `{source}`.\n"


#: README block name -> generator(repo_root) -> markdown, each reading committed results only.
BLOCK_GENERATORS: dict[str, Callable[[Path], str]] = {
    "quick-provenance": _quick("quick-provenance"),
    "quick-results": _quick("quick-results"),
    "memory-table": memory_block,
    "memory-summary": lambda root: memory_summary_markdown(_sources(Path(root), MEMORY_CSVS, "memory-summary")),
    "memory-before": lambda root: memory_table_markdown(
        _sources(Path(root), MEMORY_BEFORE_CSVS, "memory-before"), root=Path(root)
    ),
    "npt-density": npt_block,
    "precision-speed": precision_speed_block,
    "backbones-small": backbones_block,
    "backbones-scale": backbones_scale_block,
    "testbeds-quick": testbeds_block,
    **{name: (lambda root, name=name: markdown_block(root, name)) for name in MARKDOWN_TABLES},
}


def render_readme(text: str, blocks: dict[str, str]) -> str:
    """``text`` with every generated block replaced; raises when a block has no generator."""
    names = [m.group("name") for m in _BLOCK.finditer(text)]
    unknown = sorted(set(names) - set(blocks))
    if unknown:
        raise ValueError(f"README blocks {unknown} have no generator; known: {sorted(blocks)}")
    return _BLOCK.sub(lambda m: m.group(1) + blocks[m.group("name")] + m.group(4), text)


def generate_blocks(
    names, root: str | os.PathLike, results: str | os.PathLike | None = None
) -> dict[str, str]:
    """The markdown of the blocks ``names`` from the committed files under ``root``.

    ``results`` replaces ``root/results/quick`` for the quick blocks.  Raises ``ValueError``
    for a name without a generator and ``FileNotFoundError`` (naming the block) when a
    block's source files are missing.
    """
    generators = dict(BLOCK_GENERATORS)
    if results is not None:
        generators.update(
            {name: _quick(name, Path(results)) for name in ("quick-provenance", "quick-results")}
        )
    names = list(dict.fromkeys(names))
    unknown = sorted(set(names) - set(generators))
    if unknown:
        raise ValueError(f"README blocks {unknown} have no generator; known: {sorted(generators)}")
    blocks = {}
    for name in names:
        try:
            blocks[name] = generators[name](Path(root))
        except FileNotFoundError as err:
            raise FileNotFoundError(f"README block '{name}': its source files are missing: {err}") from err
    return blocks


def _current(readme: Path) -> tuple[str, dict[str, str]]:
    text = readme.read_text()
    current = {m.group("name"): m.group("body") for m in _BLOCK.finditer(text)}
    if not current:
        raise ValueError(f"{readme} has no '<!-- BEGIN generated:NAME -->' block")
    return text, current


def stale_blocks(
    readme: str | os.PathLike,
    results: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
) -> list[str]:
    """Names of the README blocks that differ from what their committed files generate.

    ``root`` (default: the README's folder) is the repository root the generators read;
    ``results`` replaces ``root/results/quick`` for the quick blocks.
    """
    readme = Path(readme)
    text, current = _current(readme)
    blocks = generate_blocks(current, readme.parent if root is None else root, results)
    return sorted(name for name, body in current.items() if body != blocks[name])


def write_readme(
    readme: str | os.PathLike,
    results: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
) -> list[str]:
    """Rewrite the generated blocks of ``readme`` from their files; returns the changed names."""
    readme = Path(readme)
    text, current = _current(readme)
    blocks = generate_blocks(current, readme.parent if root is None else root, results)
    changed = sorted(name for name, body in current.items() if body != blocks[name])
    if changed:
        write_text(readme, render_readme(text, blocks))
    return changed
