"""Figures of the scale layer, drawn from the results of the scale studies only.

Each function takes the results root (the folder holding one subfolder per
study) and returns a figure, or ``None`` when its results are missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from ..scales import CONTINUOUS_ORACLE, HARD_ORACLE, NULL_PREFIX
from ..units import EV_TO_MEV
from ._style import CLOSE_CONTACT_LABEL, color, plt

UPPER = "(upper bound)"
#: the continuous oracle's name in results written before it was called [0,1]-constrained
_LEGACY_CONTINUOUS = ("continuous oracle (upper bound)", "continuous oracle")
#: Fewest atoms a distance bin needs to be drawn.
MIN_BIN = 10


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.exists() else None


def _band(ax, x, mean, std, **kwargs):
    line = ax.plot(x, mean, **kwargs)[0]
    if std is not None and np.any(np.asarray(std) > 0):
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
    return line


def global_s(results: Path):
    """Force MAE against a global scale s, overall and in close contact (test solid, val dashed),
    with the oracle levels of the table (upper bounds) as reference lines."""
    curve = _read(results / "oracle_table" / "global_s_curve.csv")
    if curve is None:
        return None
    table = _read(results / "oracle_table" / "table.csv")
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.2), sharex=True)
    for ax, metric, title in zip(
        axes, ("overall_mae", "close_contact_mae"), ("all atoms", CLOSE_CONTACT_LABEL), strict=True
    ):
        for split, style in (("test", "-"), ("val", "--")):
            rows = curve[curve.split == split]
            if rows.empty or rows[metric].isna().all():
                continue
            _band(ax, rows.s, rows[metric], rows[f"{metric}_std"], ls=style, color=color("mixture"),
                  label=f"F(s), {split}")  # fmt: skip
        test, val = curve[curve.split == "test"], curve[curve.split == "val"]
        if not test.empty and not val.empty and val[metric].notna().any():
            # the deployable choice: s minimising the val curve, scored on test (mean curves)
            chosen = float(val.loc[val[metric].idxmin(), "s"])
            at = test.iloc[int(np.argmin(np.abs(test.s.to_numpy() - chosen)))]
            ax.plot(at.s, at[metric], "o", color=color("mixture"), ms=5,
                    label=f"s = {chosen:.3g} chosen on val, its test MAE")  # fmt: skip
        if table is not None:
            for method, ls in ((HARD_ORACLE, ":"), (CONTINUOUS_ORACLE, "-.")):
                names = (method, *_LEGACY_CONTINUOUS[:1]) if method == CONTINUOUS_ORACLE else (method,)
                value = table.loc[table.method.isin(names), metric]
                if not value.empty and np.isfinite(value.iloc[0]):
                    ax.axhline(
                        value.iloc[0],
                        ls=ls,
                        color=color("oracle"),
                        lw=1,
                        label=method.replace(" (upper bound)", " (UB)"),
                    )
        ax.set_title(title)
        ax.set_xlabel("global scale s  (0 = short, 1 = long)")
        ax.set_ylabel("force MAE (meV/Å)")
    axes[0].legend(loc="best")
    return fig


def oracle_s_distance(results: Path):
    """The continuous oracle's per-atom best s (upper bound) against the nearest-ion distance."""
    stats = _read(results / "oracle_table" / "oracle_s_vs_distance.csv")
    if stats is None:
        return None
    points = _read(results / "oracle_table" / "oracle_s_points.csv")
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    if points is not None and not points.empty:
        ax.scatter(
            points.nearest_ion_A,
            points.oracle_s,
            s=3,
            alpha=0.3,
            color="0.55",
            lw=0,
            label="atoms (subsample)",
        )
    for i, (subset, rows) in enumerate(stats.groupby("subset", sort=False)):
        rows = rows[rows.n >= MIN_BIN]  # a median of a handful of atoms is noise
        c = f"C{i}"
        ax.plot(rows.center, rows["median"], "-o", color=c, label=f"median, {subset}")
        ax.fill_between(rows.center, rows.q25, rows.q75, color=c, alpha=0.2, lw=0)
        ax.plot(rows.center, rows["mean"], "--", color=c, lw=1, label=f"mean, {subset}")
    ax.axvline(6.0, color="k", lw=0.8, ls=":", label="close-contact cutoff")
    ax.set_xlabel("nearest-ion distance (Å)")
    ax.set_ylabel("oracle best s (upper bound)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"continuous oracle per atom, test split (bins with >= {MIN_BIN} atoms)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def pool_refinement(results: Path):
    """Pool members per round (from the first cache's history) and each round's test MAE
    under oracle routing (upper bound) against the hard {0,1} and continuous oracles."""
    from ..scales import RefinementHistory

    folder = results / "pool_refinement"
    rounds = _read(folder / "rounds.csv")
    histories = sorted(folder.glob("history_*.json"))
    if rounds is None or not histories:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.0, 3.4))
    draw_refinement_history(RefinementHistory.load(histories[0]), ax=left, loss_ax=False)
    left.set_title(f"pool per round ({histories[0].stem.removeprefix('history_')})")
    stats = rounds.groupby("round").agg(
        mae=("test_overall_mae", "mean"), std=("test_overall_mae", "std"), gap=("test_gap_recovered", "mean")
    )
    _band(right, stats.index, stats.mae, stats["std"].fillna(0), marker="o", color=color("mixture"),
          label="refined-pool oracle (UB)")  # fmt: skip
    reference = _read(folder / "reference_pools.csv")
    if reference is not None:
        for pool, ls in (
            ("anchors {0,1}", ":"),
            (CONTINUOUS_ORACLE, "-."),
            ("paper {0,.125,.25,.375,.5,.75,1}", "--"),
        ):
            names = (pool, *_LEGACY_CONTINUOUS) if pool == CONTINUOUS_ORACLE else (pool,)
            value = reference.loc[reference.pool.isin(names), "overall_mae"]
            if not value.empty:
                label = pool.replace(f" {UPPER}", "")
                right.axhline(value.iloc[0], ls=ls, color=color("oracle"), lw=1, label=f"{label} (UB)")
    for r, row in stats.iterrows():
        if np.isfinite(row.gap):
            right.annotate(
                f"{100 * row.gap:.0f}%", (r, row.mae), textcoords="offset points", xytext=(3, 4), fontsize=6.5
            )
    right.set_xlabel("refinement round")
    right.set_ylabel("test force MAE (meV/Å)")
    right.set_title("test MAE, % of hard-to-continuous gap recovered")
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.legend(loc="center right")
    return fig


