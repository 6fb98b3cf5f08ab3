"""Molecules above a periodic graphene sheet, with GFN2-xTB (tblite) energies and forces.

The MuSE paper's molecule-surface testbed: benzene, water and pyridine (a polar
aromatic) above a periodic graphene sheet, sampled along the approach
coordinate from contact to the dispersion tail.

Sampling (:func:`generate_graphene`)
------------------------------------
Frame ``i`` is drawn from ``numpy.random.default_rng([seed, i])`` alone, so any
frame can be regenerated (and a killed run resumed) without the others:

* molecule ``molecules[i % len(molecules)]`` (gas-phase MP2 geometry from
  ``ase.collections.g2``), every molecule equally often;
* a uniformly random orientation (Haar measure on SO(3));
* a uniformly random lateral offset of its centroid in the sheet's (a, b) cell;
* a height ``d`` uniform in ``[height_min, height_max]`` (default 2.5 to 10 Å),
  ``d`` being the distance from the sheet plane to the molecule's *lowest* atom;
* thermal displacements: independent Gaussian displacements of every atom,
  ``displacement`` Å (default 0.05 Å) per Cartesian component.

``atoms.info`` holds ``molecule``, ``height`` (Å, measured after the
displacements: lowest molecular atom minus the mean sheet height) and ``frame``.

Energy profile (the evaluation set)
-----------------------------------
For each molecule, rigid and undisplaced, its molecular plane parallel to the
sheet (smallest principal axis of inertia along z) and its centroid above the
centre of a carbon hexagon, at heights ``height_min, height_min + profile_step,
..., height_max`` (default step 0.1 Å).  Stored as its own file
(``OUT.profile.*``) with the isolated sheet and isolated molecule energies
(same cell, same settings) in its meta, so that the binding curve is
``E(d) - E_sheet - E_molecule``.

Reference method
----------------
GFN2-xTB (self-consistent D4 dispersion included) from tblite
(``tblite.interface.Calculator``), neutral and closed shell, Fermi smearing at
``electronic_temperature`` (300 K), SCF ``accuracy`` 1.0, periodic in 3D.
tblite samples the Brillouin zone at Γ only: a 5x5 supercell (default) or 4x4
does not fold graphene's Dirac point onto Γ, so the sheet has a finite-size
gap; the testbed is a fixed reference, not converged graphene physics.
Hartree and Bohr are converted with ``ase.units`` (the constants tblite's own
ASE calculator uses).  :func:`graphene_reference` recomputes any stored frame.

Files
-----
Frames are ``ase.Atoms`` with a ``SinglePointCalculator`` (energy eV, forces
eV/Å).  :func:`save_graphene` writes them as a ragged :class:`FrameSet`
(``FrameSet.from_atoms``) to ``OUT.npz`` and the profile to
``OUT.profile.npz``; meta holds ``frame_molecule`` and ``frame_height`` (Å) per
frame.  Checkpoints (``checkpoint=FOLDER``):
every computed frame and profile point is committed to the folder as it is
done; a rerun with the same parameters computes only what is missing.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import inspect
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.units import Bohr, Hartree, kB

from .._files import write_json, write_npz
from ._frameset import FrameSet
from ._graphene_structures import (
    GRAPHENE_A,
    MOLECULES,
    flat_rotation,
    gas_molecule,
    graphene_sheet,
    hollow_site,
    place_molecule,
    random_rotation,
)
from ._nacl_checkpoint import PROGRESS, NaclCheckpoint

GENERATOR = "scalepool.data.graphene"
#: Settings that define the reference (stored in meta, read back by graphene_reference).
XTB_DEFAULTS = {"method": "GFN2-xTB", "accuracy": 1.0, "electronic_temperature": 300.0, "max_iterations": 250}
#: Arguments that steer a run but not its data.
RUN_OPTIONS = ("progress", "checkpoint", "restart", "out")

__all__ = [
    "generate_graphene",
    "graphene_reference",
    "graphene_profile_path",
    "save_graphene",
    "xtb_single_point",
]


# ------------------------------------------------------------------ reference
def xtb_single_point(
    atoms: Atoms,
    *,
    method: str = XTB_DEFAULTS["method"],
    accuracy: float = XTB_DEFAULTS["accuracy"],
    electronic_temperature: float = XTB_DEFAULTS["electronic_temperature"],
    max_iterations: int = XTB_DEFAULTS["max_iterations"],
) -> tuple[float, np.ndarray]:
    """tblite energy (eV) and forces (N, 3) eV/Å of ``atoms`` (periodic where ``atoms.pbc``).

    ``electronic_temperature`` in K.  Raises RuntimeError when the SCF fails.
    """
    from tblite.interface import Calculator

    pbc = np.asarray(atoms.pbc, dtype=bool)
    calc = Calculator(
        method,
        atoms.numbers,
        atoms.positions / Bohr,
        lattice=atoms.cell.array / Bohr if pbc.any() else None,
        periodic=pbc if pbc.any() else None,
    )
    calc.set("verbosity", 0)
    calc.set("accuracy", float(accuracy))
    calc.set("temperature", float(electronic_temperature) * kB / Hartree)  # K -> Hartree
    calc.set("max-iter", int(max_iterations))
    result = calc.singlepoint()
    energy = float(result.get("energy")) * Hartree
    forces = -np.asarray(result.get("gradient"), dtype=np.float64) * (Hartree / Bohr)
    return energy, forces


# ------------------------------------------------------------------ sampling
def sample_frame(p: dict[str, Any], index: int) -> Atoms:
    """Frame ``index`` of a run with parameters ``p`` (no energies yet); see module docstring."""
    rng = np.random.default_rng([int(p["seed"]), int(index)])
    name = p["molecules"][index % len(p["molecules"])]
    sheet = graphene_sheet(p["sheet_size"], p["cell_height"])
    xy = rng.uniform(size=2) @ sheet.cell.array[:2, :2]
    height = rng.uniform(p["height_min"], p["height_max"])
    atoms = place_molecule(sheet, gas_molecule(name), random_rotation(rng), xy, height)
    atoms.positions += rng.normal(scale=p["displacement"], size=atoms.positions.shape)
    n_sheet = len(sheet)
    measured = atoms.positions[n_sheet:, 2].min() - atoms.positions[:n_sheet, 2].mean()
    atoms.info.update(molecule=name, height=float(measured), frame=int(index))
    return atoms


def profile_heights(p: dict[str, Any]) -> np.ndarray:
    """(K,) Å: the profile grid from ``height_min`` to ``height_max`` (inclusive) in ``profile_step``."""
    n = int(np.floor((p["height_max"] - p["height_min"]) / p["profile_step"] + 1e-9)) + 1
    return p["height_min"] + p["profile_step"] * np.arange(n)


def profile_tasks(p: dict[str, Any]) -> list[tuple[str, Atoms]]:
    """``(task name, atoms)`` of the energy profile and the isolated references."""
    sheet = graphene_sheet(p["sheet_size"], p["cell_height"])
    xy = hollow_site(p["sheet_size"])
    tasks = [("profile_sheet", sheet)]
    for name in p["molecules"]:
        mol = gas_molecule(name)
        rotation = flat_rotation(mol)
        alone = place_molecule(sheet, mol, rotation, xy, p["height_max"])[len(sheet) :]
        alone.set_cell(sheet.cell)
        alone.pbc = True
        tasks.append((f"profile_{name}_isolated", alone))
        for k, height in enumerate(profile_heights(p)):
            atoms = place_molecule(sheet, mol, rotation, xy, float(height))
            atoms.info.update(molecule=name, height=float(height), point=k)
            tasks.append((f"profile_{name}_{k:04d}", atoms))
    return tasks


def _validate(p: dict[str, Any]) -> None:
    if not isinstance(p["n_frames"], (int, np.integer)) or p["n_frames"] < 1:
        raise ValueError(f"n_frames must be an integer >= 1, got {p['n_frames']!r}")
    unknown = [m for m in p["molecules"] if m not in MOLECULES]
    if unknown or not p["molecules"]:
        raise ValueError(f"molecules must be a non-empty list from {sorted(MOLECULES)}, got {p['molecules']}")
    if not isinstance(p["sheet_size"], (int, np.integer)) or p["sheet_size"] < 2:
        raise ValueError(f"sheet_size must be an integer >= 2, got {p['sheet_size']!r}")
    if not 0 < p["height_min"] < p["height_max"]:
        raise ValueError(f"need 0 < height_min < height_max (Å), got {p['height_min']}, {p['height_max']}")
    if p["cell_height"] < p["height_max"] + 15.0:
        raise ValueError(
            f"cell_height ({p['cell_height']} Å) must exceed height_max + 15 Å ({p['height_max'] + 15.0} Å): "
            "room for the molecule and 8 Å of vacuum above it"
        )
    if not p["displacement"] >= 0:
        raise ValueError(f"displacement must be >= 0 Å, got {p['displacement']}")
    if p["profile_step"] is not None and not p["profile_step"] > 0:
        raise ValueError(f"profile_step must be > 0 Å or None (no profile), got {p['profile_step']}")


class _TaskCheckpoint(NaclCheckpoint):
    """A checkpoint folder of independent tasks: one ``task_<name>.npz`` per finished task,
    ``progress.json`` lists them (the commit point).  Locking and the parameter check are
    :class:`NaclCheckpoint`'s."""

    def load_done(self) -> dict[str, dict[str, np.ndarray]]:
        path = self.folder / PROGRESS
        done = json.loads(path.read_text())["done"] if path.exists() else []
        keep = {"parameters.json", PROGRESS, "lock", *(f"task_{n}.npz" for n in done)}
        for entry in self.folder.iterdir():
            if entry.name not in keep and entry.is_file():
                entry.unlink()
        results = {}
        for name in done:
            with np.load(self.folder / f"task_{name}.npz", allow_pickle=False) as data:
                results[name] = {key: data[key] for key in data.files}
        return results

    def commit(self, name: str, arrays: dict[str, np.ndarray], done: list[str]) -> None:
        write_npz(self.folder / f"task_{name}.npz", arrays)
        write_json(self.folder / PROGRESS, {"done": done})


