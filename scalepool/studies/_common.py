"""Shared pieces of the studies: loading caches, per-split descriptors, errors, binning, seeds."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from ..data import PredictionCache, PredictionCacheError
from ..metrics import Subsets, subset_errors
from ..provenance import ResultsDir
from ..scales import interpolate

#: Å, bin edges of nearest-ion distance profiles (the last bin is open-ended).
DISTANCE_EDGES = (0.0, *np.round(np.arange(2.0, 10.01, 0.5), 3).tolist())
#: Scales of the global-s curves.
S_GRID = tuple(np.round(np.linspace(0.0, 1.0, 41), 6).tolist())


def load_caches(paths) -> list[PredictionCache]:
    """Load and validate prediction caches (errors name the file).

    The cache studies index (F, N) arrays of one fixed composition; a ragged cache
    (frames of different atoms) is refused here, naming the file and what does take it.
    """
    caches = [PredictionCache.load(p) for p in paths]
    for path, cache in zip(paths, caches, strict=True):
        if cache.ragged:
            raise PredictionCacheError(
                f"{path}: a ragged prediction cache (frames differ in atoms); the cache studies need one "
                "fixed composition. Use 'scalepool table' and 'scalepool mix', which take ragged caches."
            )
    return caches


def cache_labels(paths) -> list[str]:
    """Short unique labels for caches: file stems, suffixed when stems repeat."""
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{stem}-{i}" for i, stem in enumerate(stems)]


@dataclasses.dataclass
class SplitView:
    """One split of a cache with its error subsets (:class:`scalepool.metrics.Subsets`).

    Attributes
    ----------
    cache : the split's frames (labels kept)
    subsets : the masks every table reports
    nearest : (F, N) Å, distance of every atom to the nearest other ion
    close : (F, N) bool, ions in a contact pair (the ``close_contact_mae`` subset)
    ions : (N,) bool
    """

    cache: PredictionCache
    subsets: Subsets

    @classmethod
    def of(cls, cache: PredictionCache, split: str) -> SplitView:
        sub = cache.select(split)
        return cls(sub, Subsets.of(sub.positions, sub.numbers, sub.cell))

    @property
    def nearest(self) -> np.ndarray:
        return self.subsets.nearest_ion

    @property
    def close(self) -> np.ndarray:
        return self.subsets.contact_ions

    @property
    def ions(self) -> np.ndarray:
        return self.subsets.ions[0]

    def errors(self, atom_scales) -> dict[str, float]:
        """MAEs (meV/Å, over force components) of F(s) with per-atom scales ``(F, N)``
        or a global scale: overall, close contact and ions."""
        f0, f1 = self.cache.anchor_forces()
        error = np.abs(interpolate(f0, f1, atom_scales) - self.cache.forces_ref)
        return self.masked_errors(error)

    def masked_errors(self, error: np.ndarray) -> dict[str, float]:
        """Subset MAEs (meV/Å) of absolute errors ``(F, N, 3)`` eV/Å (:func:`scalepool.metrics.subset_errors`)."""
        return subset_errors(error, self.subsets)


def global_s_curve(view: SplitView, grid=S_GRID) -> pd.DataFrame:
    """MAE of F(s) for each global ``s`` of ``grid``: columns ``s`` and the metrics (meV/Å)."""
    f0, f1 = view.cache.anchor_forces()
    a = view.cache.forces_ref.astype(np.float64) - f0
    d = f1.astype(np.float64) - f0
    rows = [{"s": float(s), **view.masked_errors(np.abs(s * d - a))} for s in grid]
    return pd.DataFrame(rows)


def binned(x: np.ndarray, y: np.ndarray, edges=DISTANCE_EDGES) -> pd.DataFrame:
    """Statistics of ``y`` in bins of ``x``; the last bin collects everything beyond the last edge.

    Returns columns ``bin_lo``, ``bin_hi`` (``inf`` for the open bin), ``center``
    (the mean ``x`` of the bin's points), ``n``, ``mean``, ``std``, ``median``, ``q25``, ``q75``; empty bins are dropped.
    """
    x, y = np.asarray(x, float).ravel(), np.asarray(y, float).ravel()
    lows = np.asarray(edges, float)
    highs = np.append(lows[1:], np.inf)
    rows = []
    for lo, hi in zip(lows, highs, strict=True):
        inside = (x >= lo) & (x < hi)
        values = y[inside]
        if values.size == 0:
            continue
        q25, median, q75 = np.quantile(values, (0.25, 0.5, 0.75))
        centre = float(x[inside].mean())
        rows.append(
            {
                "bin_lo": lo,
                "bin_hi": hi,
                "center": centre,
                "n": int(values.size),
                "mean": float(values.mean()),
                "std": float(values.std()),
                "median": float(median),
                "q25": float(q25),
                "q75": float(q75),
            }
        )
    return pd.DataFrame(rows)


def mean_std(table: pd.DataFrame, by: list[str], columns: list[str]) -> pd.DataFrame:
    """Mean and standard deviation (ddof=1; 0 for one value) of ``columns`` per group of ``by``.

    Returns ``by``, then ``<column>`` and ``<column>_std`` per column and ``n``.
    """
    grouped = table.groupby(by, sort=False, dropna=False)
    mean = grouped[columns].mean()
    std = grouped[columns].std(ddof=1)
    single = grouped[columns].count() == 1
    std = std.mask(single & mean.notna(), 0.0).add_suffix("_std")
    out = mean.join(std)
    out["n"] = grouped.size()
    ordered = [c for col in columns for c in (col, f"{col}_std")] + ["n"]
    return out[ordered].reset_index()


def subsample(n: int, limit: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``limit`` of ``n`` items (all when ``n <= limit``)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def set_threads(threads: int | None) -> None:
    """Limit torch's CPU threads (oversubscription slows small models several times)."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def as_paths(paths) -> list[Path]:
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise ValueError("at least one prediction cache (--pred) is needed")
    return [Path(p) for p in paths]


class OpenedResults(NamedTuple):
    """What every cache-reading study starts from (see :func:`open_results`).

    Attributes
    ----------
    caches : the validated prediction caches, in the order given
    labels : one short unique label per cache (file stems)
    results : the study's results folder, closed later with ``results.finish``
    """

    caches: list[PredictionCache]
    labels: list[str]
    results: ResultsDir


def open_results(preds, out, name: str, parameters: dict, seeds) -> OpenedResults:
    """Load and validate the caches ``preds`` (one path or many; errors name the file)
    and open the results folder ``out`` of study ``name`` with its provenance."""
    paths = as_paths(preds)
    caches = load_caches(paths)
    return OpenedResults(caches, cache_labels(paths), ResultsDir(out, name, parameters, seeds, paths))
