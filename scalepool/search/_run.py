"""Running a scale search end to end and exporting any study for tables and figures."""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path

import optuna
import pandas as pd

from ._optimize import optimize
from ._scales import ScaleSearch
from ._storage import bind_study_data, finished, open_results, open_storage, sampler_seed

logger = logging.getLogger(__name__)


def quiet_optuna() -> None:
    """Optuna logs one line per trial; keep warnings only."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_sampler(seed: int, study: optuna.Study, worker: int | None = None) -> optuna.samplers.TPESampler:
    """TPE (multivariate, constant liar) with a seed from :func:`sampler_seed`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=sampler_seed(seed, study, worker), constant_liar=True)


def export_study(study: optuna.Study, out: str | os.PathLike, prefix: str = "") -> dict[str, Path]:
    """Write ``<prefix>trials.csv`` (one row per trial) and ``<prefix>importances.csv``
    (parameter importances of the completed trials by :func:`importance_evaluator`,
    when computable; the ``evaluator`` column names it)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from .._files import write_csv

    paths = {}
    trials = study.trials_dataframe(attrs=("number", "value", "state", "params", "duration", "user_attrs"))
    if "duration" in trials:
        trials["duration_s"] = trials.pop("duration").dt.total_seconds()
    paths["trials"] = write_csv(out / f"{prefix}trials.csv", trials)
    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    rows = []
    if len(completed) >= 2:
        name, evaluator = importance_evaluator()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
            rows = [{"param": k, "importance": float(v), "evaluator": name} for k, v in importances.items()]
        except (RuntimeError, ValueError, ZeroDivisionError) as err:
            logger.warning("parameter importances not computable: %s", err)
    table = pd.DataFrame(rows, columns=["param", "importance", "evaluator"])
    paths["importances"] = write_csv(out / f"{prefix}importances.csv", table)
    return paths


def importance_evaluator():
    """``(name, evaluator)``: PED-ANOVA (optuna's default since 4.x), else fANOVA."""
    evaluator = getattr(optuna.importance, "PedAnovaImportanceEvaluator", None)
    if evaluator is not None:
        return "PED-ANOVA", evaluator()
    return "fANOVA", optuna.importance.FanovaImportanceEvaluator(seed=0)


def _has_heartbeat(storage, heartbeat_interval: int | None) -> bool:
    """Whether :func:`open_storage` turns heartbeats on for these arguments."""
    from ._storage import storage_kind

    kind = storage_kind(storage)[0] if isinstance(storage, (str, os.PathLike)) else None
    return bool(heartbeat_interval) or (heartbeat_interval is None and kind == "rdb")


def cache_checksum(cache) -> str:
    """SHA-256 of a prediction cache's content: reference and branch forces, anchors,
    atoms, positions, cells and splits (the file's compression and meta do not count)."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    fields = [("forces_ref", cache.forces_ref), ("numbers", cache.numbers), ("positions", cache.positions),
              ("cell", cache.cell), ("split", cache.split)]  # fmt: skip
    fields += [(f"branch:{name}", cache.branches[name]) for name in sorted(cache.branches)]
    digest.update(repr(tuple(cache.anchors)).encode())
    for name, array in fields:
        digest.update(name.encode())
        if array is not None:
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def search_scales(
    pred,
    storage,
    study_name: str | None = None,
    space: str = "pool",
    n_trials: int | None = 100,
    timeout: float | None = None,
    seed: int = 0,
    worker: int | None = None,
    out=None,
    granularity: str = "atom",
    loss: str = "mae",
    max_inner: int = 6,
    size_penalty: float = 0.1,
    max_router_steps: int = 400,
    device: str = "cpu",
    progress: bool = False,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
) -> dict:
    """Run (or resume) a fast scale search on a cache and re-run its best trial on test.

    Parameters
    ----------
    pred : prediction cache path (or a loaded :class:`PredictionCache`)
    storage : path or URL, see :func:`open_storage`
    study_name : default ``scales-<space>``
    n_trials : finished trials the study should hold in total (a resumed search
        runs only the missing ones); ``None`` with a ``timeout`` runs until then
    seed, worker : sampler seed (see :func:`sampler_seed`)
    out : folder for ``best.json``, ``trials.csv`` and ``importances.csv``
    heartbeat_interval, grace_period : RDB heartbeats in seconds (:func:`open_storage`)

    Returns the best-trial record (``evaluate`` of :class:`ScaleSearch`) with
    the trial count and the trials per minute of this call (``n_this_call`` counts
    the trials this worker finished, not those of others sharing the study).
    A study created on another cache is refused (:class:`StudyDataMismatch`).
    """
    from ..data import PredictionCache

    quiet_optuna()
    cache = pred if isinstance(pred, PredictionCache) else PredictionCache.load(pred)
    search = ScaleSearch(
        cache,
        space,
        granularity=granularity,
        loss=loss,
        max_inner=max_inner,
        size_penalty=size_penalty,
        max_router_steps=max_router_steps,
        seed=seed,
        device=device,
    )
    opened = open_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    study = open_results(opened, study_name or f"scales-{space}")
    source = f"prediction cache {pred}" if not isinstance(pred, PredictionCache) else "a prediction cache"
    bind_study_data(study, cache_checksum(cache), source)
    study.sampler = make_sampler(seed, study, worker)
    start = time.perf_counter()
    ran = optimize(study, search, n_trials, timeout, progress=progress, storage=storage,
                   heartbeat=_has_heartbeat(storage, heartbeat_interval))  # fmt: skip
    elapsed = time.perf_counter() - start
    record = search.evaluate(study.best_params)
    record.update(
        study_name=study.study_name,
        best_trial=study.best_trial.number,
        best_value=study.best_value,
        n_finished=finished(study),
        n_this_call=ran,
        seconds_this_call=elapsed,
        trials_per_minute=60.0 * ran / elapsed if elapsed > 0 and ran else None,
        seed=seed,
    )
    if out is not None:
        from .._files import write_json

        export_study(study, out, prefix=f"{space}_")
        write_json(Path(out) / f"{space}_best.json", record)
    return record
