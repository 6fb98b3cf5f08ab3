"""Hessian study: trained models against the OpenMM force field that labelled their data.

Exact model Hessians (double backprop) against central finite differences of
OpenMM's forces over ~30 atoms around the closest ion pair, compared as
eigenvalue and frequency spectra and per block (see
:mod:`scalepool.studies._hessian_study`).  Writes ``hessian.npz``,
``hessian.json``, ``provenance.json`` and the figure ``hessian.png``/``.pdf``
into ``--out``.  ``scalepool reproduce`` runs it on its own runs.

    python studies/hessian.py --data data/nacl.npz --run runs/short --run runs/muse --out results/hessian
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from scalepool.plots import save, use_style
from scalepool.plots._hessian_figures import spectra_figure
from scalepool.studies._hessian_study import run, summary_lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="testbed dataset .npz (scalepool data nacl)")
    parser.add_argument(
        "--run", required=True, type=Path, action="append", help="run directory or model file; repeatable"
    )
    parser.add_argument("--out", required=True, type=Path, help="results directory")
    parser.add_argument("--frame", type=int, default=-1, help="frame index (default: the last, a test frame)")
    parser.add_argument("--n-atoms", type=int, default=30, help="selection size: ion pair + whole waters")
    parser.add_argument("--step", type=float, default=1e-3, help="finite-difference step, Å (default 1e-3)")
    parser.add_argument(
        "--platform", choices=["Reference", "CPU"], default="Reference", help="OpenMM platform"
    )
    parser.add_argument("--device", default="cpu", help="torch device of the models")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out, summary = run(
        args.data, args.run, args.out, args.frame, args.n_atoms, args.step, args.platform, args.device
    )
    with use_style():  # the figure reads only the saved npz
        save(spectra_figure(out / "hessian.npz"), out, "hessian")
    for line in summary_lines(summary):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
