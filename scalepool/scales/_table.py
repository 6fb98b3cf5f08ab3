"""The scale table: every scale-layer method on the test split, in meV/Å, beside a null control.

One row per method; each row says whether it is an **upper bound** (it reads
the test labels) and on which split it was fitted (``fitted_on``):

======================================================  ===============  ===========
method                                                  fitted_on        upper bound
======================================================  ===============  ===========
``<anchor 0> only (s=0)``, ``<anchor 1> only (s=1)``    ``""``           no
``best global s``                                       val              no
``oracle hard routing {0,1} (upper bound)``             test (oracle)    yes
``[0,1]-constrained continuous oracle (upper bound)``   test (oracle)    yes
``refined-pool oracle (upper bound)``                   test (oracle)    yes (pool refined on val)
``soft-updated-pool oracle (upper bound)``              test (oracle)    yes (pool from val)
``learned hard router (pool chosen on val)``            train            no
``learned continuous s``                                train            no
======================================================  ===============  ===========

Columns: the subset MAEs of :mod:`scalepool.metrics` (``overall_mae``;
``close_contact_mae``, ions whose nearest counter-ion is within the contact-pair
distance, 3.5 Å; ``contact_frame_mae``; ``near_ion_mae``, the paper's 6 Å
any-ion subset; ``ion_mae``), all meV/Å, with the test subsets' sizes
``n_contact_ions`` and ``n_contact_frames``; ``gain_recovered`` =
(MAE_baseline - MAE) / (MAE_baseline - MAE_continuous_oracle), the baseline
being the single branch with the lower validation MAE; ``gain_pct`` (and
``gain_pct_close_contact``, ``gain_pct_ions``) = 100 (MAE_best - MAE) /
MAE_best, MAE_best being the lower of the pair's two single-branch test MAEs
of that metric.  Oracles and the refined pool minimise the overall loss;
their close-contact and ion errors are those of that same routing.

**Null control.**  Any two different predictors gain from oracle routing,
even two runs of one branch: the oracle picks, per atom, whichever run's
noise happens to be smaller.  So every method except the single branches is
repeated (same granularity, loss, refinement, routers and seeds) on a *null
pair*, by default ``(<anchor 0>, <anchor 0>_2)`` (a second run of the s=0
branch, as ``scalepool predict`` names it) when every cache holds it.  Null
rows have ``pair == "null"`` and names starting with ``"null: "``.  Real rows
get ``excess_over_null`` (``_close_contact``, ``_ions``): their ``gain_pct``
minus the null row's, in percentage points, per cache, then averaged; only a
positive excess is gain from the scale structure rather than from routing
between any two predictors.

With several caches (one per model seed) each number is the mean and
``<column>_std`` the standard deviation over caches (ddof=1; NaN for one
cache); the excess std is that of the per-cache paired differences.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd

from ..data import PredictionCache
from ..metrics import Subsets, subset_errors
from ._differentiable import fit_pool_scales
from ._generator import interpolate
from ._oracle import optimal_scale
from ._pool import ANCHORS, refine_pool
from ._problem import RoutingProblem
from ._routers import ContinuousRouter, HardRouter
from ._settings import ScaleSettings

METRICS = ("overall_mae", "close_contact_mae", "ion_mae")
UPPER_BOUND = "(upper bound)"
HARD_ORACLE = f"oracle hard routing {{0,1}} {UPPER_BOUND}"
CONTINUOUS_ORACLE = f"[0,1]-constrained continuous oracle {UPPER_BOUND}"
REFINED_ORACLE = f"refined-pool oracle {UPPER_BOUND}"
SOFT_ORACLE = f"soft-updated-pool oracle {UPPER_BOUND}"
HARD_ROUTER = "learned hard router (pool chosen on val)"
CONTINUOUS_ROUTER = "learned continuous s"
#: ``fitted_on`` of every row that reads the test labels
ORACLE_FIT = "test (oracle)"
NULL_PREFIX = "null: "
#: column suffix of each metric's gain and excess columns
SUFFIXES = {"overall_mae": "", "close_contact_mae": "_close_contact", "ion_mae": "_ions"}
GAINS = tuple(f"gain_pct{s}" for s in SUFFIXES.values())
EXCESS = tuple(f"excess_over_null{s}" for s in SUFFIXES.values())


def _metrics(problem: RoutingProblem, atom_scales: np.ndarray, subsets: Subsets) -> dict:
    """Subset MAEs in meV/Å (:func:`scalepool.metrics.subset_errors`) of per-atom scales
    ``(F_test, N)`` (ragged: flat ``(T_test,)``) on the test problem."""
    f0, f1 = problem.generator.anchor_forces(problem.frames)
    return subset_errors(np.abs(interpolate(f0, f1, atom_scales) - problem.forces_ref), subsets)


def evaluate_cache(
    cache: PredictionCache,
    granularity: str = ScaleSettings.granularity,
    loss: str = ScaleSettings.loss,
    tol: float = ScaleSettings.tol,
    max_size: int = ScaleSettings.max_size,
    router_steps: int = ScaleSettings.router_steps,
    soft_steps: int = 150,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[pd.DataFrame, dict]:
    """All methods on one cache and its anchor pair: ``(table, details)``.

    ``table`` has the columns of the module docstring except the null-control
    ones; ``details`` holds the refined pool, its :class:`RefinementHistory`,
    the soft-updated pool, the best global s and timings per step (seconds).
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
    subsets = Subsets.of_cache(test_cache)
    tick("setup")

    rows = []

    def add(method, sample_scales, fitted_on, detail=""):
        atom_scales = test.groups.atom_scales(
            np.broadcast_to(np.asarray(sample_scales, float), (test.n_samples,))
        )
        rows.append(
            {
                "method": method,
                **_metrics(test, atom_scales, subsets),
                **subsets.sizes(),
                "upper_bound": fitted_on == ORACLE_FIT,
                "fitted_on": fitted_on,
                "detail": detail,
            }
        )

    short, long = cache.anchors
    add(f"{short} only (s=0)", 0.0, "")
    add(f"{long} only (s=1)", 1.0, "")
    one_group = np.zeros_like(val.component_sample)
    s_global = float(optimal_scale(val.a, val.d, one_group, 1, loss)[0])
    add("best global s", s_global, "val", f"s={s_global:.4g}")
    choice, _, _ = test.hard_oracle(ANCHORS)
    add(HARD_ORACLE, np.asarray(ANCHORS)[choice], ORACLE_FIT)
    add(CONTINUOUS_ORACLE, test.continuous_oracle(), ORACLE_FIT)
    tick("baselines_and_oracles")

    pool, history = refine_pool(val, tol=tol, max_size=max_size)
    choice, _, _ = test.hard_oracle(pool)
    add(REFINED_ORACLE, pool.as_array()[choice], ORACLE_FIT, f"pool={pool.label()} refined on val")
    tick("refine_pool")
    soft_pool, _ = (
        fit_pool_scales(val, pool, steps=soft_steps, device=device) if len(pool) > 2 else (pool, {})
    )
    choice, _, _ = test.hard_oracle(soft_pool)
    add(SOFT_ORACLE, soft_pool.as_array()[choice], ORACLE_FIT, f"pool={soft_pool.label()} fitted on val")
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
    add(HARD_ROUTER, hard.predict_scales(test_inputs), "train", f"pool={pool.label()} refined on val")
    tick("hard_router")
    continuous = ContinuousRouter(**options).fit(train)
    add(CONTINUOUS_ROUTER, continuous.predict_scales(test_inputs), "train")
    tick("continuous_router")

    table = pd.DataFrame(rows)
    val_branch = [val.routed_loss(np.full(val.n_samples, s)) for s in ANCHORS]
    baseline = table.loc[int(np.argmin(val_branch)), "overall_mae"]
    oracle = table.loc[table.method == CONTINUOUS_ORACLE, "overall_mae"].item()
    gap = baseline - oracle
    table.insert(4, "gain_recovered", (baseline - table.overall_mae) / gap if gap > 0 else np.nan)
    for metric, gain in zip(METRICS, GAINS, strict=True):
        best = table[metric].iloc[:2].min()  # the better single branch on this metric
        table[gain] = 100.0 * (best - table[metric]) / best
    details = {
        "pool": pool,
        "history": history,
        "soft_pool": soft_pool,
        "best_global_s": s_global,
        "timings_s": timings,
    }
    return table, details


