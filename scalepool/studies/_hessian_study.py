"""Hessian benchmark: trained models against the OpenMM force field that labelled their data.

For one frame of a testbed dataset, the atoms of the closest Na-Cl pair and
the whole waters nearest its midpoint (``n_atoms``) are selected; the rest
of the periodic box stays frozen (partial Hessian, see
:mod:`scalepool.models._hessian`).

- Reference: central finite differences of the OpenMM forces of the very
  system that generated the dataset (same force field, PME settings, rigid
  or flexible water, read from the dataset's ``meta``), double-precision
  ``Reference`` platform by default.
- Models: exact second derivatives by double backprop, float64.
  OpenMM truncates the real-space Coulomb and Lennard-Jones terms at the
  cutoff without a switch, so a force jumps (by ~1e-4 eV/Å) when a pair
  crosses it; a displacement that crosses one puts ``jump / 2h`` into a few
  elements.  The raw finite-difference Hessian's asymmetry measures this
  (``reference.asymmetry_max_abs``, ``asymmetric_elements``; at h = 1e-3 Å
  about 16 of 7,569 elements, under 0.06 eV/Å^2); the Hessian is symmetrised.
- Rigid-water datasets are compared in the tangent space of the water
  constraints (6 rigid-body directions per water, 3 per ion), the only
  directions their labels determine; flexible-water datasets in full.

:func:`run` writes ``hessian.npz`` (Hessians, eigenvalues, wavenumbers,
selection), ``hessian.json`` (errors per block, spectrum distances, timings)
and ``provenance.json``; the figure (``scalepool.plots``, ``hessian``) is drawn
from the npz only.  It reads a dataset and trained runs, not a prediction
cache, so ``reproduce`` runs it as its own stage and ``studies/hessian.py`` is
its command line.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from .._files import write_npz
from ..data import FrameSet, openmm_force_function
from ..md import (
    MASSES,
    block_errors,
    constraint_tangent_basis,
    finite_difference_hessian,
    model_hessian,
    select_around_ion_pair,
    spectrum,
    symmetrize,
    water_molecules,
)
from ..models import AtomsBatch, load_model
from ..provenance import ResultsDir, is_complete
from ._study import Option, Study

NAME = "hessian"


def _load_run(path: Path) -> tuple[str, torch.nn.Module]:
    """``(label, model)`` from a run directory (``best.pt``, label = its branch) or a model file."""
    if path.is_dir():
        config = path / "config.json"
        label = json.loads(config.read_text()).get("branch", path.name) if config.exists() else path.name
        return str(label), load_model(path / "best.pt")
    return path.stem, load_model(path)


def compute(
    data: Path,
    runs: list[Path],
    frame: int = -1,
    n_atoms: int = 30,
    step: float = 1e-3,
    platform: str = "Reference",
    device: str = "cpu",
) -> tuple[dict, dict[str, np.ndarray]]:
    """Hessians of the runs and of the reference; returns ``(summary, arrays)``."""
    frames = FrameSet.load(data)
    if frames.cell is None:
        raise ValueError(f"{data} has no cell: the OpenMM reference needs the periodic testbed system")
    frame = frame % frames.n_frames
    positions, numbers = frames.positions[frame].astype(np.float64), frames.numbers
    atoms = select_around_ion_pair(positions, numbers, frames.cell[frame], n_atoms)
    rigid = bool(frames.meta.get("parameters", {}).get("rigid_water", True))
    sel_numbers = numbers[atoms]
    masses = np.array([MASSES[int(z)] for z in sel_numbers])
    local = {int(a): k for k, a in enumerate(atoms)}
    waters = np.array([[local[int(i)] for i in w] for w in water_molecules(numbers) if int(w[0]) in local])
    waters = waters.reshape(-1, 3)
    molecule = np.arange(len(atoms))
    for w, mol in enumerate(waters):
        molecule[mol] = len(atoms) + w
    sel_pos = positions[atoms]
    basis = constraint_tangent_basis(sel_pos, waters) if rigid else None
    mw_basis = constraint_tangent_basis(sel_pos, waters, masses) if rigid else None
    project = (lambda h: basis @ (basis.T @ h @ basis) @ basis.T) if rigid else (lambda h: h)

    t0 = time.perf_counter()
    raw = finite_difference_hessian(openmm_force_function(frames, frame, platform=platform), positions, atoms, step, False)
    timings = {"reference_s": time.perf_counter() - t0}
    asymmetry = {"reference": float(np.abs(raw - raw.T).max())}
    jumps = int((np.abs(raw - raw.T) > 1e-3).sum())  # elements hit by a cutoff crossing (module docstring)
    reference = symmetrize(raw)
    hessians = {"reference": reference}
    batch = AtomsBatch.from_frameset(frames, [frame], device=device, dtype=torch.float64)
    for path in runs:
        label, model = _load_run(path)
        model = model.to(device=device, dtype=torch.float64).eval()
        t0 = time.perf_counter()
        raw = model_hessian(model, batch, atoms, symmetric=False)
        timings[f"{label}_s"] = time.perf_counter() - t0
        asymmetry[label] = float(np.abs(raw - raw.T).max())
        hessians[label] = symmetrize(raw)

    arrays = {"atoms": atoms, "numbers": sel_numbers, "positions": sel_pos, "masses": masses}
    summary = {
        "frame": frame,
        "n_selected": len(atoms),
        "selection": {"n_water": len(waters), "n_ion": int(len(atoms) - 3 * len(waters))},
        "rigid_water": rigid,
        "compared_in": "water-constraint tangent space" if rigid else "full Cartesian space",
        "n_modes": int(basis.shape[1] if rigid else 3 * len(atoms)),
        "fd_step_angstrom": step,
        "openmm_platform": platform,
        "timings": timings,
        "models": {},
        "units": {"hessian": "eV/Å^2", "wavenumber": "cm^-1 (negative = imaginary)"},
    }
    ref_spec = spectrum(reference, basis)
    ref_freq = spectrum(reference, mw_basis, masses)["wavenumbers"]
    for label, hessian in hessians.items():
        spec = spectrum(hessian, basis)
        freq = spectrum(hessian, mw_basis, masses)["wavenumbers"]
        arrays[f"hessian_{label}"] = hessian
        arrays[f"eigenvalues_{label}"] = spec["eigenvalues"]
        arrays[f"wavenumbers_{label}"] = freq
        if label == "reference":
            continue
        summary["models"][label] = {
            "blocks": block_errors(project(hessian), project(reference), sel_numbers, molecule),
            "eigenvalue_mae": float(np.mean(np.abs(spec["eigenvalues"] - ref_spec["eigenvalues"]))),
            "wavenumber_mae": float(np.mean(np.abs(freq - ref_freq))),
            "n_negative": int((spec["eigenvalues"] < 0).sum()),
            "asymmetry_max_abs": asymmetry[label],
        }
    summary["reference"] = {
        "asymmetry_max_abs": asymmetry["reference"],  # finite-difference noise, eV/Å^2
        "asymmetric_elements": jumps,  # |H - H^T| > 1e-3 eV/Å^2
        "n_negative": int((ref_spec["eigenvalues"] < 0).sum()),
        "eigenvalue_range": [float(ref_spec["eigenvalues"].min()), float(ref_spec["eigenvalues"].max())],
        "wavenumber_range": [float(ref_freq.min()), float(ref_freq.max())],
    }
    return summary, arrays


def parameters(runs, frame=-1, n_atoms=30, step=1e-3, platform="Reference", device="cpu") -> dict:
    """The settings recorded in the provenance (and compared to skip a finished run)."""
    return {
        "run": [str(p) for p in runs], "frame": int(frame), "n_atoms": int(n_atoms), "step": float(step),
        "platform": platform, "device": str(device),
    }  # fmt: skip


def run(
    data, runs, out, frame=-1, n_atoms=30, step=1e-3, platform="Reference", device="cpu"
) -> tuple[Path, dict]:
    """Compute and save the Hessian benchmark into ``out``; returns ``(out, summary)``."""
    data, runs = Path(data), [Path(p) for p in runs]
    results = ResultsDir(out, NAME, parameters(runs, frame, n_atoms, step, platform, device), inputs=[data])
    summary, arrays = compute(data, runs, frame, n_atoms, step, platform, device)
    write_npz(results.file("hessian.npz"), arrays)
    results.json("hessian.json", summary)
    results.finish(status="complete")
    return results.path, summary


def complete(out, data, runs, **options) -> bool:
    """Whether ``out`` holds this benchmark for these inputs and settings."""
    return is_complete(out, parameters(runs, **options), [data])


def summary_lines(summary: dict) -> list[str]:
    """One line per model: eigenvalue and wavenumber MAE, block RMSEs."""
    lines = []
    for label, info in summary["models"].items():
        blocks = ", ".join(f"{k} {v['rmse']:.3g}" for k, v in info["blocks"].items())
        lines.append(
            f"{label}: eigenvalue MAE {info['eigenvalue_mae']:.3g} eV/Å^2, "
            f"wavenumber MAE {info['wavenumber_mae']:.0f} cm^-1; block RMSE (eV/Å^2): {blocks}"
        )
    return lines


def _run_study(inputs, out, *, seeds=(), device="cpu", parameters=None, **options) -> Path:
    """:class:`Study` entry point: ``inputs = (data, runs)``; seeds are unused (no randomness)."""
    data, runs = inputs
    return run(data, runs, out, device=device, **options)[0]


STUDY = Study(
    name=NAME,
    description="Hessians of trained models against OpenMM finite differences around the closest ion pair: "
    "eigenvalue and wavenumber spectra, block RMSE (ion-ion, ion-water, water-water).",
    run=_run_study,
    options={
        "frame": Option(int, -1, help="frame index (default: the last, a test frame)"),
        "n_atoms": Option(int, 30, help="selection size: ion pair + whole waters"),
        "step": Option(float, 1e-3, help="finite-difference step, Å"),
        "platform": Option(str, "Reference", help="OpenMM platform", choices=("Reference", "CPU")),
    },
    inputs="runs",
)