def router_choice(results: Path):
    """The learned hard router's pool choice against the oracle's (counts), and the continuous
    router's s against the continuous oracle's, coloured by nearest-ion distance."""
    folder = results / "routers"
    confusion, choices = _read(folder / "confusion.csv"), _read(folder / "choices.csv")
    if confusion is None or choices is None:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.0, 3.5))
    matrix = confusion.pivot(index="oracle_s", columns="router_s", values="count").fillna(0)
    share = matrix.to_numpy() / max(matrix.to_numpy().sum(), 1)
    image = left.imshow(share, origin="lower", cmap="Blues")
    labels = [f"{s:.3g}" for s in matrix.columns]
    left.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
    left.set_yticks(range(len(labels)), [f"{s:.3g}" for s in matrix.index], fontsize=6)
    left.set_xlabel("learned hard router's s")
    left.set_ylabel("oracle's s (upper bound)")
    left.grid(False)
    agree = np.trace(matrix.to_numpy()) / max(matrix.to_numpy().sum(), 1)
    left.set_title(f"hard routing over the pool: {100 * agree:.0f}% agree")
    fig.colorbar(image, ax=left, shrink=0.8, label="share of samples")
    points = right.scatter(choices.oracle_continuous_s, choices.router_continuous_s, c=choices.nearest_ion_A,
                           s=4, alpha=0.6, lw=0, cmap="viridis")  # fmt: skip
    right.plot([0, 1], [0, 1], color="k", lw=0.8, ls=":")
    right.set_xlabel("continuous oracle s (upper bound)")
    right.set_ylabel("learned continuous router s")
    right.set_title("continuous s per sample")
    fig.colorbar(points, ax=right, shrink=0.8, label="nearest-ion distance (Å)")
    return fig


