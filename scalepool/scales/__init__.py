"""Scale layer: interpolation, oracle routing, pools, differentiable updates, routers, tables.

Everything here runs on a :class:`PredictionCache` (branch and reference
forces written by ``scalepool predict``) through the :class:`ScaleGenerator`
interface, so a live model can replace the cache.  Oracles read the labels of
the split they route and are **upper bounds**; learned routers are fitted on
the train split only and are what a user can deploy.
"""


from ._deployable import mix_from_cache, pair_runs, record_path, save_mixed
from ._differentiable import SoftPoolRouter, fit_pool_scales, sample_losses_torch
from ._features import FEATURE_RADII, atom_features
from ._generator import (
    CachedGenerator,
    FunctionGenerator,
    ScaleGenerator,
    as_generator,
    broadcast_scales,
    interpolate,
)
from ._geometry import atom_ion_distances, ion_counts, ion_mask, nearest_ion
from ._mixed_fit import (
    MixedFitResult,
    cache_router_features,
    check_train_frames,
    fit_mixed_model,
    fit_router,
)
from ._oracle import (
    LOSSES,
    hard_route,
    optimal_scale,
    optimal_scale_mae,
    optimal_scale_mse,
    sample_losses_linear,
)
from ._pool import RefinementHistory, RoundRecord, ScalePool, propose, refine_pool
from ._problem import RoutingProblem
from ._routers import ContinuousRouter, HardRouter, LeakageError
from ._samples import GRANULARITIES, SampleGroups, cache_groups, sample_groups
from ._settings import SCALE_FIELDS, ScaleField, ScaleSettings, add_scale_arguments
from ._synthetic import synthetic_cache
from ._table import (
    CONTINUOUS_ORACLE,
    CONTINUOUS_ROUTER,
    EXCESS,
    GAINS,
    HARD_ORACLE,
    HARD_ROUTER,
    METRICS,
    NULL_PREFIX,
    ORACLE_FIT,
    REFINED_ORACLE,
    SOFT_ORACLE,
    evaluate_cache,
    format_table,
    parse_null_pair,
    resolve_null_pair,
    scale_table,
)

__all__ = [
    "mix_from_cache",
    "pair_runs",
    "record_path",
    "save_mixed",
    "SCALE_FIELDS",
    "ScaleField",
    "ScaleSettings",
    "add_scale_arguments",
    "MixedFitResult",
    "cache_router_features",
    "check_train_frames",
    "fit_mixed_model",
    "fit_router",
    "FEATURE_RADII",
    "GRANULARITIES",
    "LOSSES",
    "CONTINUOUS_ORACLE",
    "CONTINUOUS_ROUTER",
    "EXCESS",
    "GAINS",
    "HARD_ORACLE",
    "HARD_ROUTER",
    "METRICS",
    "NULL_PREFIX",
    "ORACLE_FIT",
    "REFINED_ORACLE",
    "SOFT_ORACLE",
    "CachedGenerator",
    "ContinuousRouter",
    "FunctionGenerator",
    "HardRouter",
    "LeakageError",
    "RefinementHistory",
    "RoundRecord",
    "RoutingProblem",
    "SampleGroups",
    "ScaleGenerator",
    "ScalePool",
    "SoftPoolRouter",
    "as_generator",
    "atom_features",
    "atom_ion_distances",
    "broadcast_scales",
    "evaluate_cache",
    "format_table",
    "fit_pool_scales",
    "hard_route",
    "interpolate",
    "ion_counts",
    "ion_mask",
    "nearest_ion",
    "optimal_scale",
    "optimal_scale_mae",
    "optimal_scale_mse",
    "parse_null_pair",
    "propose",
    "refine_pool",
    "resolve_null_pair",
    "cache_groups",
    "sample_groups",
    "sample_losses_linear",
    "sample_losses_torch",
    "scale_table",
    "synthetic_cache",
]
