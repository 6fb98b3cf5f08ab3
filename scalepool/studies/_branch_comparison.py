"""Study (a): force errors of each branch, overall, for ions, in close contact, per species.

Outputs (meV/Å, MAE over force components unless stated):

- ``errors.csv``: one row per cache, split (val, test), model (each branch and
  the constant per-species baseline) and subset (rows of
  :func:`scalepool.metrics.force_errors`);
- ``summary.csv``: test split, mean and std over caches per model and subset;
- ``error_vs_distance.csv``: test split, per-atom MAE binned by nearest-ion
  distance (Å), per model, atoms of every cache pooled;
- ``parity.csv``: test split, a subsample of reference and predicted force
  components per branch (first cache), eV/Å;
- ``complementarity.json``: how often each anchor branch beats the other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..metrics import MAE, N_ATOMS, RMSE, constant_force_baseline, element_symbol, force_errors
from ..units import EV_TO_MEV
from ._common import SplitView, binned, mean_std, open_results, subsample
from ._study import Option, Study

NAME = "branch_comparison"
SPLITS = ("val", "test")
BASELINE = "constant baseline"


def _models(cache, view_index) -> dict[str, np.ndarray]:
    """Forces (F_split, N, 3) eV/Å of each branch and of the constant baseline."""
    train = cache.split == 0
    baseline = constant_force_baseline(cache.forces_ref, cache.numbers, train)[view_index]
    return {**{name: f[view_index] for name, f in cache.branches.items()}, BASELINE: baseline}


def run(preds, out, *, seeds=(0,), device="cpu", parameters=None, parity_points=3000) -> Path:
    caches, labels, results = open_results(
        preds, out, NAME, parameters or {"parity_points": parity_points}, seeds
    )
    rows, profiles, parity, comp = [], [], [], {}
    for label, cache in zip(labels, caches, strict=True):
        for split in SPLITS:
            index = cache.frames(split)
            if index.size == 0:
                continue
            view = SplitView.of(cache, split)
            ref = view.cache.forces_ref
            for model, forces in _models(cache, index).items():
                table = force_errors(forces, ref, cache.numbers, view.nearest)
                for subset, row in table.iterrows():
                    rows.append(
                        {
                            "cache": label,
                            "split": split,
                            "model": model,
                            "subset": subset,
                            "mae_meV_A": row[MAE],
                            "rmse_meV_A": row[RMSE],
                            "n_atoms": row[N_ATOMS],
                        }
                    )
                if split != "test":
                    continue
                atom_mae = EV_TO_MEV * np.abs(forces - ref).mean(axis=-1)  # (F, N)
                profile = binned(view.nearest, atom_mae)
                profile.insert(0, "model", model)
                profile.insert(0, "cache", label)
                profiles.append(profile)
            if split == "test":
                comp[label] = _complementarity(view, cache.anchors)
                if label == labels[0]:
                    parity.append(_parity(view, parity_points))
    errors = pd.DataFrame(rows)
    results.csv("errors.csv", errors)
    test = errors[errors.split == "test"]
    results.csv("summary.csv", mean_std(test, ["model", "subset"], ["mae_meV_A", "rmse_meV_A"]))
    profile = pd.concat(profiles, ignore_index=True)
    pooled = (
        profile.assign(weighted=profile["mean"] * profile["n"])
        .groupby(["model", "bin_lo", "bin_hi"], sort=False)
        .agg(center=("center", "mean"), n=("n", "sum"), weighted=("weighted", "sum"), mae_std=("mean", "std"))
        .reset_index()
    )
    pooled["mae_meV_A"] = pooled.pop("weighted") / pooled["n"]
    pooled["mae_std"] = pooled["mae_std"].fillna(0.0)
    results.csv("error_vs_distance.csv", pooled)
    results.csv("parity.csv", pd.concat(parity, ignore_index=True))
    results.json("complementarity.json", comp)
    results.finish(status="done", n_caches=len(caches))
    return results.path


def _complementarity(view: SplitView, anchors) -> dict:
    """Share of atoms (all, close contact) whose error is lower with anchor 0 than anchor 1,
    and the correlation of the two branches' per-atom errors."""
    ref = view.cache.forces_ref
    e0, e1 = (np.abs(view.cache.branches[a] - ref).mean(axis=-1) for a in anchors)
    better = e0 < e1
    return {
        "anchors": list(anchors),
        f"share_atoms_{anchors[0]}_better": float(better.mean()),
        f"share_close_contact_{anchors[0]}_better": float(better[view.close].mean())
        if view.close.any()
        else float("nan"),
        "error_correlation": float(np.corrcoef(e0.ravel(), e1.ravel())[0, 1]),
        "close_contact_atom_share": float(view.close.mean()),
    }


def _parity(view: SplitView, limit: int) -> pd.DataFrame:
    cache = view.cache
    n_frames, n_atoms = cache.forces_ref.shape[:2]
    pick = subsample(n_frames * n_atoms, limit, seed=0)
    frame, atom = np.divmod(pick, n_atoms)
    species = [element_symbol(z) for z in cache.numbers[atom]]
    tables = []
    for name, forces in cache.branches.items():
        tables.append(
            pd.DataFrame(
                {
                    "branch": name,
                    "species": np.repeat(species, 3),
                    "close_contact": np.repeat(view.close[frame, atom], 3),
                    "ref_eV_A": cache.forces_ref[frame, atom].ravel(),
                    "pred_eV_A": forces[frame, atom].ravel(),
                }
            )
        )
    return pd.concat(tables, ignore_index=True)


STUDY = Study(
    name=NAME,
    description="Per-branch force errors (meV/Å): overall, ions, close contact (nearest-ion distance "
    "< 6 Å), per species, beside a constant per-species baseline; error vs nearest-ion distance; "
    "parity data; branch complementarity.",
    run=run,
    options={"parity_points": Option(int, 3000, 1500, "atoms per branch in the parity data")},
)
