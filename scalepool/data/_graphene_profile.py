"""Binding curves from the graphene energy profile (``OUT.profile.npz``): binding energy,
equilibrium distance and tail per molecule, for the reference or for any predicted energies."""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms

from ._frameset import FrameSet

#: Heights above this (Å) form the tail of a binding curve.
TAIL_HEIGHT = 6.0


def equilibrium(heights: np.ndarray, binding: np.ndarray) -> tuple[float, float]:
    """``(d_eq Å, E_min eV)`` of a sampled curve: the minimum of its cubic spline between the
    neighbours of the lowest grid point (the grid point itself at either end of the grid).

    heights: (K,) Å, increasing; binding: (K,) eV.
    """
    from scipy.interpolate import CubicSpline

    heights, binding = np.asarray(heights, dtype=np.float64), np.asarray(binding, dtype=np.float64)
    k = int(np.argmin(binding))
    if k == 0 or k == len(binding) - 1 or len(binding) < 4:
        return float(heights[k]), float(binding[k])
    spline = CubicSpline(heights, binding)
    roots = spline.derivative().roots(extrapolate=False)
    roots = roots[(roots >= heights[k - 1]) & (roots <= heights[k + 1])]
    if len(roots) == 0:
        return float(heights[k]), float(binding[k])
    best = roots[np.argmin(spline(roots))]
    return float(best), float(spline(best))


def isolated_references(meta: dict[str, Any]) -> dict[str, Atoms]:
    """The isolated sheet (``"sheet"``) and molecules of a profile (same cell, periodic), rebuilt
    from ``meta["parameters"]``: a model computes its own reference energies on these."""
    from ._graphene import profile_tasks

    tasks = dict(profile_tasks(meta["parameters"]))
    out = {"sheet": tasks["profile_sheet"]}
    for name in meta["parameters"]["molecules"]:
        out[name] = tasks[f"profile_{name}_isolated"]
    return out


def binding_curves(
    profile: FrameSet, energy: np.ndarray | None = None, reference_energies: dict[str, float] | None = None
) -> dict[str, dict[str, Any]]:
    """Per molecule: ``heights`` (K,) Å, ``binding`` (K,) eV = E(d) - E_sheet - E_molecule,
    ``d_eq`` Å and ``e_bind`` eV (:func:`equilibrium`), ``tail_max_abs`` eV (largest
    |binding| above :data:`TAIL_HEIGHT`).

    ``energy`` (F,) eV: energies of the profile frames (default the stored reference);
    ``reference_energies``: ``{"sheet": eV, molecule: eV}`` (default the stored reference;
    pass a model's own on :func:`isolated_references` with a model's ``energy``).
    """
    meta = profile.meta
    if "frame_molecule" not in meta or "reference_energies" not in meta:
        raise ValueError("not a graphene energy profile: meta lacks 'frame_molecule' or 'reference_energies'")
    energy = profile.energy if energy is None else np.asarray(energy, dtype=np.float64)
    if energy is None or energy.shape != (profile.n_frames,):
        raise ValueError(
            f"energy must have shape ({profile.n_frames},), got {None if energy is None else energy.shape}"
        )
    refs = meta["reference_energies"] if reference_energies is None else reference_energies
    molecules = np.asarray(meta["frame_molecule"])
    heights = np.asarray(meta["frame_height"], dtype=np.float64)
    curves = {}
    for name in dict.fromkeys(meta["frame_molecule"]):
        idx = np.flatnonzero(molecules == name)
        idx = idx[np.argsort(heights[idx])]
        binding = energy[idx] - refs["sheet"] - refs[name]
        d_eq, e_bind = equilibrium(heights[idx], binding)
        tail = heights[idx] > TAIL_HEIGHT
        curves[name] = {
            "heights": heights[idx],
            "binding": binding,
            "d_eq": d_eq,
            "e_bind": e_bind,
            "tail_max_abs": float(np.abs(binding[tail]).max()) if tail.any() else float("nan"),
        }
    return curves
