"""Optuna searches: fast ones on cached predictions, expensive ones over model scales.

- :func:`search_scales` / :class:`ScaleSearch`: pool size and values,
  refinement settings and router settings on a prediction cache (hundreds of
  trials a minute for the pool spaces);
- :func:`search_models` / :class:`ModelSearch`: branch cutoffs or numbers of
  coarse nodes, trained epoch by epoch and pruned on the validation loss;
- :func:`open_storage`, :func:`open_study`, :func:`optimize`: SQLite (default),
  journal files or RDB servers; killed workers' trials are recovered and
  queued again, lock errors of a shared SQLite file are retried.
"""

from ._models import COARSE_NODES, DEFAULT_SPACES, ModelSearch, build_any_branch, parse_space, search_models
from ._run import export_study, make_sampler, quiet_optuna, search_scales
from ._scales import SPACES, ScaleSearch
from ._storage import (
    finished,
    open_storage,
    open_study,
    optimize,
    recover_dead_trials,
    sampler_seed,
    storage_kind,
)

__all__ = [
    "COARSE_NODES",
    "DEFAULT_SPACES",
    "SPACES",
    "ModelSearch",
    "ScaleSearch",
    "build_any_branch",
    "export_study",
    "finished",
    "make_sampler",
    "open_storage",
    "open_study",
    "optimize",
    "parse_space",
    "quiet_optuna",
    "recover_dead_trials",
    "sampler_seed",
    "search_models",
    "search_scales",
    "storage_kind",
]
