"""The README's result blocks, generated from committed results (never typed by hand).

``make demo`` ends with ``scalepool readme --write --run runs/demo``: the run's
report, final table and stage timings are copied into ``results/quick/`` (with
a ``provenance.json`` of the commit and the files' SHA-256), and every block of
the README between ``<!-- BEGIN generated:NAME -->`` and
``<!-- END generated:NAME -->`` is rewritten from those files.
``scalepool readme --check`` (run by the tests, hence by CI) fails when a block
differs from what ``results/quick/`` generates.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .._files import write_atomic, write_json, write_text
from ..provenance import file_sha256, git_commit, utc_now

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


def render_readme(text: str, blocks: dict[str, str]) -> str:
    """``text`` with every generated block replaced; raises when a block has no generator."""
    names = [m.group("name") for m in _BLOCK.finditer(text)]
    unknown = sorted(set(names) - set(blocks))
    if unknown:
        raise ValueError(f"README blocks {unknown} have no generator; known: {sorted(blocks)}")
    return _BLOCK.sub(lambda m: m.group(1) + blocks[m.group("name")] + m.group(4), text)


def stale_blocks(readme: str | os.PathLike, results: str | os.PathLike) -> list[str]:
    """Names of the README blocks that differ from what ``results`` generates."""
    text = Path(readme).read_text()
    blocks = readme_blocks(results)
    current = {m.group("name"): m.group("body") for m in _BLOCK.finditer(text)}
    if not current:
        raise ValueError(f"{readme} has no '<!-- BEGIN generated:NAME -->' block")
    render_readme(text, blocks)  # raises on a block without a generator
    return sorted(name for name, body in current.items() if body != blocks[name])


def write_readme(readme: str | os.PathLike, results: str | os.PathLike) -> list[str]:
    """Rewrite the generated blocks of ``readme`` from ``results``; returns the changed names."""
    changed = stale_blocks(readme, results)
    if changed:
        write_text(readme, render_readme(Path(readme).read_text(), readme_blocks(results)))
    return changed
