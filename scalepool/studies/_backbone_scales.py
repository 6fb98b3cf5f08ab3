"""The scale layer of the backbones study: MuSE(X) (and X + P3M) as scale generator beside a null pair.

For one backbone X and model seeds ``s_0 .. s_{n-1}`` (n >= 2), each consecutive
pair ``(s_k, s_{k+1})`` gives one prediction cache, the same as
``scalepool predict --run short --run muse --run short_2 [--run long]``:

- ``short``: X alone, seed ``s_k`` (anchor s = 0);
- ``muse``: MuSE(X), seed ``s_k`` (anchor s = 1, the generator);
- ``short_2``: X alone, seed ``s_{k+1}`` (the null partner of ``short``);
- ``long``: X + latent-charge P3M, seed ``s_k`` (a second generator).

The caches are written from the models the study saved
(``models/<backbone>_<variant>_s<seed>.pt``), so the routing can be recomputed
without retraining (:func:`backbone_caches`).  :func:`backbone_scale_table` runs
:func:`scalepool.scales.scale_table` (the code of ``scalepool table``: single
branches, best global s, oracles, learned routers, each beside its null row) on
the n - 1 caches, once per generator, and returns a long table, one row per
``(backbone, generator, row, metric)`` with ``mean``, ``std`` (over the pairs,
ddof=1) and ``n`` (pairs).  ``generator`` is ``muse``, ``long`` or ``null`` (the
null pair ``short``/``short_2``, routed by the same methods, settings and router
seeds).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import FrameSet, PredictionCache
from ..data import keys as K
from ..models import load_model
from ..provenance import git_commit, library_versions
from ..scales import (
    EXCESS,
    GAINS,
    HARD_ORACLE,
    METRICS,
    NULL_PREFIX,
    ScaleSettings,
    format_table,
    scale_table,
)
from ..train import cache_from_forces, cache_rows, predict_forces

#: generators routed against the backbone alone, and the cache branch of each study variant
GENERATORS = ("muse", "long")
CACHE_NAMES = {"alone": "short", "muse": "muse", "long": "long"}
NULL_PARTNER = "short_2"
#: metrics of ``scale_table.csv`` and their units
TABLE_METRICS = {
    **{metric: "meV/Å" for metric in METRICS},
    "gain_recovered": "1",
    **{gain: "%" for gain in GAINS},
    **{excess: "pp" for excess in EXCESS},
}


def model_file(folder: str | Path, backbone: str, variant: str, seed: int) -> Path:
    """``<folder>/models/<backbone>_<variant>_s<seed>.pt``: a model the study saved."""
    return Path(folder) / "models" / f"{backbone}_{variant}_s{int(seed)}.pt"


def seed_pairs(seeds) -> list[tuple[int, int]]:
    """Consecutive seed pairs ``(s_k, s_{k+1})``: the ``short``/``short_2`` null pairs."""
    seeds = [int(s) for s in seeds]
    if len(seeds) < 2:
        raise ValueError(
            f"the scale layer needs at least two model seeds (a null pair is two seeds of X alone), got {seeds}"
        )
    return list(zip(seeds[:-1], seeds[1:], strict=True))


def cache_blocks(split: dict[str, np.ndarray], test_idx: np.ndarray) -> dict[str, np.ndarray]:
    """The study's frames: its train and val blocks and the test frames it evaluates."""
    return {
        "train": np.asarray(split["train"]),
        "val": np.asarray(split["val"]),
        "test": np.asarray(test_idx),
    }


