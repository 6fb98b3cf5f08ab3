"""Study search: optuna searches on the cached predictions (pool size and values, refinement settings,
router settings), resumable in a SQLite study; best trials re-run on test.

Usage::

    python studies/search.py --pred PRED.npz [PRED_SEED1.npz ...] --out results/search [--seeds 0 1 2] [--device cpu]

optuna study in OUT/study.db (resumed when run again); --n-trials counts finished trials
per study

Writes CSV/JSON tables and provenance.json (commit, parameters, seeds, input checksums, versions,
time) into --out only; see scalepool/studies/ for the tables, ``--help`` for the options.
"""

import sys

from scalepool.studies import study_main

if __name__ == "__main__":
    sys.exit(study_main("search"))
