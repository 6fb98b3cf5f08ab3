"""Study oracle_table: the paper's table (test split, meV/Å): single branches, best global s, oracle hard
routing over {0,1}, continuous oracle interpolation, refined and soft-updated pool
oracles (all marked upper bound) and learned routers; MAE vs global s curves; the
oracle's best s vs nearest-ion distance.

Usage::

    python studies/oracle_table.py --pred PRED.npz [PRED_SEED1.npz ...] --out results/oracle_table [--seeds 0 1 2] [--device cpu]

Writes CSV/JSON tables and provenance.json (commit, parameters, seeds, input checksums, versions,
time) into --out only; see scalepool/studies/ for the tables, ``--help`` for the options.
"""

import sys

from scalepool.studies import study_main

if __name__ == "__main__":
    sys.exit(study_main("oracle_table"))
