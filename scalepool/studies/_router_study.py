"""Study (d): learned routers against the oracles they approximate.

Per cache, a pool is refined on val; for every seed a :class:`HardRouter` over
that pool and a :class:`ContinuousRouter` are fitted on the train split only
and applied to the test split without its labels.  The oracles (hard routing
over the pool, continuous interpolation) read the test labels: upper bounds.
Outputs (meV/Å):

- ``routers.csv``: one row per cache, seed and learned router, and one per cache
  for each oracle (no seed: oracles do not depend on it; ``upper_bound`` flag);
- ``summary.csv``: mean and std per method, over caches and seeds (learned) or
  caches (oracles);
- ``choices.csv``: per test sample (first cache, first seed, a subsample) the
  nearest-ion distance and the scale chosen by each router and each oracle;
- ``confusion.csv``: counts of (oracle pool choice, router pool choice);
- ``agreement.json``: per seed, how often the hard router picks the oracle's
  scale, and the correlation of continuous router and oracle scales.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..scales import ContinuousRouter, HardRouter, RoutingProblem, ScaleSettings, refine_pool
from ._common import SplitView, mean_std, open_results, subsample
from ._study import Option, Study, scale_options

NAME = "routers"
UPPER = "(upper bound)"


def run(
    preds,
    out,
    *,
    seeds=(0, 1, 2),
    device="cpu",
    parameters=None,
    granularity=ScaleSettings.granularity,
    loss=ScaleSettings.loss,
    tol=ScaleSettings.tol,
    max_size=ScaleSettings.max_size,
    router_steps=ScaleSettings.router_steps,
    hidden=32,
    layers=2,
    points=4000,
) -> Path:
    router_options = dict(
        granularity=granularity, loss=loss, steps=router_steps, hidden=hidden, layers=layers
    )
    caches, labels, results = open_results(
        preds, out, NAME, parameters or {**router_options, "tol": tol}, seeds
    )
    rows, agreement, choices, confusion = [], [], None, None
    for label, cache in zip(labels, caches, strict=True):
        pool, _ = refine_pool(
            cache, split="val", loss=loss, tol=tol, max_size=max_size, granularity=granularity
        )
        scales = pool.as_array()
        problem = RoutingProblem(cache, "test", granularity, loss)
        view = SplitView.of(cache, "test")
        oracle_choice, _, _ = problem.hard_oracle(scales)
        oracle_s = problem.continuous_oracle()
        distance = problem.groups.mean(np.where(np.isfinite(view.nearest), view.nearest, np.nan))

        def score(sample_scales, view=view, problem=problem):
            return view.errors(problem.groups.atom_scales(np.asarray(sample_scales, float)))

        base = {"cache": label, "pool": pool.label()}
        fixed = [
            (f"oracle hard routing over the pool {UPPER}", scales[oracle_choice]),
            (f"[0,1]-constrained continuous oracle {UPPER}", oracle_s),
        ]
        for method, sample_scales in fixed:  # seed-free: one row per cache (seed empty)
            rows.append({**base, "seed": None, "method": method, "upper_bound": True, **score(sample_scales)})
        train, test_inputs = cache.select("train"), cache.select("test", labels=False)
        for seed in seeds:
            options = {**router_options, "seed": int(seed), "device": device}
            hard = HardRouter(pool, **options).fit(train)
            hard_s = hard.predict_scales(test_inputs)
            continuous = ContinuousRouter(**options).fit(train)
            cont_s = continuous.predict_scales(test_inputs)
            learned = (("learned hard router (pool chosen on val)", hard_s), ("learned continuous s", cont_s))
            for method, sample_scales in learned:
                rows.append(
                    {**base, "seed": seed, "method": method, "upper_bound": False, **score(sample_scales)}
                )
            hard_index = np.searchsorted(scales, hard_s)
            agreement.append(
                {
                    "cache": label,
                    "seed": int(seed),
                    "hard_router_matches_oracle": float(np.mean(hard_index == oracle_choice)),
                    "continuous_s_correlation": float(np.corrcoef(cont_s, oracle_s)[0, 1])
                    if np.std(cont_s) > 0 and np.std(oracle_s) > 0
                    else float("nan"),
                    "continuous_s_mean_abs_diff": float(np.mean(np.abs(cont_s - oracle_s))),
                }
            )
            if choices is None:
                pick = subsample(len(oracle_s), points, seed=2)
                choices = pd.DataFrame(
                    {
                        "cache": label,
                        "seed": int(seed),
                        "nearest_ion_A": distance[pick],
                        "oracle_pool_s": scales[oracle_choice][pick],
                        "router_pool_s": hard_s[pick],
                        "oracle_continuous_s": oracle_s[pick],
                        "router_continuous_s": cont_s[pick],
                    }
                )
                counts = np.zeros((len(scales), len(scales)), dtype=np.int64)
                np.add.at(counts, (oracle_choice, hard_index), 1)
                confusion = pd.DataFrame(
                    [
                        {"oracle_s": scales[i], "router_s": scales[j], "count": int(counts[i, j])}
                        for i in range(len(scales))
                        for j in range(len(scales))
                    ]
                )
    table = pd.DataFrame(rows)
    results.csv("routers.csv", table)
    summary = mean_std(table, ["method", "upper_bound"], ["overall_mae", "close_contact_mae", "ion_mae"])
    results.csv("summary.csv", summary)
    results.csv("choices.csv", choices)
    results.csv("confusion.csv", confusion)
    results.json("agreement.json", agreement)
    results.finish(status="done", summary=summary.to_dict(orient="records"))
    return results.path


STUDY = Study(
    name=NAME,
    description="Learned hard and continuous routers (fitted on train only, several seeds) against "
    "oracle hard routing over the refined pool and the continuous oracle (upper bounds) on test; "
    "each router's choice against the oracle's per sample.",
    run=run,
    options={
        **scale_options("granularity", "loss", "tol", "max_size", "router_steps"),
        "hidden": Option(int, 32, None, "router MLP width (0: linear)"),
        "layers": Option(int, 2, None, "router MLP depth"),
        "points": Option(int, 4000, 2000, "samples kept in choices.csv"),
    },
    default_seeds=(0, 1, 2),
)
