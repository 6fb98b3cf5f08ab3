"""Figures of the force branches: parity and error against the nearest-ion distance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ._style import CLOSE_CONTACT_LABEL, color, plt


def parity(results: Path):
    """Predicted against reference force components per branch (test split, a subsample),
    close-contact atoms highlighted."""
    path = results / "branch_comparison" / "parity.csv"
    if not path.exists():
        return None
    data = pd.read_csv(path)
    branches = list(dict.fromkeys(data.branch))
    # the title gives the whole test split's MAE (the scatter shows a subsample)
    summary = results / "branch_comparison" / "summary.csv"
    test_mae = {}
    if summary.exists():
        table = pd.read_csv(summary)
        test_mae = dict(table.loc[table.subset == "overall", ["model", "mae_meV_A"]].to_numpy())
    fig, axes = plt.subplots(1, len(branches), figsize=(3.1 * len(branches), 3.1), squeeze=False)
    limit = float(np.quantile(np.abs(data[["ref_eV_A", "pred_eV_A"]].to_numpy()), 0.995)) * 1.05
    for i, (ax, branch) in enumerate(zip(axes[0], branches, strict=True)):
        rows = data[data.branch == branch]
        close = rows.close_contact.astype(bool)
        ax.scatter(
            rows.ref_eV_A[~close],
            rows.pred_eV_A[~close],
            s=2,
            alpha=0.3,
            lw=0,
            color=color(branch, i),
            label="other atoms",
        )
        ax.scatter(
            rows.ref_eV_A[close],
            rows.pred_eV_A[close],
            s=2,
            alpha=0.5,
            lw=0,
            color="k",
            label=CLOSE_CONTACT_LABEL,
        )
        ax.plot([-limit, limit], [-limit, limit], color="0.3", lw=0.7, ls=":")
        ax.set_title(f"{branch}: test MAE {test_mae.get(branch, float('nan')):.1f} meV/Å")
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        ax.set_aspect("equal")
        ax.set_xlabel("reference force (eV/Å)")
        ax.set_ylabel("predicted force (eV/Å)")
    axes[0][0].legend(loc="upper left", markerscale=3)
    return fig


def error_distance(results: Path):
    """Per-atom force MAE of each branch (and the constant baseline) against the nearest-ion
    distance, test split; the close-contact region is shaded."""
    path = results / "branch_comparison" / "error_vs_distance.csv"
    if not path.exists():
        return None
    data = pd.read_csv(path)
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(5.0, 4.2), sharex=True, height_ratios=(3, 1))
    for i, (model, rows) in enumerate(data.groupby("model", sort=False)):
        baseline = model == "constant baseline"
        style = {"ls": "--" if baseline else "-", "color": color("baseline" if baseline else model, i)}
        ax.plot(rows.center, rows.mae_meV_A, marker="o", label=model, **style)
        if (rows.mae_std > 0).any():
            ax.fill_between(rows.center, rows.mae_meV_A - rows.mae_std, rows.mae_meV_A + rows.mae_std,
                            color=style["color"], alpha=0.15, lw=0)  # fmt: skip
    first = data[data.model == data.model.iloc[0]]
    counts.bar(
        first.center,
        first.n,
        width=0.45 * np.diff(first.center).min() if len(first) > 1 else 0.4,
        color="0.6",
    )
    for axis in (ax, counts):
        axis.axvspan(min(data.bin_lo.min(), 0), 6.0, color="0.85", alpha=0.5, lw=0)
    ax.set_ylabel("force MAE (meV/Å)")
    ax.set_title(f"error against nearest-ion distance (shaded: {CLOSE_CONTACT_LABEL})")
    ax.legend(loc="best")
    counts.set_ylabel("atoms")
    counts.set_xlabel("nearest-ion distance (Å)")
    counts.set_xlim(data.center.min() - 0.5, data.center.max() + 0.5)
    return fig
