"""Study pool_refinement: scale-pool refinement from the anchors {0,1} on val; every round's pool scored by oracle
routing on test (upper bound), with the share of the hard-to-continuous oracle gap it
recovers; reference pools including the paper's.

Usage::

    python studies/pool_refinement.py --pred PRED.npz [PRED_SEED1.npz ...] --out results/pool_refinement [--seeds 0 1 2] [--device cpu]

Writes CSV/JSON tables and provenance.json (commit, parameters, seeds, input checksums, versions,
time) into --out only; see scalepool/studies/ for the tables, ``--help`` for the options.
"""

import sys

from scalepool.studies import study_main

if __name__ == "__main__":
    sys.exit(study_main("pool_refinement"))
