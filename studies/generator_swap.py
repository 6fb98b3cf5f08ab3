"""Study generator_swap: repeat the scale table, global-s curve and pool refinement with the MuSE generator
(anchors short -> muse) beside the cutoff generator (short -> long); skipped with a
message when no cache holds forces_muse.

Usage::

    python studies/generator_swap.py --pred PRED.npz [PRED_SEED1.npz ...] --out results/generator_swap [--seeds 0 1 2] [--device cpu]

PRED.npz must hold forces_short and forces_muse (scalepool predict --run RUN_short --run
RUN_long --run RUN_muse)

Writes CSV/JSON tables and provenance.json (commit, parameters, seeds, input checksums, versions,
time) into --out only; see scalepool/studies/ for the tables, ``--help`` for the options.
"""

import sys

from scalepool.studies import study_main

if __name__ == "__main__":
    sys.exit(study_main("generator_swap"))
