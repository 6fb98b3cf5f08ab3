"""Study deployable: the saved, conservative mixed model (router fitted end to end on train) against the
better branch, beside the same model built on the null pair (two runs of one branch); test MAE in meV/Å.

Usage::

    python studies/deployable.py --pred PRED.npz [PRED_SEED1.npz ...] --out results/deployable [--device cpu]

The same command as ``scalepool study deployable``; ``--help`` lists the options.
"""

import sys

from scalepool.studies import study_main

if __name__ == "__main__":
    sys.exit(study_main("deployable"))
