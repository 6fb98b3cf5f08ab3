"""Molecules on graphene: binding curves of trained models against GFN2-xTB (``scalepool data graphene``).

The evaluation set is the energy profile written beside the training data
(``OUT.profile.npz``, :func:`scalepool.data.graphene_profile_path`): each
molecule rigid, flat and centred over a hexagon at heights d on a grid.  For
every run (``--run``; short/long/muse, any seeds) the model predicts the
energies of the profile frames and, on the same cell, of the isolated sheet and
molecules (:func:`scalepool.data.isolated_references`), so its binding curve
``E_b(d) = E(d) - E_sheet - E_molecule`` uses its own reference energies, as the
xTB curve uses xTB's (:func:`scalepool.data.binding_curves`).  Per molecule:

- ``profile_rmse_eV``: RMSE of E_b over the whole grid, eV;
- ``e_bind_error_eV``: model minus reference binding energy (spline minimum), eV;
- ``d_eq_error_A``: model minus reference equilibrium distance, Å;
- ``tail_rmse_eV`` and ``tail_max_abs_error_eV``: the same over d > ``tail_above``
  (default 6 Å) only, where dispersion and long-range terms decide;
- ``force_mae_meV_A``: force MAE (components) over the molecule's profile frames.

Outputs: ``curves.csv`` (model, molecule, height, binding energy, reference
included), ``errors.csv`` (per run and molecule), ``summary.csv`` (per branch and
molecule, mean and std over runs) and ``provenance.json``.  Figure:
``scalepool.plots`` (``graphene_profiles``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..data import FrameSet, binding_curves, graphene_profile_path, isolated_references
from ..md import ScalepoolCalculator
from ..provenance import ResultsDir
from ..train import predict_forces
from ..units import EV_TO_MEV
from ._common import mean_std
from ._folding_study import load_run, run_labels
from ._study import Option, Study

NAME = "graphene_profiles"
METRICS = ("profile_rmse_eV", "e_bind_error_eV", "d_eq_error_A", "tail_rmse_eV", "tail_max_abs_error_eV")


def curve_errors(reference: dict, model: dict, tail_above: float = 6.0) -> dict[str, float]:
    """Errors of one binding curve ``model`` against ``reference`` (entries of
    :func:`scalepool.data.binding_curves`: ``heights`` (K,) Å, ``binding`` (K,) eV, ``d_eq`` Å,
    ``e_bind`` eV), keys :data:`METRICS`; the tail is ``heights > tail_above`` (NaN when empty)."""
    heights = np.asarray(reference["heights"], dtype=np.float64)
    if not np.allclose(heights, model["heights"]):
        raise ValueError("the model and reference curves are sampled at different heights")
    diff = np.asarray(model["binding"], dtype=np.float64) - np.asarray(reference["binding"], dtype=np.float64)
    tail = heights > tail_above
    return {
        "profile_rmse_eV": float(np.sqrt(np.mean(diff**2))),
        "e_bind_error_eV": float(model["e_bind"] - reference["e_bind"]),
        "d_eq_error_A": float(model["d_eq"] - reference["d_eq"]),
        "tail_rmse_eV": float(np.sqrt(np.mean(diff[tail] ** 2))) if tail.any() else float("nan"),
        "tail_max_abs_error_eV": float(np.abs(diff[tail]).max()) if tail.any() else float("nan"),
    }


def model_curves(model, profile: FrameSet, device: str = "cpu") -> tuple[dict, np.ndarray]:
    """``(binding curves, forces)`` of ``model`` on the profile: its energies of the profile frames and
    of the isolated sheet and molecules; ``forces`` (atoms of all frames, 3) eV/Å, frames back to back."""
    dtype = next(model.parameters()).dtype
    pred = predict_forces(model, profile, None, device=device, dtype=dtype)
    calc = ScalepoolCalculator(model, float64=dtype.is_floating_point and dtype.itemsize == 8, device=device)
    own = {}
    for name, atoms in isolated_references(profile.meta).items():
        atoms = atoms.copy()
        atoms.calc = calc
        own[name] = float(atoms.get_potential_energy())
    forces = pred["forces"].reshape(-1, 3)
    return binding_curves(profile, energy=pred["energy"], reference_energies=own), forces


def run(inputs, out, *, seeds=(0,), device="cpu", parameters=None, tail_above=6.0) -> Path:
    """Compute the binding-curve benchmark (module docstring) into ``out``; ``inputs = (data, runs)``."""
    data, paths = Path(inputs[0]), [Path(p) for p in inputs[1]]
    profile_path = graphene_profile_path(data) if data.name.endswith(".npz") else data
    if not profile_path.exists():
        raise FileNotFoundError(
            f"energy profile not found: {profile_path} (made by 'scalepool data graphene' beside {data}; "
            "--no-profile skips it)"
        )
    profile = FrameSet.load(profile_path)
    results = ResultsDir(out, NAME, parameters or {}, seeds, [data, profile_path])
    reference = binding_curves(profile)
    molecules = np.asarray(profile.meta["frame_molecule"])
    atom_molecule = np.repeat(molecules, profile.atom_counts)
    ref_forces = profile.forces_flat.astype(np.float64)
    curves = [_curve_rows("reference", "reference", None, reference)]
    rows = []
    loaded = [load_run(p) for p in paths]
    labels = run_labels([b for b, *_ in loaded], [s for _, s, *_ in loaded])
    for label, (branch, seed, model, _config) in zip(labels, loaded, strict=True):
        predicted, forces = model_curves(model, profile, device)
        curves.append(_curve_rows(label, branch, seed, predicted))
        for name, ref in reference.items():
            mask = atom_molecule == name
            rows.append({
                "model": label, "branch": branch, "model_seed": seed, "molecule": name,
                **curve_errors(ref, predicted[name], tail_above),
                "force_mae_meV_A": float(np.abs(forces[mask] - ref_forces[mask]).mean() * EV_TO_MEV),
                "e_bind_eV": predicted[name]["e_bind"], "d_eq_A": predicted[name]["d_eq"],
                "e_bind_ref_eV": ref["e_bind"], "d_eq_ref_A": ref["d_eq"],
            })  # fmt: skip
    errors = pd.DataFrame(rows)
    results.csv("curves.csv", pd.concat(curves, ignore_index=True))
    results.csv("errors.csv", errors)
    results.csv("summary.csv", mean_std(errors, ["branch", "molecule"], [*METRICS, "force_mae_meV_A"]))
    results.finish(status="done", n_runs=len(paths), tail_above_A=tail_above)
    return results.path


def _curve_rows(label: str, branch: str, seed, curves: dict) -> pd.DataFrame:
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "model": label,
                    "branch": branch,
                    "model_seed": seed,
                    "molecule": name,
                    "height_A": c["heights"],
                    "binding_eV": c["binding"],
                }
            )  # fmt: skip
            for name, c in curves.items()
        ],
        ignore_index=True,
    )


STUDY = Study(
    name=NAME,
    description="Molecules on graphene: binding curves E_b(d) of each model (its own isolated energies) against "
    "GFN2-xTB on the energy profile: profile RMSE, binding-energy and equilibrium-distance errors, tail "
    "(d > 6 Å) errors, force MAE per molecule.",
    run=run,
    options={"tail_above": Option(float, 6.0, help="heights above this (Å) form the tail")},
    inputs="runs",
)
