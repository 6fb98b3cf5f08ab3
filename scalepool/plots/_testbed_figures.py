"""Figures of the testbed benchmarks, from their saved CSVs only: chignolin folding MD and
force errors per folding state (``results/folding``), binding curves on graphene
(``results/graphene_profiles``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ._style import color, plt

#: Observables of the folding MD (``md_samples.csv`` columns) and their axis labels.
FOLDING_OBSERVABLES = {
    "ca_rmsd": "C$\\alpha$ RMSD to hairpin (Å)",
    "radius_of_gyration": "C$\\alpha$ radius of gyration (Å)",
    "end_to_end": "end-to-end C$\\alpha$ distance (Å)",
}


def folding_md(results: Path):
    """Histograms of ``<results>/folding/md_samples.csv`` (see :func:`folding_md_figure`)."""
    path = results / "folding" / "md_samples.csv"
    if not path.exists():
        return None
    summary = results / "folding" / "md_summary.csv"
    return folding_md_figure(pd.read_csv(path), pd.read_csv(summary) if summary.exists() else None)


def folding_md_figure(samples: pd.DataFrame, summary: pd.DataFrame | None = None):
    """One row per MD start (folded, unfolded), one column per observable: the distribution of each
    model's samples (all seeds pooled) beside the amber14/GBn2 reference (black); with the
    trajectory ``summary`` (``md_summary.csv``) a model that blew up is labelled with its last step."""
    starts = list(dict.fromkeys(samples["start"]))
    models = ["reference", *[m for m in dict.fromkeys(samples["model"]) if m != "reference"]]
    fig, axes = plt.subplots(len(starts), 3, figsize=(10.5, 3.0 * len(starts)), squeeze=False)
    for row, start in enumerate(starts):
        here = samples[samples["start"] == start]
        for col, (name, axis_label) in enumerate(FOLDING_OBSERVABLES.items()):
            ax = axes[row, col]
            values = here[name].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            if values.size == 0:
                continue
            bins = np.linspace(values.min(), values.max() + 1e-9, 30)
            for i, model in enumerate(models):
                x = here.loc[here["model"] == model, name].to_numpy(dtype=float)
                x = x[np.isfinite(x)]
                if x.size == 0:
                    continue
                style = (
                    {"color": "black", "lw": 2.0}
                    if model == "reference"
                    else {"color": color(model.split("-")[0], i)}
                )
                legend = model
                if summary is not None:
                    done = summary[
                        (summary["model"] == model) & (summary["start"] == start) & summary["blown_up"]
                    ]
                    if len(done):
                        legend += f" (blew up, step {int(done['steps_done'].min())})"
                ax.hist(x, bins=bins, density=True, histtype="step", label=legend, **style)
            ax.set(xlabel=axis_label, ylabel="density" if col == 0 else None)
            ax.set_title(f"start: {start}", fontsize=9)
    for row in range(len(starts)):
        axes[row, -1].legend(frameon=False, fontsize=7)
    return fig


def folding_errors(results: Path):
    """Force MAE per folding state from ``<results>/folding/state_errors.csv`` (grouped bars)."""
    path = results / "folding" / "state_errors.csv"
    if not path.exists():
        return None
    table = pd.read_csv(path)
    states = list(dict.fromkeys(table["state"]))
    branches = list(dict.fromkeys(table["branch"]))
    stats = table.groupby(["branch", "state"], sort=False)["mae_meV_A"].agg(["mean", "std"]).fillna(0.0)
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    width = 0.8 / max(len(branches), 1)
    for i, branch in enumerate(branches):
        mean = [stats.loc[(branch, s), "mean"] if (branch, s) in stats.index else np.nan for s in states]
        std = [stats.loc[(branch, s), "std"] if (branch, s) in stats.index else 0.0 for s in states]
        x = np.arange(len(states)) + (i - (len(branches) - 1) / 2) * width
        ax.bar(x, mean, width, yerr=std, color=color(branch, i), label=branch)
    ax.set_xticks(np.arange(len(states)), states)
    ax.set(ylabel="force MAE (meV/Å)", title="chignolin: force error by folding state")
    ax.legend(frameon=False, fontsize=8)
    return fig


def graphene_profiles(results: Path):
    """Binding curves from ``<results>/graphene_profiles/curves.csv`` (see :func:`graphene_figure`)."""
    path = results / "graphene_profiles" / "curves.csv"
    return graphene_figure(pd.read_csv(path)) if path.exists() else None


def graphene_figure(curves: pd.DataFrame):
    """One panel per molecule: E_b(d) of the GFN2-xTB reference (black) and of every run."""
    molecules = list(dict.fromkeys(curves["molecule"]))
    fig, axes = plt.subplots(1, len(molecules), figsize=(3.6 * len(molecules), 3.3), squeeze=False)
    for ax, molecule in zip(axes[0], molecules, strict=True):
        here = curves[curves["molecule"] == molecule]
        for i, (model, curve) in enumerate(here.groupby("model", sort=False)):
            if model == "reference":
                style = {"color": "black", "lw": 2.0, "zorder": 3, "label": "GFN2-xTB"}
            else:
                style = {"color": color(str(curve["branch"].iloc[0]), i), "lw": 1.2, "label": model}
            ax.plot(curve["height_A"], curve["binding_eV"], **style)
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set(xlabel="height d (Å)", title=molecule)
    axes[0, 0].set_ylabel("binding energy $E_b(d)$ (eV)")
    axes[0, -1].legend(frameon=False, fontsize=8)
    return fig
