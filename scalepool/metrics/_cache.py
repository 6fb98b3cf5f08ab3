"""Error tables read straight from a prediction cache (``scalepool predict``)."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from ..data import keys as K
from ._forces import MAE, N_ATOMS, RMSE, constant_force_baseline, force_errors


def load_cache(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of a prediction cache ``.npz``; ``meta`` parsed into a dict under ``"meta"``."""
    with np.load(path, allow_pickle=False) as data:
        cache = {key: data[key] for key in data.files}
    missing = [k for k in (K.FORCES_REF, K.NUMBERS, K.SPLIT, K.META) if k not in cache]
    if missing:
        raise ValueError(f"{path} is not a prediction cache: it lacks {missing}")
    cache[K.META] = json.loads(str(cache[K.META]))
    return cache


def cache_errors(
    cache, split: str = "test", nearest_ion=None, close_cutoff: float | None = None
) -> pd.DataFrame:
    """Force errors of every branch of a prediction cache on one split, beside the constant baseline.

    Parameters
    ----------
    cache : path of the cache or the dict of :func:`load_cache`
    split : ``"train"``, ``"val"`` or ``"test"``
    nearest_ion : (F_split, N), Å, nearest-ion distances of the split's frames
        in time order (adds the close-contact rows)
    close_cutoff : Å (default :data:`scalepool.units.CLOSE_CONTACT_CUTOFF`)

    Returns
    -------
    DataFrame indexed by subset (rows of :func:`force_errors`) with
    ``<branch> MAE`` and ``<branch> RMSE`` per branch, ``baseline MAE`` (per
    species mean train force, :func:`constant_force_baseline`), all in meV/Å,
    and ``n_atoms``, the number of atom samples.
    """
    if not isinstance(cache, dict):
        cache = load_cache(cache)
    if split not in K.SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(K.SPLIT_CODES)}, got {split!r}")
    codes = cache[K.SPLIT]
    rows = codes == K.SPLIT_CODES[split]
    if not rows.any():
        raise ValueError(f"the cache has no {split} frames")
    numbers, ref = cache[K.NUMBERS], cache[K.FORCES_REF]
    extra = {} if close_cutoff is None else {"close_cutoff": close_cutoff}
    columns = {}
    for branch in cache[K.META]["branches"]:
        table = force_errors(
            cache[K.FORCE_PART_PREFIX + branch][rows], ref[rows], numbers, nearest_ion, **extra
        )
        columns[f"{branch} MAE"], columns[f"{branch} RMSE"] = table[MAE], table[RMSE]
    baseline = constant_force_baseline(ref, numbers, codes == K.SPLIT_CODES["train"])[rows]
    table = force_errors(baseline, ref[rows], numbers, nearest_ion, **extra)
    columns["baseline MAE"], columns[N_ATOMS] = table[MAE], table[N_ATOMS]
    out = pd.DataFrame(columns)
    out.index.name = "subset"
    return out
