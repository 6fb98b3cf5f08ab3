"""The memory report: a markdown table and a figure from CSVs of ``benchmarks/memory.py``.

Reads one or more CSVs written by ``benchmarks/memory.py --out`` and writes

- a markdown table (``--markdown PATH``, else stdout): branch, mode, system, atoms,
  MB above the idle baseline, KB/atom, CPU seconds per step, CPU ms per atom and
  whether the target is met (60 KB/atom for inference, 200 KB/atom for training);
- a figure (``--figure PATH.png``): KB/atom and CPU ms/atom against atoms (log x),
  one line per branch and mode, the targets dashed.

A case measured in one file replaces the same case skipped in another; a case
measured twice is an error.  The table is the README block ``memory-table``
(``scalepool readme --write`` regenerates it from ``results/memory/final_*.csv``).

    python benchmarks/memory_report.py results/memory/final_*.csv \\
        --markdown figures/memory.md --figure figures/memory.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scalepool._files import write_text
from scalepool.plots import draw_memory_figure, memory_table_markdown


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("csv", type=Path, nargs="+", help="CSV(s) written by benchmarks/memory.py --out")
    parser.add_argument("--markdown", type=Path, help="write the table here (default: print it)")
    parser.add_argument("--figure", type=Path, help="write the two-panel figure here (PNG)")
    parser.add_argument(
        "--device", default="cpu", help="accepted for a uniform interface; the report runs no model"
    )
    args = parser.parse_args(argv)
    try:
        table = memory_table_markdown(args.csv)
        if args.markdown is not None:
            write_text(args.markdown, table)
            print(f"wrote {args.markdown}")
        else:
            print(table, end="")
        if args.figure is not None:
            if args.figure.suffix.lower() != ".png":
                raise ValueError(f"--figure {args.figure}: the figure is a PNG, give a .png path")
            print(f"wrote {draw_memory_figure(args.csv, args.figure)}")
    except (ValueError, FileNotFoundError) as err:
        print(f"memory_report: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
