"""Study (f): optuna searches on the cached predictions.

For each search space (:data:`scalepool.search.SPACES`) and seed, a study
``scales-<space>-seed<k>`` in ``<out>/study.db`` (SQLite; a killed run resumes
it) runs until it holds ``n_trials`` finished trials; its best parameters are
re-run and scored on the test split.  Outputs:

- ``<space>_seed<k>_trials.csv`` / ``_importances.csv`` / ``_best.json``;
- ``best.csv``: one row per space and seed (val objective, test scores, meV/Å);
- ``summary.csv``: mean and std over seeds per space;
- ``speed.csv``: trials per minute of each search in this run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .._files import write_json
from ..provenance import ResultsDir
from ..scales import ScaleSettings
from ._common import as_paths, cache_labels, mean_std
from ._study import Option, Study, scale_options

NAME = "search"
_SCORES = ("best_value", "test_pool_oracle", "test_router", "test_anchor_oracle", "test_continuous_oracle")


def _rounded(value):
    """Floats to 4 significant digits, inside lists and dicts (for readable tables)."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def run(
    preds,
    out,
    *,
    seeds=(0,),
    device="cpu",
    parameters=None,
    spaces="pool+refine",
    n_trials=200,
    router_trials=30,
    size_penalty=0.1,
    granularity=ScaleSettings.granularity,
    storage=None,
) -> Path:
    import optuna

    from ..search import export_study, open_storage, search_scales

    preds = as_paths(preds)
    results = ResultsDir(out, NAME, parameters or {"spaces": spaces, "n_trials": n_trials}, seeds, preds)
    storage = storage or str(results.path / "study.db")
    label = cache_labels(preds)[0]
    rows = []
    for space in spaces.split("+"):
        for seed in seeds:
            record = search_scales(
                preds[0],
                storage,
                study_name=f"scales-{space}-seed{seed}",
                space=space,
                n_trials=router_trials if space == "router" else n_trials,
                seed=int(seed),
                granularity=granularity,
                size_penalty=size_penalty,
                device=device,
            )
            prefix = f"{space}_seed{seed}_"
            study = optuna.load_study(study_name=record["study_name"], storage=open_storage(storage))
            for path in export_study(study, results.path, prefix=prefix).values():
                results.file(path.name)
            write_json(results.file(f"{prefix}best.json"), record)
            rows.append(
                {
                    "cache": label,
                    "space": space,
                    "seed": int(seed),
                    "n_finished": record["n_finished"],
                    "trials_per_minute": record["trials_per_minute"],
                    "best_params": json.dumps(_rounded(record["params"])),
                    "pool": json.dumps(_rounded(record.get("pool", []))),
                    **{k: record.get(k, float("nan")) for k in _SCORES},
                }
            )
    best = pd.DataFrame(rows)
    results.csv("best.csv", best)
    scores = [c for c in _SCORES if best[c].notna().any()]
    results.csv("summary.csv", mean_std(best, ["space"], scores))
    results.csv("speed.csv", best[["space", "seed", "n_finished", "trials_per_minute"]])
    results.finish(
        status="done", storage=storage, study_names=[f"scales-{r['space']}-seed{r['seed']}" for r in rows]
    )
    return results.path


STUDY = Study(
    name=NAME,
    description="Optuna searches on the cached predictions (pool size and values, refinement settings, "
    "router settings), resumable in a SQLite study; best trials re-run on test.",
    run=run,
    options={
        **scale_options("granularity"),
        "spaces": Option(str, "pool+refine+router", "pool+refine", "search spaces joined by '+'"),
        "n_trials": Option(int, 300, 60, "finished trials per pool/refine study"),
        "router_trials": Option(int, 30, 8, "finished trials per router study"),
        "size_penalty": Option(float, 0.1, None, "meV/Å per scale beyond the anchors"),
        "storage": Option(str, None, None, "optuna storage (default <out>/study.db)"),
    },
)
