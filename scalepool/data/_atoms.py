"""ASE ``Atoms`` to dataset arrays: label look-up by key (energy, forces, stress), cells and pbc.

Shared by :meth:`FrameSet.from_atoms` and the readers of :mod:`._io_ase`.  Units are
ASE's: Å, eV, eV/Å and eV/Å^3 (stress with ASE's sign, (1/V) dE/d strain).
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from . import _keys as K
from ._sanity import DatasetError

# Names inside extxyz files (the MLFF convention; ASE moves plain ``energy`` and
# ``forces`` into a SinglePointCalculator).
REF_FORCES = "REF_forces"  # per-atom array (N, 3), eV/Å
REF_ENERGY = "REF_energy"  # info scalar, eV
META_INFO = "scalepool_meta_b64"  # info string in frame 0: urlsafe base64 of the meta JSON


def _calc_result(atoms: Atoms, key: str):
    calc = atoms.calc
    return None if calc is None else getattr(calc, "results", {}).get(key)


def _find_forces(atoms: Atoms, key: str | None) -> np.ndarray | None:
    """(N, 3) eV/Å from ``key``, or from REF_forces / forces / the calculator."""
    if key is not None:
        value = atoms.arrays.get(key)
        return _calc_result(atoms, key) if value is None else value
    for name in (REF_FORCES, K.FORCES):
        if name in atoms.arrays:
            return atoms.arrays[name]
    return _calc_result(atoms, K.FORCES)


def _find_energy(atoms: Atoms, key: str | None) -> float | None:
    """Energy in eV from ``key``, or from REF_energy / energy / the calculator."""
    if key is not None:
        value = atoms.info.get(key)
        return _calc_result(atoms, key) if value is None else value
    for name in (REF_ENERGY, K.ENERGY):
        if name in atoms.info:
            return atoms.info[name]
    return _calc_result(atoms, K.ENERGY)


def _frame_cell(path: Path, index: int, atoms: Atoms) -> np.ndarray | None:
    """(3, 3) Å cell of a fully periodic frame, ``None`` for a non-periodic one."""
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.any():
        return None
    if not pbc.all():
        raise DatasetError(
            f"{path}: frame {index} is periodic along some axes only (pbc={pbc.tolist()}); "
            "scalepool handles fully periodic or non-periodic systems"
        )
    cell = atoms.cell.array
    if atoms.cell.rank < 3:
        raise DatasetError(
            f"{path}: frame {index} is marked periodic (pbc={pbc.tolist()}) but has no full cell "
            f"(Lattice missing or degenerate: {cell.tolist()})"
        )
    return cell


def _read_meta(path: Path, atoms: Atoms) -> dict:
    encoded = atoms.info.get(META_INFO)
    if encoded is None:
        return {}
    try:
        return json.loads(base64.urlsafe_b64decode(str(encoded).encode()))
    except (binascii.Error, ValueError) as err:
        raise DatasetError(f"{path}: {META_INFO} in frame 0 is not base64 JSON: {err}") from err


REF_STRESS = "REF_stress"  # info (3, 3), (9,) or Voigt (6,), eV/Å^3


def _find_stress(atoms: Atoms, key: str | None):
    """(3, 3) eV/Å^3 from ``key`` (info, array or calculator result), or REF_stress / stress / calculator."""
    names = (key,) if key is not None else (REF_STRESS, "stress")
    for name in names:
        if name in atoms.info:
            return atoms.info[name]
    return _calc_result(atoms, key or "stress")


def _stress_matrix(where: str, value) -> np.ndarray:
    value = np.asarray(value, dtype=np.float64)
    if value.shape == (6,):  # Voigt xx yy zz yz xz xy (ASE's order)
        xx, yy, zz, yz, xz, xy = value
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    if value.shape in ((9,), (3, 3)):
        return value.reshape(3, 3)
    raise DatasetError(f"{where}: stress has shape {value.shape}; expected (3, 3), (9,) or Voigt (6,)")


def _labels(where: str, atoms: Atoms, forces_key, energy_key, stress_key):
    """(forces (N, 3), energy or None, stress (3, 3) or None) of one frame; DatasetError naming it."""
    n_atoms = len(atoms)
    force = _find_forces(atoms, forces_key)
    if force is None:
        looked = f"'{forces_key}'" if forces_key else f"'{REF_FORCES}', '{K.FORCES}' or calculator results"
        calc = sorted(getattr(atoms.calc, "results", {}) or {}) if atoms.calc is not None else []
        raise DatasetError(
            f"{where} has no forces (looked for {looked}; per-atom arrays present: {sorted(atoms.arrays)}, "
            f"calculator results: {calc}); pass --forces-key (forces_key=) if they are stored under another name"
        )
    if np.shape(force) != (n_atoms, 3):
        raise DatasetError(f"{where} forces have shape {np.shape(force)}, expected ({n_atoms}, 3)")
    energy = _find_energy(atoms, energy_key)
    if energy is None and energy_key is not None:
        raise DatasetError(
            f"{where} has no energy '{energy_key}' (info keys present: {sorted(atoms.info)}); "
            "check --energy-key"
        )
    try:
        energy = None if energy is None else float(energy)
    except (TypeError, ValueError) as err:
        raise DatasetError(f"{where} energy {energy!r} is not a number") from err
    periodic = bool(np.asarray(atoms.pbc).all())
    stress = _find_stress(atoms, stress_key)
    if stress_key is not None:
        if not periodic:
            raise DatasetError(
                f"{where} is not periodic (pbc={np.asarray(atoms.pbc).tolist()}) but --stress-key "
                f"'{stress_key}' was given: stress is defined for periodic frames only"
            )
        if stress is None:
            raise DatasetError(
                f"{where} has no stress '{stress_key}' (info keys present: {sorted(atoms.info)})"
            )
    if stress is not None:
        stress = _stress_matrix(where, stress) if periodic else None
    return np.asarray(force, dtype=np.float64), energy, stress


def atoms_fields(images, energy_key=None, forces_key=None, stress_key=None, source=None,
                 ragged=None, stride: int = 1) -> dict[str, Any]:  # fmt: skip
    """The FrameSet keyword arguments of ``ase.Atoms`` frames (see :meth:`FrameSet.from_atoms`);
    errors name ``source`` and the frame.

    Labels: ``forces_key`` per-atom array or calculator result (default ``REF_forces``,
    then ``forces``, then the calculator's forces); ``energy_key`` info entry or
    calculator result (default ``REF_energy``, then ``energy``, then the calculator's
    energy; optional unless named); ``stress_key`` info entry or calculator result
    in eV/Å^3, ASE's sign (default ``REF_stress``, then ``stress``, then the
    calculator's; kept only when every frame is periodic and has one; a named key
    on an open frame is an error).  A named key never falls back to other names.
    """
    images = list(images)
    name = "atoms" if source is None else str(source)
    if not images:
        raise DatasetError(f"{name} holds no frames")
    first = images[0]
    forces, energies, stresses, cells, pbcs = [], [], [], [], []
    for i, atoms in enumerate(images):
        where = f"{name}: frame {i * stride}"
        if not isinstance(atoms, Atoms):
            raise DatasetError(f"{where} is a {type(atoms).__name__}, not an ase.Atoms")
        if len(atoms) == 0:
            raise DatasetError(f"{where} holds no atoms")
        force, energy, stress = _labels(where, atoms, forces_key, energy_key, stress_key)
        forces.append(force)
        energies.append(energy)
        stresses.append(stress)
        cell = _frame_cell(Path(name), i * stride, atoms)
        cells.append(np.zeros((3, 3)) if cell is None else cell)
        pbcs.append(cell is not None)
    have_energy = [e is not None for e in energies]
    if any(have_energy) and not all(have_energy):
        raise DatasetError(
            f"{name}: energy present in {sum(have_energy)} of {len(energies)} frames "
            f"(missing in frame {have_energy.index(False) * stride}); name it with --energy-key or remove it"
        )
    energy = np.array(energies, dtype=np.float64) if all(have_energy) else None
    stress = np.stack(stresses) if all(s is not None for s in stresses) else None
    same = all(len(a) == len(first) and np.array_equal(a.numbers, first.numbers) for a in images)
    same = same and len(set(pbcs)) == 1
    if ragged is None:
        ragged = not same
    if not ragged:
        if not same:
            raise DatasetError(
                f"{name}: frames differ in atoms or boundaries; the fixed layout needs equal frames"
            )
        return dict(
            positions=np.stack([a.positions for a in images]),
            forces=np.stack(forces),
            numbers=first.numbers.copy(),
            cell=np.stack(cells) if pbcs[0] else None,
            energy=energy,
            force_parts=_force_parts(name, images, forces_key, stride),
            meta=_read_meta(Path(name), first),
            stress=stress,
        )
    return dict(
        positions=np.concatenate([a.positions for a in images]),
        forces=np.concatenate(forces),
        numbers=np.concatenate([a.numbers for a in images]),
        atom_counts=np.array([len(a) for a in images]),
        cell=np.stack(cells),
        pbc=np.repeat(np.array(pbcs)[:, None], 3, axis=1),
        energy=energy,
        stress=stress,
        meta=_read_meta(Path(name), first),
    )


def _force_parts(name: str, images, forces_key, stride: int) -> dict[str, np.ndarray]:
    """``forces_<part>`` arrays of frame 0, stacked over frames (each frame must hold them)."""
    first = images[0]
    n_atoms = len(first)
    parts = sorted(
        key[len(K.FORCE_PART_PREFIX) :]
        for key, value in first.arrays.items()
        if key.startswith(K.FORCE_PART_PREFIX) and key != forces_key and np.shape(value) == (n_atoms, 3)
    )
    out = {}
    for part in parts:
        values = []
        for i, atoms in enumerate(images):
            value = atoms.arrays.get(K.FORCE_PART_PREFIX + part)
            if value is None:
                raise DatasetError(
                    f"{name}: frame {i * stride} lacks force part '{K.FORCE_PART_PREFIX + part}' of frame 0"
                )
            values.append(value)
        out[part] = np.stack(values)
    return out
