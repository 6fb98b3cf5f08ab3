"""Error tables of a prediction cache (``scalepool predict``), per branch and subset."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data import PredictionCache, split_code
from ..data import keys as K
from ._forces import MAE, N_ATOMS, RMSE, constant_force_baseline, force_errors


def cache_errors(
    cache, split: str = "test", nearest_ion=None, close_cutoff: float | None = None
) -> pd.DataFrame:
    """Force errors of every branch of a prediction cache on one split, beside the constant baseline.

    Parameters
    ----------
    cache : a :class:`~scalepool.data.PredictionCache` or its path
    split : ``"train"``, ``"val"`` or ``"test"``
    nearest_ion : (F_split, N), Å, nearest-ion distances of the split's frames
        in time order (adds the close-contact rows); a ragged cache: (T_split,)
        flat over the split's atoms
    close_cutoff : Å (default :data:`scalepool.units.CLOSE_CONTACT_CUTOFF`)

    Returns
    -------
    DataFrame indexed by subset (rows of :func:`force_errors`) with
    ``<branch> MAE`` and ``<branch> RMSE`` per branch, ``baseline MAE`` (per
    species mean train force, :func:`constant_force_baseline`), all in meV/Å,
    and ``n_atoms``, the number of atom samples.
    """
    if not isinstance(cache, PredictionCache):
        cache = PredictionCache.load(cache)
    codes = cache.split
    rows = codes == split_code(split)
    if not rows.any():
        raise ValueError(f"the cache has no {split} frames")
    if cache.ragged:
        return _ragged_cache_errors(cache, rows, nearest_ion, close_cutoff)
    numbers, ref = cache.numbers, cache.forces_ref
    extra = {} if close_cutoff is None else {"close_cutoff": close_cutoff}
    columns = {}
    for branch, forces in cache.branches.items():
        table = force_errors(forces[rows], ref[rows], numbers, nearest_ion, **extra)
        columns[f"{branch} MAE"], columns[f"{branch} RMSE"] = table[MAE], table[RMSE]
    baseline = constant_force_baseline(ref, numbers, codes == K.SPLIT_CODES["train"])[rows]
    table = force_errors(baseline, ref[rows], numbers, nearest_ion, **extra)
    columns["baseline MAE"], columns[N_ATOMS] = table[MAE], table[N_ATOMS]
    out = pd.DataFrame(columns)
    out.index.name = "subset"
    return out


def _ragged_cache_errors(cache, rows, nearest_ion, close_cutoff) -> pd.DataFrame:
    """:func:`cache_errors` of a ragged cache: the split's atoms as one flat sample (per-species
    rows by each atom's own number; the baseline is the per-species mean train force)."""
    atoms = cache.atom_index(np.flatnonzero(rows))
    train = cache.atom_index(cache.frames("train"))
    if train.size == 0:
        raise ValueError("the baseline needs at least one training frame")
    numbers, ref = cache.numbers[atoms], cache.forces_ref[atoms].astype(np.float64)
    extra = {} if close_cutoff is None else {"close_cutoff": close_cutoff}
    columns = {}
    for branch, forces in cache.branches.items():
        table = force_errors(forces[atoms], ref, numbers, nearest_ion, **extra)
        columns[f"{branch} MAE"], columns[f"{branch} RMSE"] = table[MAE], table[RMSE]
    baseline = np.zeros_like(ref)
    for z in np.unique(numbers):
        seen = cache.forces_ref[train][cache.numbers[train] == z]
        baseline[numbers == z] = seen.astype(np.float64).mean(axis=0) if len(seen) else 0.0
    table = force_errors(baseline, ref, numbers, nearest_ion, **extra)
    columns["baseline MAE"], columns[N_ATOMS] = table[MAE], table[N_ATOMS]
    out = pd.DataFrame(columns)
    out.index.name = "subset"
    return out
