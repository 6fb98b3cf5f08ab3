"""The scale table: every scale-layer method on the test split, in meV/Å.

One row per method; each row says whether it is an **upper bound** (it reads
the test labels) and on which split it was fitted:

============================================  ==========  =================
method                                        fitted on   upper bound
============================================  ==========  =================
``<anchor 0> only (s=0)``                     -           no
``<anchor 1> only (s=1)``                     -           no
``best global s``                             val         no
``oracle hard routing {0,1} (upper bound)``   test        yes
``continuous oracle (upper bound)``           test        yes
``refined-pool oracle (upper bound)``         val + test  yes (pool from val)
``soft-updated-pool oracle (upper bound)``    val + test  yes (pool from val)
``learned hard router``                       train       no  (refined pool)
``learned continuous s``                      train       no
============================================  ==========  =================

Columns: ``overall_mae`` (all force components), ``close_contact_mae`` (atoms
whose nearest other ion is closer than ``units.CLOSE_CONTACT_CUTOFF``),
``ion_mae`` (Na and Cl), all meV/Å; ``gain_recovered`` =
(MAE_baseline - MAE) / (MAE_baseline - MAE_continuous_oracle), where the
baseline is the single branch with the lower validation MAE.  Oracles and the
refined pool minimise the overall loss; their close-contact and ion errors
are those of that same routing.  With several caches (seeds) each number is
the mean and ``<column>_std`` the standard deviation (ddof=1).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from ..data import PredictionCache
from ..units import CLOSE_CONTACT_CUTOFF, EV_TO_MEV
from ._differentiable import fit_pool_scales
from ._generator import interpolate
from ._geometry import ion_mask, nearest_ion_distances
from ._oracle import optimal_scale
from ._pool import ANCHORS, refine_pool
from ._problem import RoutingProblem
from ._routers import ContinuousRouter, HardRouter

METRICS = ("overall_mae", "close_contact_mae", "ion_mae")
UPPER_BOUND = "(upper bound)"


def _metrics(problem: RoutingProblem, atom_scales: np.ndarray, close: np.ndarray, ions: np.ndarray) -> dict:
    """MAEs in meV/Å of per-atom scales ``(F_test, N)`` on the test problem."""
    f0, f1 = problem.generator.anchor_forces(problem.frames)
    error = np.abs(interpolate(f0, f1, atom_scales) - problem.forces_ref)  # (F, N, 3) eV/Å

    def mean(mask):
        return EV_TO_MEV * float(error[mask].mean()) if mask.any() else float("nan")

    return {
        "overall_mae": EV_TO_MEV * float(error.mean()),
        "close_contact_mae": mean(close),
        "ion_mae": mean(np.broadcast_to(ions, close.shape)),
    }


def evaluate_cache(
    cache: PredictionCache,
    granularity: str = "atom",
    loss: str = "mae",
    tol: float = 1e-3,
    max_size: int = 16,
    router_steps: int = 300,
    soft_steps: int = 150,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[pd.DataFrame, dict]:
    """All methods on one cache: ``(table, details)``.

    ``details`` holds the refined pool, its :class:`RefinementHistory`, the
    soft-updated pool, the best global s and timings per step (seconds).
    """
    for name in ("train", "val", "test"):
        if cache.frames(name).size == 0:
            raise ValueError(f"the scale table needs train, val and test frames; split '{name}' is empty")
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def tick(name):
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    val = RoutingProblem(cache, "val", granularity, loss)
    test = RoutingProblem(cache, "test", granularity, loss)
    test_cache = cache.select("test")
    close = (
        nearest_ion_distances(test_cache.positions, test_cache.numbers, test_cache.cell)
        < CLOSE_CONTACT_CUTOFF
    )
    ions = ion_mask(cache.numbers)[None, :]
    tick("setup")

    rows = []

    def add(method, sample_scales, fitted_on, upper, detail=""):
        atom_scales = test.groups.atom_scales(
            np.broadcast_to(np.asarray(sample_scales, float), (test.n_samples,))
        )
        rows.append(
            {
                "method": method,
                **_metrics(test, atom_scales, close, ions),
                "upper_bound": upper,
                "fitted_on": fitted_on,
                "detail": detail,
            }
        )

    short, long = cache.anchors
    add(f"{short} only (s=0)", 0.0, "-", False)
    add(f"{long} only (s=1)", 1.0, "-", False)
    one_group = np.zeros_like(val.component_sample)
    s_global = float(optimal_scale(val.a, val.d, one_group, 1, loss)[0])
    add("best global s", s_global, "val", False, f"s={s_global:.4g}")
    choice, _, _ = test.hard_oracle(ANCHORS)
    add(f"oracle hard routing {{0,1}} {UPPER_BOUND}", np.asarray(ANCHORS)[choice], "test", True)
    add(f"continuous oracle {UPPER_BOUND}", test.continuous_oracle(), "test", True)
    tick("baselines_and_oracles")

    pool, history = refine_pool(val, tol=tol, max_size=max_size)
    choice, _, _ = test.hard_oracle(pool)
    add(
        f"refined-pool oracle {UPPER_BOUND}",
        pool.as_array()[choice],
        "val+test",
        True,
        f"pool={pool.label()}",
    )
    tick("refine_pool")
    soft_pool, _ = (
        fit_pool_scales(val, pool, steps=soft_steps, device=device) if len(pool) > 2 else (pool, {})
    )
    choice, _, _ = test.hard_oracle(soft_pool)
    add(
        f"soft-updated-pool oracle {UPPER_BOUND}",
        soft_pool.as_array()[choice],
        "val+test",
        True,
        f"pool={soft_pool.label()}",
    )
    tick("soft_pool")

    train, test_inputs = cache.select("train"), cache.select("test", labels=False)
    options = {
        "granularity": granularity,
        "loss": loss,
        "steps": router_steps,
        "seed": seed,
        "device": device,
    }
    hard = HardRouter(pool, **options).fit(train)
    add("learned hard router", hard.predict_scales(test_inputs), "train", False, f"pool={pool.label()}")
    tick("hard_router")
    continuous = ContinuousRouter(**options).fit(train)
    add("learned continuous s", continuous.predict_scales(test_inputs), "train", False)
    tick("continuous_router")

    table = pd.DataFrame(rows)
    val_branch = [val.routed_loss(np.full(val.n_samples, s)) for s in ANCHORS]
    baseline = table.loc[int(np.argmin(val_branch)), "overall_mae"]
    oracle = table.loc[table.method == f"continuous oracle {UPPER_BOUND}", "overall_mae"].item()
    gap = baseline - oracle
    table.insert(4, "gain_recovered", (baseline - table.overall_mae) / gap if gap > 0 else np.nan)
    details = {
        "pool": pool,
        "history": history,
        "soft_pool": soft_pool,
        "best_global_s": s_global,
        "timings_s": timings,
    }
    return table, details


def scale_table(
    caches: PredictionCache | list[PredictionCache],
    granularity: str = "atom",
    loss: str = "mae",
    tol: float = 1e-3,
    max_size: int = 16,
    router_steps: int = 300,
    soft_steps: int = 150,
    seed: int = 0,
    device: str = "cpu",
    return_details: bool = False,
):
    """The scale table (see module docstring) for one cache or several seeds.

    Returns a DataFrame with a ``method`` column, the metric columns in meV/Å,
    their ``_std`` over caches, ``gain_recovered`` (and its std),
    ``upper_bound``, ``fitted_on``, ``detail`` and ``n_seeds``; with
    ``return_details`` also the per-cache details of :func:`evaluate_cache`.
    """
    caches = [caches] if isinstance(caches, PredictionCache) else list(caches)
    if not caches:
        raise ValueError("scale_table needs at least one prediction cache")
    tables, details = [], []
    for i, cache in enumerate(caches):
        table, detail = evaluate_cache(
            cache, granularity, loss, tol, max_size, router_steps, soft_steps, seed + i, device
        )
        tables.append(table)
        details.append(detail)
    stacked = pd.concat(tables, ignore_index=True)
    numeric = [*METRICS, "gain_recovered"]
    grouped = stacked.groupby("method", sort=False)
    out = grouped[numeric].mean()
    std = grouped[numeric].std(ddof=1).add_suffix("_std")
    out = out.join(std)
    out["upper_bound"] = grouped["upper_bound"].first()
    out["fitted_on"] = grouped["fitted_on"].first()
    out["detail"] = grouped["detail"].agg(lambda v: " | ".join(x for x in dict.fromkeys(v) if x))
    out["n_seeds"] = grouped.size()
    order = [
        "overall_mae",
        "overall_mae_std",
        "close_contact_mae",
        "close_contact_mae_std",
        "ion_mae",
        "ion_mae_std",
        "gain_recovered",
        "gain_recovered_std",
        "upper_bound",
        "fitted_on",
        "detail",
        "n_seeds",
    ]
    out = out[order].reset_index()
    out.attrs["unit"] = "meV/Å"
    out.attrs["split"] = "test"
    out.attrs["granularity"] = granularity
    return (out, details) if return_details else out


def format_table(df) -> str:
    """Mean ± std per metric (std only with several seeds), meV/Å."""
    lines = []
    several = int(df["n_seeds"].max()) > 1
    header = f"{'method':<42}{'overall':>18}{'close contact':>18}{'ions':>18}{'gain rec.':>11}"
    lines += [f"MAE on the test split, meV/Å ({int(df['n_seeds'].max())} seed(s))", header, "-" * len(header)]
    for row in df.itertuples(index=False):
        cells = []
        for name in ("overall_mae", "close_contact_mae", "ion_mae"):
            value, std = getattr(row, name), getattr(row, f"{name}_std")
            cells.append(f"{value:.2f} ± {std:.2f}" if several else f"{value:.2f}")
        lines.append(
            f"{row.method:<42}" + "".join(f"{c:>18}" for c in cells) + f"{row.gain_recovered:>11.3f}"
        )
        if row.detail:
            lines.append(f"{'':<4}{row.detail}")
    return "\n".join(lines)