def resolve_null_pair(caches: list[PredictionCache], null_pair="auto") -> tuple[tuple[str, str] | None, str]:
    """The null pair to use and a sentence saying why (for provenance notes).

    ``"auto"``: ``(<anchor 0>, <anchor 0>_2)`` when every cache holds that
    branch, else none; a pair of branch names: that pair (every cache must
    hold both); ``None``: none.
    """
    if null_pair is None:
        return None, "no null control: null_pair=None"
    if isinstance(null_pair, str):
        if null_pair != "auto":
            raise ValueError(f"null_pair must be 'auto', None or two branch names, got {null_pair!r}")
        first = caches[0].anchors[0]
        pair = (first, f"{first}_2")
        lacking = [i for i, c in enumerate(caches) if not set(pair) <= set(c.branches)]
        if lacking:
            return None, (
                f"no null control: cache(s) {lacking} hold no branch '{pair[1]}' (a second run of '{first}'; "
                f"scalepool predict --run RUN_{first} --run RUN2_{first} writes it)"
            )
        return pair, f"null control: the same methods routing between '{pair[0]}' and '{pair[1]}'"
    pair = tuple(null_pair)
    if len(pair) != 2 or pair[0] == pair[1]:
        raise ValueError(f"null_pair must name two different branches, got {null_pair!r}")
    for i, cache in enumerate(caches):
        if not set(pair) <= set(cache.branches):
            raise ValueError(f"null pair {pair}: cache {i} has branches {sorted(cache.branches)}")
    return pair, f"null control: the same methods routing between '{pair[0]}' and '{pair[1]}'"