def backbone_caches(
    folder: str | Path,
    frames: FrameSet,
    blocks: dict[str, np.ndarray],
    backbone: str,
    seeds,
    *,
    device="cpu",
    data_path: str | Path | None = None,
    split_fractions=(0.7, 0.15, 0.15),
    write: bool = True,
) -> list[PredictionCache]:
    """One prediction cache per seed pair, from the models saved in ``folder/models``.

    Parameters
    ----------
    folder : the study folder (``models/`` inside, ``caches/`` written there)
    frames : the study's dataset (fixed layout)
    blocks : ``{"train", "val", "test"}`` dataset frame indices (:func:`cache_blocks`)
    backbone : ``"painn"``, ``"mace"`` or ``"so3krates"``
    seeds : the model seeds, in order; pairs are consecutive (:func:`seed_pairs`)
    data_path, split_fractions : recorded in the caches' ``meta`` (the time-block split
        that gave ``blocks``)
    write : save each cache as ``caches/<backbone>_s<k>_s<k+1>.npz``

    Returns caches with branches ``short``, ``muse``, ``short_2``, ``long``
    ((F, N, 3) eV/Å, F = the frames of ``blocks``, train then val then test) and
    anchors ``("short", "muse")``.
    """
    folder = Path(folder)
    keep, split = cache_rows(blocks)
    predictions: dict[tuple[str, int], np.ndarray] = {}

    def forces(variant: str, seed: int) -> np.ndarray:
        if (variant, seed) not in predictions:
            path = model_file(folder, backbone, variant, seed)
            if not path.exists():
                raise FileNotFoundError(
                    f"{path}: no saved model of {backbone}/{variant}/seed {seed}; rerun the backbones study "
                    "with the scale layer on (it saves every model)"
                )
            model = load_model(path, map_location=device)
            predictions[variant, seed] = predict_forces(model, frames, keep, device=device)["forces"]
        return predictions[variant, seed]

    caches = []
    for first, second in seed_pairs(seeds):
        branches = {
            "short": forces("alone", first),
            "muse": forces("muse", first),
            NULL_PARTNER: forces("alone", second),
            "long": forces("long", first),
        }
        runs = {
            "short": ("alone", first),
            "muse": ("muse", first),
            NULL_PARTNER: ("alone", second),
            "long": ("long", first),
        }
        meta = {
            "runs": [str(model_file(folder, backbone, v, s).resolve()) for v, s in runs.values()],
            "run_branches": {name: CACHE_NAMES[v] for name, (v, _) in runs.items()},
            "backbone": backbone,
            "seed_pair": [first, second],
            "model_file": "models/<backbone>_<variant>_s<seed>.pt",
            "frame_index": keep.tolist(),
            "split_mode": "time",
            "dataset_checksum": frames.checksum(),
            "dataset_path": None if data_path is None else str(Path(data_path).resolve()),
            "split_fractions": [float(f) for f in split_fractions],
            "new_dataset": False,
            "split_gap": 0,
            "split_codes": K.SPLIT_CODES,
            "split_blocks": {n: [int(i[0]), int(i[-1]) + 1] for n, i in blocks.items() if len(i)},
            "versions": library_versions(),
            "git_commit": git_commit(),
        }
        cache = cache_from_forces(frames, keep, split, branches, ("short", "muse"), meta)
        if write:
            path = folder / "caches" / f"{backbone}_s{first}_s{second}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            cache.save(path)
            cache.meta["source"] = str(path)
        caches.append(cache)
    return caches


def _long_rows(table: pd.DataFrame, backbone: str, generator: str) -> list[dict]:
    """One row per (method, metric) of a :func:`scale_table` frame (``mean``, ``std``, ``n``)."""
    rows = []
    for _, row in table.iterrows():
        name = row["method"].removeprefix(NULL_PREFIX) if generator == "null" else row["method"]
        for metric, unit in TABLE_METRICS.items():
            if metric not in row or pd.isna(row[metric]):
                continue
            rows.append(
                {
                    "backbone": backbone,
                    "generator": generator,
                    "row": name,
                    "upper_bound": bool(row["upper_bound"]),
                    "fitted_on": row["fitted_on"],
                    "metric": metric,
                    "unit": unit,
                    "mean": float(row[metric]),
                    "std": float(row[f"{metric}_std"]),
                    "n": int(row["n_seeds"]),
                }
            )
    return rows


