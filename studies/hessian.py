"""Study hessian: trained models against the OpenMM force field that labelled their data.

Exact model Hessians (double backprop) against central finite differences of
OpenMM's forces over ~30 atoms around the closest ion pair, compared as
eigenvalue and frequency spectra and per block (see
:mod:`scalepool.studies`).  Writes ``hessian.npz``, ``hessian.json`` and
``provenance.json`` into ``--out``; ``scalepool figures`` draws ``hessian.png``
from the npz.  ``scalepool reproduce`` runs it on its own runs.

Usage::

    python studies/hessian.py --data data/nacl.npz --run runs/short --run runs/muse --out results/hessian

The same command as ``scalepool study hessian``; ``--help`` lists the options.
"""

import sys

from scalepool.studies import study_main

if __name__ == "__main__":
    sys.exit(study_main("hessian"))