def parse_null_pair(text: str | None):
    """``"auto"`` -> ``"auto"``; ``"none"``/``""``/``None`` -> ``None``; ``"a,b"`` -> ``("a", "b")``."""
    if text is None or text.strip().lower() in ("", "none"):
        return None
    if text.strip().lower() == "auto":
        return "auto"
    names = tuple(part.strip() for part in text.split(","))
    if len(names) != 2 or not all(names):
        raise ValueError(f"a null pair is two branch names joined by a comma (short,short_2), got {text!r}")
    return names


def _with_null(real: pd.DataFrame, null: pd.DataFrame | None) -> pd.DataFrame:
    """Real rows (with the excess over the matching null row) then null rows, for one cache."""
    real = real.assign(pair="real")
    routed = (real.fitted_on != "").to_numpy()  # single branches have no null counterpart
    if null is None:
        for column in EXCESS:
            real[column] = np.nan
        return real
    by_method = null.set_index("method")
    for gain, column in zip(GAINS, EXCESS, strict=True):
        matched = real.method.map(by_method[gain]).to_numpy(float)
        real[column] = np.where(routed, real[gain].to_numpy(float) - matched, np.nan)
    null = null.assign(pair="null", method=NULL_PREFIX + null.method)
    return pd.concat([real, null], ignore_index=True)


#: ``meta`` fields that several caches averaged as seeds must share (where a cache records them)
SHARED_META = ("dataset_checksum", "split_fractions", "split_gap", "frame_index")


def _cache_label(i: int, cache: PredictionCache) -> str:
    """``cache <i>`` (0-based, in the order given) and its file (``meta["source"]``) or its runs."""
    where = cache.meta.get("source") or cache.meta.get("runs")
    return f"cache {i}" + (f" ({where})" if where else "")


def _shown(field: str, value) -> str:
    if value is None:
        return "none recorded"
    if field == "dataset_checksum":
        return f"{str(value)[:16]}..."
    if field == "frame_index" and isinstance(value, list):
        return f"{len(value)} frames [{value[0] if value else ''}..{value[-1] if value else ''}]"
    return repr(value)


def _check_same_experiment(caches: list[PredictionCache]) -> None:
    """Several caches are averaged as seeds of one experiment: refuse caches of another dataset,
    split or anchor pair, naming the first two that differ and the field."""
    first = caches[0]
    for i, cache in enumerate(caches[1:], start=1):
        fields = [("anchors", list(first.anchors), list(cache.anchors))]
        fields += [
            (f"meta['{key}']", first.meta.get(key), cache.meta.get(key))
            for key in SHARED_META
            if key in first.meta or key in cache.meta
        ]
        for field, a, b in fields:
            if a != b:
                key = field.removeprefix("meta['").removesuffix("']")
                raise ValueError(
                    f"{_cache_label(0, first)} and {_cache_label(i, cache)} differ in {field}: "
                    f"{_shown(key, a)} vs {_shown(key, b)}; several caches are averaged as seeds of one "
                    "experiment and must share the dataset, the split and the anchors"
                )


