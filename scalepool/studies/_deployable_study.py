"""Study: the deployable mixed model against the better branch, and its null control.

Per prediction cache (one per model seed), a :class:`~scalepool.models.MixedForceModel`
is fitted end to end on the train split for the real pair (the cache's anchors)
and, when the cache holds one, for the null pair (``<anchor0>, <anchor0>_2``:
two runs of one branch); both are saved (``mixed_<cache>.pt``, ``null_<cache>.pt``
with their ``.json`` records) and evaluated on the test split with
:func:`scalepool.train.evaluate_model`, the function behind ``scalepool
evaluate``, so each row is exactly what a user gets from the saved file.  The
branches' own ``best.pt`` are evaluated the same way.

- ``deployable.csv``: per cache, the test overall and ion MAE (meV/Å) of each
  model, and the gain of each mixed model over the better of its two branches
  (% of that branch's MAE, the branch chosen on test: a generous baseline);
- ``summary.csv``: mean ± std over caches, with ``excess_over_null`` (real
  gain minus null gain, percentage points, per cache then averaged).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..scales import mix_from_cache, save_mixed
from ..train import BEST, evaluate_model
from ._common import open_results
from ._study import Option, Study

NAME = "deployable"


def _branch_row(cache_label, name, run, data, device) -> dict:
    result = evaluate_model(Path(run) / BEST, data, "test", device=device)
    return {"cache": cache_label, "model": name, "kind": "branch", **_errors(result)}


def _errors(result: dict) -> dict:
    return {
        "overall_mae": result["overall_mae"],
        "ion_mae": result["ion_mae"],
        "n_frames": result["n_frames"],
    }


def run(
    preds,
    out,
    *,
    seeds=(0,),
    device="cpu",
    parameters=None,
    steps=200,
    router_steps=300,
    hidden=16,
    monitor_frames=16,
) -> Path:
    caches, labels, results = open_results(preds, out, NAME, parameters or {"steps": steps}, seeds)
    rows, summary_rows = [], []
    unusable = [
        str(p)
        for p, c in zip(preds, caches, strict=True)
        if not (c.meta.get("dataset_path") and c.meta.get("runs"))
    ]
    if unusable:  # synthetic caches have no models to mix
        results.finish(
            status=f"skipped: {unusable} record no dataset or runs (not 'scalepool predict' caches)"
        )
        return results.path
    for path, label, cache in zip(preds, labels, caches, strict=True):
        data = cache.meta["dataset_path"]
        names, recorded = list(cache.branches), cache.meta["runs"]
        a0, a1 = cache.anchors
        pairs = {"real": (a0, a1)}
        if f"{a0}_2" in names:
            pairs["null"] = (a0, f"{a0}_2")
        for kind, pair in pairs.items():
            branch_rows = [
                _branch_row(label, name, recorded[names.index(name)], data, device) for name in pair
            ]
            model, record = mix_from_cache(
                path,
                pair=pair,
                steps=steps,
                router_steps=router_steps,
                hidden=hidden,
                seed=int(seeds[0]),
                device=device,
                monitor_frames=monitor_frames,
            )
            file = save_mixed(
                model, record, results.file(f"{'mixed' if kind == 'real' else 'null'}_{label}.pt")
            )
            results.file(file.name + ".json")
            mixed = _errors(evaluate_model(file, data, "test", device=device))
            better = min(r["overall_mae"] for r in branch_rows)
            gain = 100.0 * (better - mixed["overall_mae"]) / better
            rows += [{**r, "pair": kind} for r in branch_rows]
            rows.append({"cache": label, "model": f"mixed {pair[0]}+{pair[1]}", "kind": "mixed", "pair": kind,
                         **mixed, "gain_pct_over_better_branch": gain,
                         "train_mae_final": record["fit"]["train_mae_final"]})  # fmt: skip
    table = pd.DataFrame(rows)
    results.csv("deployable.csv", table)
    mixed = table[table.kind == "mixed"].set_index(["cache", "pair"])
    for kind in ("real", "null"):
        part = table[table.pair == kind]
        if part.empty:
            continue
        for model, group in part.groupby("model", sort=False):
            row = {"pair": kind, "model": model, "n_caches": len(group)}
            for column in ("overall_mae", "ion_mae", "gain_pct_over_better_branch"):
                if column in group and group[column].notna().any():
                    row[column] = float(group[column].mean())
                    row[f"{column}_std"] = (
                        float(group[column].std(ddof=1)) if len(group) > 1 else float("nan")
                    )
            summary_rows.append(row)
    if "null" in set(table.pair):
        excess = []
        for label in labels:
            if (label, "null") in mixed.index:
                excess.append(
                    mixed.loc[(label, "real"), "gain_pct_over_better_branch"]
                    - mixed.loc[(label, "null"), "gain_pct_over_better_branch"]
                )
        for row in summary_rows:
            if row["pair"] == "real" and row["model"].startswith("mixed"):
                row["excess_over_null"] = float(np.mean(excess))
                row["excess_over_null_std"] = (
                    float(np.std(excess, ddof=1)) if len(excess) > 1 else float("nan")
                )
    summary = pd.DataFrame(summary_rows)
    results.csv("summary.csv", summary)
    results.finish(status="done")
    return results.path


STUDY = Study(
    name=NAME,
    description="The deployable mixed model (router fitted end to end on train through its own conservative "
    "forces, saved and evaluated like 'scalepool evaluate') against the better branch, beside the same model "
    "built on the null pair; test MAE (meV/Å), mean ± std over caches.",
    run=run,
    options={
        "steps": Option(int, 200, 24, "end-to-end optimiser steps per mixed model (one train frame each)"),
        "router_steps": Option(int, 300, 120, "warm-start steps of the router on the cached forces"),
        "hidden": Option(int, 16, None, "router MLP width"),
        "monitor_frames": Option(
            int, 16, 6, "train frames scored before and after the fit (reported, not fitted)"
        ),
    },
)
