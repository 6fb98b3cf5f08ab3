"""Study routers: learned hard and continuous routers (fitted on train only, several seeds) against oracle
hard routing over the refined pool and the continuous oracle (upper bounds) on test;
each router's choice against the oracle's per sample.

Usage::

    python studies/routers.py --pred PRED.npz [PRED_SEED1.npz ...] --out results/routers [--seeds 0 1 2] [--device cpu]

Writes CSV/JSON tables and provenance.json (commit, parameters, seeds, input checksums, versions,
time) into --out only; see scalepool/studies/ for the tables, ``--help`` for the options.
"""

import sys

from scalepool.studies import study_main

if __name__ == "__main__":
    sys.exit(study_main("routers"))