def backbone_scale_table(
    caches: list[PredictionCache],
    backbone: str,
    generators=GENERATORS,
    settings: ScaleSettings | None = None,
    seed: int = 0,
    device="cpu",
) -> pd.DataFrame:
    """The scale table of one backbone's caches, per generator and for the null pair (long format).

    Each generator ``g`` is routed against ``short`` (anchors ``("short", g)``) by
    :func:`scalepool.scales.scale_table` with the null pair ``(short, short_2)``;
    the null rows (the same for every generator: same pair, settings and router
    seeds) are kept once, as ``generator == "null"``.  Columns: ``backbone``,
    ``generator``, ``row`` (the method), ``upper_bound``, ``fitted_on``,
    ``metric``, ``unit``, ``mean``, ``std`` (over seed pairs, ddof=1) and ``n``
    (seed pairs).  Excess columns (``excess_over_null*``, pp) are paired per cache.
    ``attrs["printed"]`` holds :func:`scalepool.scales.format_table` of each generator.
    """
    settings = settings or ScaleSettings()
    options = dict(
        granularity=settings.granularity,
        loss=settings.loss,
        tol=settings.tol,
        max_size=settings.max_size,
        router_steps=settings.router_steps,
        seed=seed,
        device=device,
        null_pair=("short", NULL_PARTNER),
    )
    rows, null_rows, printed = [], None, []
    for generator in generators:
        routed = [dataclasses.replace(c, anchors=("short", generator), meta=dict(c.meta)) for c in caches]
        table = scale_table(routed, **options)
        printed.append(
            f"{backbone}, generator {generator} (anchors short, {generator}):\n{format_table(table)}"
        )
        real, null = table[table.pair == "real"], table[table.pair == "null"]
        rows += _long_rows(real, backbone, generator)
        if null_rows is None:
            null_rows = _long_rows(null, backbone, "null")
    out = pd.DataFrame(rows + (null_rows or []))
    out.attrs["printed"] = "\n\n".join(printed)
    return out


def verdicts(table: pd.DataFrame, row: str = HARD_ORACLE) -> pd.DataFrame:
    """Per backbone and generator: ``row``'s overall gain (%) beside the null pair's, and
    whether the excess over null (pp, paired per seed pair) exceeds its std."""
    out = []

    def value(frame, generator, name, metric):
        hit = frame[(frame.generator == generator) & (frame.row == name) & (frame.metric == metric)]
        return (float(hit["mean"].iloc[0]), float(hit["std"].iloc[0])) if len(hit) else (np.nan, np.nan)

    for backbone, frame in table.groupby("backbone", sort=False):
        null_gain, null_std = value(frame, "null", row, "gain_pct")
        for generator in [g for g in frame.generator.unique() if g != "null"]:
            gain, gain_std = value(frame, generator, row, "gain_pct")
            excess, excess_std = value(frame, generator, row, "excess_over_null")
            if np.isnan(excess_std):
                beats = "undetermined (one seed pair: no std)"
            else:
                beats = "yes" if excess - excess_std > 0 else "no"
            out.append(
                {
                    "backbone": backbone,
                    "generator": generator,
                    "row": row,
                    "gain_pct": gain,
                    "gain_pct_std": gain_std,
                    "null_gain_pct": null_gain,
                    "null_gain_pct_std": null_std,
                    "excess_over_null_pp": excess,
                    "excess_over_null_pp_std": excess_std,
                    "beats_null_beyond_std": beats,
                }
            )
    return pd.DataFrame(out)


def verdict_line(verdict: pd.Series) -> str:
    """One plain sentence per backbone and generator (the study's printed summary)."""
    b = verdict.backbone
    name = {"muse": f"MuSE({b})", "long": f"{b} + P3M"}.get(verdict.generator, verdict.generator)
    head = (
        f"{b}: {name} hard-oracle gain {verdict.gain_pct:+.1f} ± "
        f"{verdict.gain_pct_std:.1f} % vs null pair {verdict.null_gain_pct:+.1f} ± {verdict.null_gain_pct_std:.1f} %;"
        f" excess {verdict.excess_over_null_pp:+.1f} ± {verdict.excess_over_null_pp_std:.1f} pp"
    )
    if verdict.beats_null_beyond_std == "yes":
        return f"{head}: beats the null pair beyond the std"
    if verdict.beats_null_beyond_std == "no":
        return f"{head}: does NOT beat the null pair beyond the std"
    return f"{head}: {verdict.beats_null_beyond_std}"
