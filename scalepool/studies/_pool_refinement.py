"""Study (c): scale-pool refinement from the anchors {0, 1}, round by round, and pools of equal size.

The pool is refined on the val split (:func:`scalepool.scales.refine_pool`);
each round's pool is then scored on the test split by oracle routing (an upper
bound, as in the paper; every CSV below has ``upper_bound = True``).
Outputs (meV/Å):

- ``history_<cache>.json``: the :class:`~scalepool.scales.RefinementHistory`;
- ``rounds.csv``: per cache and round, the pool, its val loss, and its test
  MAE (overall, close contact, ions) with the share of the gap between oracle
  hard routing over {0, 1} and the continuous oracle that it recovers;
- ``reference_pools.csv``: the same test numbers for fixed pools (the anchors,
  the paper's {0, .125, .25, .375, .5, .75, 1}, uniform grids) and the
  [0,1]-constrained continuous oracle, mean and std over caches;
- ``equal_size_pools.csv``: for each size k of ``pool_sizes`` (5, 7, 9), pools
  of (at most) k scales on the same caches: loss-guided refinement on val
  capped at k (``tol=0`` so that it fills up to k where any scale still pays),
  the uniform grid of k scales, the paper's pool (k = 7) and, with
  ``search_trials > 0``, an optuna (TPE) search of the k-2 inner scales that
  minimises the oracle-routed val MAE (:class:`scalepool.search.ScaleSearch`,
  no size penalty).  Test MAE and gap recovered, mean and std over caches;
  ``n_scales`` is the size actually reached;
- ``summary.csv``: final pool per cache; mean and std over caches in the provenance.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..scales import CONTINUOUS_ORACLE, RoutingProblem, ScalePool, ScaleSettings, refine_pool
from ..units import EV_TO_MEV
from ._common import SplitView, mean_std, open_results
from ._study import Option, Study, scale_options

NAME = "pool_refinement"
PAPER_POOL = (0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0)
PAPER_LABEL = "paper {0,.125,.25,.375,.5,.75,1}"
REFERENCE_POOLS = {
    "anchors {0,1}": (0.0, 1.0),
    PAPER_LABEL: PAPER_POOL,
    "uniform 5": tuple(np.linspace(0, 1, 5)),
    "uniform 9": tuple(np.linspace(0, 1, 9)),
}
METRICS = ["overall_mae", "close_contact_mae", "ion_mae", "gap_recovered"]


class _TestScorer:
    """Oracle-routed test errors of any pool (upper bounds), with the gap recovered."""

    def __init__(self, cache, granularity: str, loss: str):
        self.problem = RoutingProblem(cache, "test", granularity, loss)
        self.view = SplitView.of(cache, "test")
        self.hard = self.score((0.0, 1.0))["overall_mae"]
        self.continuous = self.score_scales(self.problem.continuous_oracle())["overall_mae"]

    def score_scales(self, sample_scales) -> dict[str, float]:
        return self.view.errors(self.problem.groups.atom_scales(np.asarray(sample_scales, float)))

    def score(self, pool) -> dict[str, float]:
        scales = np.asarray(list(pool), float)
        choice, _, _ = self.problem.hard_oracle(scales)
        out = self.score_scales(scales[choice])
        if hasattr(self, "continuous"):
            gap = self.hard - self.continuous
            out["gap_recovered"] = (self.hard - out["overall_mae"]) / gap if gap > 0 else float("nan")
        return out


def searched_pool(cache, size: int, trials: int, seed: int, granularity: str, loss: str) -> ScalePool:
    """Optuna (TPE) search of a pool {0, 1, s_1 .. s_(size-2)} minimising the oracle-routed
    val loss (an upper bound on val; the test split is not read)."""
    import optuna

    from ..search import ScaleSearch, quiet_optuna

    quiet_optuna()
    search = ScaleSearch(cache, "pool", granularity, loss, max_inner=size - 2, size_penalty=0.0, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.PartialFixedSampler(
            {"n_inner": size - 2}, optuna.samplers.TPESampler(seed=seed)
        )
        study = optuna.create_study(sampler=sampler)
        study.optimize(search, n_trials=trials)
    return search.pool_from(study.best_params)


def equal_size_pools(
    cache, scorer: _TestScorer, sizes, settings: dict, kinds, search_trials: int, seed: int
) -> list[dict]:
    """Rows of ``equal_size_pools.csv`` for one cache: every pool of every size, scored on test."""
    val = RoutingProblem(cache, "val", settings["granularity"], settings["loss"])
    rows = []
    for size in sizes:
        size = int(size)
        if size < 2:
            raise ValueError(f"pool sizes must be at least 2 (the anchors), got {size}")
        refined, _ = refine_pool(
            val, tol=0.0, max_size=size, max_rounds=max(settings["max_rounds"], size), proposals=kinds
        )
        pools = {"loss-guided refinement (val)": refined, "uniform grid": ScalePool(np.linspace(0, 1, size))}
        if size == len(PAPER_POOL):
            pools[PAPER_LABEL] = ScalePool(PAPER_POOL)
        if search_trials > 0:
            pools[f"optuna search (val, {search_trials} trials)"] = searched_pool(
                cache, size, search_trials, seed, settings["granularity"], settings["loss"]
            )
        for method, pool in pools.items():
            rows.append(
                {
                    "size": size,
                    "method": method,
                    "upper_bound": True,
                    "n_scales": len(pool),
                    "pool": pool.label(),
                    **scorer.score(pool),
                }
            )
    return rows


def run(
    preds,
    out,
    *,
    seeds=(0,),
    device="cpu",
    parameters=None,
    granularity=ScaleSettings.granularity,
    loss=ScaleSettings.loss,
    tol=ScaleSettings.tol,
    max_size=ScaleSettings.max_size,
    max_rounds=12,
    proposals=ScaleSettings.proposals,
    pool_sizes=(5, 7, 9),
    search_trials=60,
) -> Path:
    settings = dict(granularity=granularity, loss=loss, tol=tol, max_size=max_size, max_rounds=max_rounds)
    caches, labels, results = open_results(
        preds,
        out,
        NAME,
        parameters
        or {
            **settings,
            "proposals": proposals,
            "pool_sizes": list(pool_sizes),
            "search_trials": search_trials,
        },
        seeds,
    )
    kinds = tuple(p for p in proposals.split("+") if p)
    rounds, references, finals, equal = [], [], [], []
    factor = EV_TO_MEV if loss == "mae" else EV_TO_MEV**2
    for index, (label, cache) in enumerate(zip(labels, caches, strict=True)):
        pool, history = refine_pool(cache, split="val", proposals=kinds, **settings)
        history.save(results.file(f"history_{label}.json"))
        scorer = _TestScorer(cache, granularity, loss)
        for record in history.rounds:
            rounds.append(
                {
                    "cache": label,
                    "round": record.round,
                    "pool": ScalePool(tuple(record.pool)).label(),
                    "n_scales": len(record.pool),
                    "inserted": " ".join(f"{s:g}" for s in record.inserted),
                    "pruned": " ".join(f"{s:g}" for s in record.pruned),
                    "val_oracle_loss": factor * record.loss,
                    "upper_bound": True,
                    **{f"test_{k}": v for k, v in scorer.score(record.pool).items()},
                }
            )
        for name, scales in REFERENCE_POOLS.items():
            references.append({"cache": label, "pool": name, "n_scales": len(scales), **scorer.score(scales)})
        references.append(
            {
                "cache": label,
                "pool": CONTINUOUS_ORACLE,
                "n_scales": np.nan,
                **scorer.score_scales(scorer.problem.continuous_oracle()),
                "gap_recovered": 1.0,
            }
        )
        finals.append(
            {
                "cache": label,
                "final_pool": pool.label(),
                "n_scales": len(pool),
                "n_rounds": len(history.rounds) - 1,
                "stop_reason": history.stop_reason,
                "upper_bound": True,
                **{f"test_{k}": v for k, v in scorer.score(pool).items()},
            }
        )
        seed = int(seeds[0]) + index  # one search seed per cache, as the table's routers
        equal += [
            {"cache": label, **row}
            for row in equal_size_pools(cache, scorer, pool_sizes, settings, kinds, search_trials, seed)
        ]
    results.csv("rounds.csv", pd.DataFrame(rounds))
    references = pd.DataFrame(references).assign(upper_bound=True)
    results.csv("reference_pools.csv", mean_std(references, ["pool", "n_scales", "upper_bound"], METRICS))
    results.csv("equal_size_pools.csv", _equal_size_table(pd.DataFrame(equal)))
    finals = pd.DataFrame(finals)
    results.csv("summary.csv", finals)
    numeric = [f"test_{m}" for m in METRICS]
    results.finish(
        status="done",
        final_pools=finals["final_pool"].tolist(),
        equal_size_search=f"optuna, {search_trials} trials per size and cache"
        if search_trials > 0
        else "no optuna-searched pools (search_trials=0)",
        summary={
            **{m: float(finals[m].mean()) for m in numeric},
            **{f"{m}_std": float(finals[m].std(ddof=1)) if len(finals) > 1 else 0.0 for m in numeric},
        },
    )
    return results.path


def _equal_size_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over caches per (size, method); ``n_scales`` is averaged, the pools listed."""
    by = ["size", "method", "upper_bound"]
    table = mean_std(rows, by, ["n_scales", *METRICS])
    pools = rows.groupby(by, sort=False)["pool"].agg(lambda v: " | ".join(dict.fromkeys(v)))
    return table.drop(columns="n_scales_std").merge(pools.reset_index(), on=by)


STUDY = Study(
    name=NAME,
    description="Scale-pool refinement from the anchors {0,1} on val; every round's pool scored by "
    "oracle routing on test (upper bound), with the share of the hard-to-continuous oracle gap it "
    "recovers; reference pools including the paper's; refined, uniform, paper and optuna-searched "
    "pools compared at equal size.",
    run=run,
    options={
        **scale_options("granularity", "loss", "tol", "max_size"),
        "max_rounds": Option(int, 12, None, "most refinement rounds"),
        "proposals": Option(
            str,
            "midpoints",
            None,
            "candidate kinds joined by '+'",
            ("midpoints", "quantiles", "midpoints+quantiles"),
        ),
        "pool_sizes": Option(int, (5, 7, 9), None, "pool sizes of equal_size_pools.csv", nargs="+"),
        "search_trials": Option(int, 60, 30, "optuna trials per searched pool of equal size (0: none)"),
    },
)
