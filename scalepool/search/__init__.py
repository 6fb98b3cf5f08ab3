"""Optuna searches: fast ones on cached predictions, expensive ones over model scales.

- :func:`search_scales` / :class:`ScaleSearch`: pool size and values,
  refinement settings and router settings on a prediction cache (hundreds of
  trials a minute for the pool spaces);
- :func:`search_models` / :class:`ModelSearch`: branch cutoffs or numbers of
  coarse nodes, trained epoch by epoch and pruned on the validation loss;
- :func:`open_storage`, :func:`open_results`, :func:`optimize`: SQLite (default),
  journal files or RDB servers; killed workers' trials are recovered and
  queued again, lock errors of a shared SQLite file are retried, torn journal
  records are repaired, studies refuse data other than their own, and workers
  sharing a study stop exactly at its trial target.
"""

from ._journal import JournalCorruptError, StorageWriteError, repair_journal
from ._models import COARSE_NODES, DEFAULT_SPACES, ModelSearch, build_any_branch, parse_space, search_models
from ._optimize import optimize
from ._run import cache_checksum, export_study, make_sampler, quiet_optuna, search_scales
from ._scales import SPACES, ScaleSearch
from ._storage import (
    StudyDataMismatch,
    bind_study_data,
    finished,
    open_results,
    open_storage,
    recover_dead_trials,
    sampler_seed,
    storage_kind,
)

__all__ = [
    "COARSE_NODES",
    "DEFAULT_SPACES",
    "SPACES",
    "JournalCorruptError",
    "ModelSearch",
    "ScaleSearch",
    "StorageWriteError",
    "StudyDataMismatch",
    "bind_study_data",
    "build_any_branch",
    "cache_checksum",
    "export_study",
    "finished",
    "make_sampler",
    "open_storage",
    "open_results",
    "optimize",
    "parse_space",
    "quiet_optuna",
    "recover_dead_trials",
    "repair_journal",
    "sampler_seed",
    "search_models",
    "search_scales",
    "storage_kind",
]