def method_table(results: Path):
    """The scale table as bars: test MAE of every method, overall and in close contact, and
    (hatched) the overall MAE of the same method on the null pair (two runs of one branch)."""
    table = _read(results / "oracle_table" / "table.csv")
    if table is None:
        return None
    # a plain read_csv turns the label "null" into NaN
    pairs = table["pair"].fillna("null") if "pair" in table else pd.Series("real", index=table.index)
    null = table[(pairs == "null").to_numpy()].set_index("method")
    table = table[(pairs == "real").to_numpy()].reset_index(drop=True)
    fitted = table["fitted_on"].fillna("") if "fitted_on" in table else pd.Series("x", index=table.index)
    # single branches have no null counterpart of the same name (the null pair's s=1 is another run)
    keys = (NULL_PREFIX + table.method).where(fitted != "")
    bars = [("overall_mae", "overall", table), ("close_contact_mae", CLOSE_CONTACT_LABEL, table)]
    if not null.empty:
        bars.append(("overall_mae", "overall, null pair", null.reindex(keys).reset_index(drop=True)))
    fig, ax = plt.subplots(figsize=(6.8, 0.4 * len(table) + 1.2))
    y = np.arange(len(table))
    height = 0.8 / len(bars)
    for k, (metric, label, rows) in enumerate(bars):
        std = rows.get(f"{metric}_std")
        style = (
            {"color": "0.8", "hatch": "///", "edgecolor": "0.4"} if "null" in label else {"color": f"C{k}"}
        )
        ax.barh(y + (k - (len(bars) - 1) / 2) * height, rows[metric], height,
                xerr=None if std is None else std.fillna(0), label=label, error_kw={"lw": 0.8},
                **style)  # fmt: skip
    names = [m.replace(" (upper bound)", " (UB)") for m in table.method]
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("test force MAE (meV/Å)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, not over them
    ax.set_title("scale layer on the test split (UB: reads test labels)")
    return fig


def generator_swap(results: Path):
    """MAE against global s for each generator (short -> long cutoff, short -> MuSE)."""
    folder = results / "generator_swap"
    curve = _read(folder / "global_s_curve.csv")
    if curve is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.2), sharex=True)
    for ax, metric, title in zip(
        axes, ("overall_mae", "close_contact_mae"), ("all atoms", CLOSE_CONTACT_LABEL), strict=True
    ):
        for i, (generator, rows) in enumerate(curve.groupby("generator", sort=False)):
            _band(
                ax,
                rows.s,
                rows[metric],
                rows[f"{metric}_std"],
                color=color(generator.split("->")[-1], i),
                label=generator,
            )
        ax.set_title(title)
        ax.set_xlabel("global scale s")
        ax.set_ylabel("test force MAE (meV/Å)")
    axes[0].legend()
    return fig


def read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def draw_refinement_history(history, ax=None, loss_ax: bool = True):
    """A :class:`~scalepool.scales.RefinementHistory`: pool members per round (marker area ~ usage share; inserted ones in
    colour) and, on a twin axis, the oracle-routed loss (upper bound).

    Returns the scale axis.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    for record in history.rounds:
        total = max(sum(record.usage), 1)
        for scale, used in zip(record.pool, record.usage, strict=True):
            new = scale in record.inserted
            ax.scatter(
                record.round,
                scale,
                s=10 + 200 * used / total,
                color="C3" if new else "C0",
                alpha=0.8,
                edgecolor="k",
                linewidth=0.3,
                zorder=3,
            )
        for scale in record.pruned:
            ax.scatter(record.round, scale, marker="x", color="0.5", zorder=2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("refinement round")
    ax.set_ylabel("scale s")
    ax.set_ylim(-0.05, 1.05)
    if loss_ax:
        twin = ax.twinx()
        factor, unit = (EV_TO_MEV, "meV/Å") if history.loss == "mae" else (EV_TO_MEV**2, "(meV/Å)$^2$")
        rounds = [r.round for r in history.rounds]
        twin.plot(
            rounds,
            [factor * v for v in history.losses],
            "-o",
            color="C2",
            ms=3,
            label="pool oracle (upper bound)",
        )
        names = {"hard_anchors": "hard {0,1} oracle", "continuous": "continuous oracle"}
        for i, (name, value) in enumerate(sorted(history.bounds.items())):
            twin.axhline(
                factor * value,
                ls="--",
                color=f"C{4 + i}",
                lw=0.8,
                label=f"{names.get(name, name)} (upper bound)",
            )
        twin.set_ylabel(f"{history.loss.upper()} on {history.split} ({unit})")
        twin.legend(loc="upper center", fontsize="x-small", framealpha=0.9)
    return ax
