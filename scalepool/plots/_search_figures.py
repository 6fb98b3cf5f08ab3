"""Figures of the optuna searches, from the exported ``*trials.csv`` and ``*importances.csv``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.ticker import MaxNLocator

from ._style import plt

#: Results folders of optuna searches: the search study, and ``scalepool search models --out``
#: pointed at ``<results>/search_models``.
FOLDERS = ("search", "search_models")


def _studies(results: Path, suffix: str) -> dict[str, Path]:
    found = {}
    for folder in FOLDERS:
        for path in sorted((results / folder).glob(f"*{suffix}")):
            name = path.name.removesuffix(suffix).rstrip("_")
            found[name if folder == "search" else f"models {name}".strip()] = path
    return found


def optuna_history(results: Path):
    """Objective of every finished trial and the running best, one panel per search."""
    files = _studies(results, "trials.csv")
    if not files:
        return None
    fig, axes = plt.subplots(1, len(files), figsize=(3.2 * len(files), 3.0), squeeze=False)
    for ax, (name, path) in zip(axes[0], files.items(), strict=True):
        trials = pd.read_csv(path)
        done = trials[trials.state == "COMPLETE"].sort_values("number")
        pruned = trials[trials.state == "PRUNED"]
        ax.scatter(done.number, done.value, s=6, alpha=0.6, lw=0, label="trial")
        ax.step(done.number, done.value.cummin(), where="post", color="C1", label="best so far")
        if len(done) and done.value.max() > 5 * max(done.value.min(), 1e-12):
            ax.set_yscale("log")
        title = name.replace("_", " ")
        ax.set_title(f"{title} ({len(pruned)} pruned)" if len(pruned) else title)
        ax.set_xlabel("trial")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("objective (meV/Å)")
    axes[0][0].legend(loc="upper right")
    return fig


def optuna_importance(results: Path):
    """Importance of each searched parameter (evaluator named in the CSV), one panel per search."""
    files = {k: p for k, p in _studies(results, "importances.csv").items() if len(pd.read_csv(p))}
    if not files:
        return None
    fig, axes = plt.subplots(1, len(files), figsize=(3.2 * len(files), 2.8), squeeze=False)
    for ax, (name, path) in zip(axes[0], files.items(), strict=True):
        table = pd.read_csv(path).sort_values("importance")
        ax.barh(table.param, table.importance, color="C0")
        ax.set_title(name.replace("_", " "))
        evaluator = table["evaluator"].iloc[0] if "evaluator" in table else "optuna"
        ax.set_xlabel(f"importance ({evaluator})")
        ax.set_xlim(0, 1)
    return fig
