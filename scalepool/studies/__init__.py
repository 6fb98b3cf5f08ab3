"""Studies: each computes results from prediction caches and writes them with provenance.

Every study (``studies/<name>.py`` runs one from the command line) writes
CSV/JSON tables into its own results folder and closes it with
``provenance.json`` (commit, parameters, seeds, input checksums, versions,
time); figure code only reads those folders (:mod:`scalepool.plots`).
:func:`reproduce` runs the whole chain, from the OpenMM testbed to the report.

=====================  =====================================================
study                  what it writes
=====================  =====================================================
``branch_comparison``  per-branch errors (overall, ions, close contact, species)
``oracle_table``       the paper's table, MAE vs global s, oracle s vs distance
``pool_refinement``    refinement rounds from {0, 1}, history JSON
``routers``            learned routers vs oracles, choices per sample
``generator_swap``     the same with the MuSE generator (skipped without it)
``search``             optuna searches on the cache
=====================  =====================================================
"""

from ._pipeline import ParallelStage, Pipeline, stage_key
from ._readme import (
    BLOCK_GENERATORS,
    MEMORY_CSVS,
    export_results,
    generate_blocks,
    readme_blocks,
    stale_blocks,
    write_readme,
)
from ._registry import STUDIES, add_study_arguments, run_study, run_study_from_args, study_main
from ._reproduce import reproduce
from ._reproduce_config import BranchPlan, ReproduceConfig, make_config
from ._study import Option, Study

__all__ = [
    "BLOCK_GENERATORS",
    "MEMORY_CSVS",
    "STUDIES",
    "BranchPlan",
    "Option",
    "ParallelStage",
    "Pipeline",
    "ReproduceConfig",
    "Study",
    "add_study_arguments",
    "export_results",
    "generate_blocks",
    "make_config",
    "readme_blocks",
    "reproduce",
    "run_study",
    "run_study_from_args",
    "stage_key",
    "stale_blocks",
    "study_main",
    "write_readme",
]