def scale_table(
    caches: PredictionCache | list[PredictionCache],
    granularity: str = ScaleSettings.granularity,
    loss: str = ScaleSettings.loss,
    tol: float = ScaleSettings.tol,
    max_size: int = ScaleSettings.max_size,
    router_steps: int = ScaleSettings.router_steps,
    soft_steps: int = 150,
    seed: int = 0,
    device: str = "cpu",
    return_details: bool = False,
    null_pair="auto",
):
    """The scale table (see module docstring) for one cache or several seeds.

    Parameters
    ----------
    null_pair : ``"auto"`` (default), two branch names or ``None``; see
        :func:`resolve_null_pair`.  The null pair goes through the same
        methods with the same settings and router seeds as the anchors.

    Returns a DataFrame with ``method``, ``pair`` (``"real"``/``"null"``), the
    metric columns (meV/Å), ``gain_recovered``, the ``gain_pct*`` and
    ``excess_over_null*`` columns (percent, percentage points), each with its
    ``_std`` over caches, then ``upper_bound``, ``fitted_on``, ``detail`` and
    ``n_seeds``; ``attrs`` hold ``unit``, ``split``, ``granularity``,
    ``null_pair`` and ``null_note``.  With ``return_details`` also the
    per-cache details of :func:`evaluate_cache` (the null pair's under ``"null"``).
    """
    caches = [caches] if isinstance(caches, PredictionCache) else list(caches)
    if not caches:
        raise ValueError("scale_table needs at least one prediction cache")
    _check_same_experiment(caches)
    pair, note = resolve_null_pair(caches, null_pair)
    ScaleSettings.validated(  # one check, with a message naming the setting
        granularity=granularity, loss=loss, tol=tol, max_size=max_size, router_steps=router_steps
    )
    settings = (granularity, loss, tol, max_size, router_steps, soft_steps)
    tables, details = [], []
    for i, cache in enumerate(caches):
        table, detail = evaluate_cache(cache, *settings, seed + i, device)
        null = None
        if pair is not None:
            swapped = dataclasses.replace(cache, anchors=pair, meta=dict(cache.meta))
            null, detail["null"] = evaluate_cache(swapped, *settings, seed + i, device)
        tables.append(_with_null(table, null))
        details.append(detail)
    stacked = pd.concat(tables, ignore_index=True)
    # subsets beyond the three headline metrics, and the contact subsets' sizes (test split)
    extra = [
        c for c in ("contact_frame_mae", "near_ion_mae", "n_contact_ions", "n_contact_frames") if c in stacked
    ]
    numeric = [*METRICS, "gain_recovered", *GAINS, *EXCESS, *extra]
    grouped = stacked.groupby("method", sort=False)
    out = grouped[numeric].mean()
    out = out.join(grouped[numeric].std(ddof=1).add_suffix("_std"))
    for column in ("pair", "upper_bound", "fitted_on"):
        out[column] = grouped[column].first()
    out["detail"] = grouped["detail"].agg(lambda v: " | ".join(x for x in dict.fromkeys(v) if x))
    out["n_seeds"] = grouped.size()
    order = ["pair", *(c for col in numeric for c in (col, f"{col}_std"))]
    out = out[[*order, "upper_bound", "fitted_on", "detail", "n_seeds"]].reset_index()
    out.attrs.update(
        unit="meV/Å", split="test", granularity=granularity, null_pair=pair and list(pair), null_note=note
    )
    return (out, details) if return_details else out


def _mean_std(value, std, several: bool, fmt: str = ".2f", sign: str = "") -> str:
    if pd.isna(value):
        return "–"
    text = f"{value:{sign}{fmt}}"
    return f"{text} ± {std:{fmt}}" if several and pd.notna(std) else text


def format_table(df) -> str:
    """Mean ± std per metric (std only with several seeds), meV/Å; null rows after the real ones.

    Works on :func:`scale_table` output or its CSV read back (older CSVs
    without the null-control columns print without them).
    """
    several = int(df["n_seeds"].max()) > 1
    # a plain read_csv turns the label "null" into NaN: anything not "real" is the null block
    pairs = df["pair"].where(df["pair"] == "real", "null") if "pair" in df else pd.Series("real", df.index)
    has_excess = "excess_over_null" in df and df["excess_over_null"].notna().any()
    width = max(42, max(len(str(m)) for m in df.method) + 2)
    header = f"{'method':<{width}}{'overall':>16}{'contact ions':>16}{'ions':>16}{'gain rec.':>11}"
    header += f"{'excess over null, pp':>22}" if has_excess else ""
    lines = [f"MAE on the test split, meV/Å ({int(df['n_seeds'].max())} seed(s))", header, "-" * len(header)]
    for pair in ("real", "null"):
        block = df[(pairs == pair).to_numpy()]
        if block.empty:
            continue
        if pair == "null":
            lines += ["", "null control (the same methods routing between two runs of one branch):"]
        for _, row in block.iterrows():
            cells = [_mean_std(row[m], row.get(f"{m}_std"), several) for m in METRICS]
            line = f"{row.method:<{width}}" + "".join(f"{c:>16}" for c in cells)
            line += f"{row.gain_recovered:>11.3f}"
            if has_excess:
                excess = _mean_std(
                    row["excess_over_null"], row.get("excess_over_null_std"), several, ".1f", "+"
                )
                line += f"{excess:>22}"
            lines.append(line)
            if isinstance(row.get("detail"), str) and row.detail:
                lines.append(f"{'':<4}{row.detail}")
    return "\n".join(lines)
