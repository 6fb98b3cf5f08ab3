"""Study branch_comparison: per-branch force errors (meV/Å): overall, ions, close contact (nearest-ion distance < 6
Å), per species, beside a constant per-species baseline; error vs nearest-ion distance;
parity data; branch complementarity.

Usage::

    python studies/branch_comparison.py --pred PRED.npz [PRED_SEED1.npz ...] --out results/branch_comparison [--seeds 0 1 2] [--device cpu]

Writes CSV/JSON tables and provenance.json (commit, parameters, seeds, input checksums, versions,
time) into --out only; see scalepool/studies/ for the tables, ``--help`` for the options.
"""

import sys

from scalepool.studies import study_main

if __name__ == "__main__":
    sys.exit(study_main("branch_comparison"))
