"""Metrics: force error tables (overall, per species, ions, close contact) and baselines."""

from ._cache import cache_errors
from ._forces import MAE, N_ATOMS, N_COMPONENTS, RMSE, constant_force_baseline, element_symbol, force_errors
from ._subsets import SUBSET_METRICS, Subsets, subset_errors

__all__ = [
    "MAE",
    "N_ATOMS",
    "N_COMPONENTS",
    "RMSE",
    "SUBSET_METRICS",
    "Subsets",
    "cache_errors",
    "constant_force_baseline",
    "element_symbol",
    "force_errors",
    "subset_errors",
]