def _attach(atoms: Atoms, energy: float, forces: np.ndarray) -> Atoms:
    atoms.calc = SinglePointCalculator(atoms, energy=float(energy), forces=np.asarray(forces))
    return atoms


def generate_graphene(
    n_frames: int = 200,
    seed: int = 0,
    molecules: tuple[str, ...] = tuple(MOLECULES),
    sheet_size: int = 5,
    height_min: float = 2.5,
    height_max: float = 10.0,
    displacement: float = 0.05,
    cell_height: float = 30.0,
    profile_step: float | None = 0.1,
    method: str = XTB_DEFAULTS["method"],
    accuracy: float = XTB_DEFAULTS["accuracy"],
    electronic_temperature: float = XTB_DEFAULTS["electronic_temperature"],
    max_iterations: int = XTB_DEFAULTS["max_iterations"],
    progress: bool = True,
    *,
    checkpoint: str | os.PathLike | None = None,
    restart: bool = False,
    out: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Sample molecule-on-graphene frames and label them with tblite (module docstring).

    Parameters
    ----------
    n_frames : sampled frames; seed : seeds every frame (``default_rng([seed, i])``).
    molecules : names from :data:`MOLECULES`; sheet_size : graphene supercell n x n.
    height_min, height_max : range of the lowest-atom height above the sheet (Å).
    displacement : Gaussian thermal displacement per component (Å).
    cell_height : cell length along z (Å). profile_step : profile grid step (Å), None: no profile.
    method, accuracy, electronic_temperature (K), max_iterations : tblite settings.
    checkpoint : resumable folder (deleted on success); restart : discard it first.
    out : also save there (:func:`save_graphene`) before the checkpoint is removed.

    Returns ``{"frames": [Atoms], "profile": [Atoms], "meta": dict, "profile_meta": dict}``;
    every Atoms has a SinglePointCalculator with energy (eV) and forces (N, 3) eV/Å.
    """
    arguments = locals()
    p = {name: arguments[name] for name in inspect.signature(generate_graphene).parameters}
    p["molecules"] = list(p["molecules"])
    for name in ("checkpoint", "out"):
        p[name] = None if p[name] is None else str(p[name])
    _validate(p)
    if out is not None:
        graphene_profile_path(out)  # refuses a name without .npz before any work
    xtb = {key: p[key] for key in XTB_DEFAULTS}
    versions = {"tblite": importlib.metadata.version("tblite"), "ase": importlib.metadata.version("ase")}
    identity = {**{k: v for k, v in p.items() if k not in RUN_OPTIONS}, "versions": versions}
    store = None if checkpoint is None else _TaskCheckpoint(checkpoint, identity, restart=restart)
    tasks = [(f"frame_{i:06d}", sample_frame(p, i)) for i in range(n_frames)]
    if profile_step is not None:
        tasks += profile_tasks(p)
    start = time.perf_counter()
    with store or contextlib.nullcontext():
        done = store.load_done() if store is not None else {}
        names = list(done)
        seconds: dict[str, float] = {}
        from tqdm.auto import tqdm

        for name, atoms in tqdm(tasks, desc="xtb single points", unit="calc", disable=not progress):
            if name not in done:
                t0 = time.perf_counter()
                energy, forces = xtb_single_point(atoms, **xtb)
                seconds[name] = time.perf_counter() - t0
                done[name] = {"energy": np.float64(energy), "forces": forces}
                names.append(name)
                if store is not None:
                    store.commit(name, done[name], names)
            _attach(atoms, done[name]["energy"], done[name]["forces"])
        frames = [atoms for name, atoms in tasks if name.startswith("frame_")]
        frame_s = [s for n, s in seconds.items() if n.startswith("frame_")]
        meta = {
            "generator": GENERATOR,
            "parameters": p,
            "seed": seed,
            "xtb": xtb,
            "reference": f"{method} (tblite {versions['tblite']}), D4 dispersion self-consistent, neutral, "
            "closed shell, Γ-point only, Fermi smearing at electronic_temperature",
            "versions": versions,
            "unit_conversion": {"hartree_ev": Hartree, "bohr_angstrom": Bohr},
            "molecule_geometries": "ase.collections.g2 (MP2), "
            + ", ".join(f"{m}={MOLECULES[m]}" for m in p["molecules"]),
            "graphene_a_angstrom": GRAPHENE_A,
            "n_sheet_atoms": 2 * sheet_size**2,
            "periodic": True,
            "pbc": [True, True, True],
            "height": "lowest molecular atom minus mean sheet z (Å), after displacements",
            "timings": {
                "wall_s": time.perf_counter() - start,
                "s_per_frame": float(np.mean(frame_s)) if frame_s else None,
                "frames_computed_this_run": len(frame_s),
            },
            "units": {"positions": "Å", "forces": "eV/Å", "energy": "eV", "cell": "Å"},
        }
        result = {"frames": frames, "meta": meta, "profile": [], "profile_meta": None}
        if profile_step is not None:
            by_name = dict(tasks)
            result["profile"] = [a for n, a in tasks if n.startswith("profile_") and "point" in a.info]
            isolated = {m: by_name[f"profile_{m}_isolated"].get_potential_energy() for m in p["molecules"]}
            result["profile_meta"] = {
                **meta,
                "evaluation_set": "energy profile E(d): rigid molecule, plane parallel to the sheet, "
                "centroid above a hexagon centre; no displacements",
                "hollow_site_xy": hollow_site(sheet_size).tolist(),
                "heights": profile_heights(p).tolist(),
                "reference_energies": {"sheet": by_name["profile_sheet"].get_potential_energy(), **isolated},
            }
        if out is not None:
            save_graphene(result, out)
        if store is not None:
            store.remove()
    return result


# ------------------------------------------------------------------ files
def graphene_profile_path(out: str | os.PathLike) -> Path:
    """``OUT.profile.npz``: where :func:`save_graphene` puts the energy profile of ``OUT.npz``."""
    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"dataset files end in .npz, got {out}")
    return out.with_name(out.stem + ".profile.npz")


def _frameset(images: list[Atoms], meta: dict[str, Any], source: Path) -> FrameSet:
    """A (ragged) FrameSet of ``images`` with ``meta`` plus the per-frame labels."""
    frames = FrameSet.from_atoms(images, source=source)
    frames.meta = {
        **meta,
        "frame_molecule": [atoms.info["molecule"] for atoms in images],
        "frame_height": [float(atoms.info["height"]) for atoms in images],
    }
    return frames


def save_graphene(result: dict[str, Any], out: str | os.PathLike) -> list[Path]:
    """Write the frames to ``OUT.npz`` and the profile to ``OUT.profile.npz`` (ragged FrameSets,
    per-frame ``frame_molecule`` and ``frame_height`` (Å) in meta); returns the paths written."""
    out, profile = Path(out), graphene_profile_path(out)
    written = [_frameset(result["frames"], result["meta"], out).save(out)]
    if result.get("profile"):
        written.append(_frameset(result["profile"], result["profile_meta"], profile).save(profile))
    return written


def frame_atoms(frames: FrameSet, index: int) -> Atoms:
    """Frame ``index`` of a graphene dataset as ``ase.Atoms`` (positions Å, cell, pbc, numbers)."""
    one = frames.frame(index)
    pbc = frames.pbc[index]
    return Atoms(one.numbers, positions=one.positions[0], cell=frames.cells[index], pbc=pbc)


def graphene_reference(frames: FrameSet | Atoms, index: int | None = None) -> dict[str, Any]:
    """Recompute a stored frame with tblite: ``{"energy": eV, "forces": (N, 3) eV/Å}``, float64.

    ``frames``: a graphene dataset (:func:`generate_graphene`, ``FrameSet.load``) and the
    frame ``index``; its meta's ``xtb`` settings are used.  Or a bare ``ase.Atoms`` (testbed
    default settings).
    """
    if isinstance(frames, Atoms):
        atoms, meta = frames, {}
    else:
        if index is None:
            raise TypeError("graphene_reference(frames, index): the frame index is missing")
        atoms, meta = frame_atoms(frames, index), frames.meta
    settings = {**XTB_DEFAULTS, **(meta.get("xtb") or {})}
    energy, forces = xtb_single_point(atoms, **{key: settings[key] for key in XTB_DEFAULTS})
    return {"energy": energy, "forces": forces}
