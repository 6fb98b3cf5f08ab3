"""Extended XYZ through ASE: reference data as ``REF_forces`` / ``REF_energy``.

Units are ASE's: Å, eV and eV/Å, so nothing is converted.  ASE writes numbers
with 8 decimals (1e-8 Å, 1e-8 eV/Å); energies keep full precision.  Written files carry
per-atom arrays ``REF_forces`` (total force) and ``forces_<part>`` (its
decomposition), the frame energy as ``REF_energy``, and the FrameSet meta as
base64-encoded JSON in the first frame (plain JSON with quotes inside strings
does not survive extxyz's key=value quoting).
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms

from . import _keys as K
from ._frameset import DatasetError, FrameSet

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


def read_extxyz(path: Path, forces_key: str | None, energy_key: str | None, stride: int) -> FrameSet:
    """Read every ``stride``-th frame of an extended XYZ file (see ``read_frames``)."""
    try:
        images = ase.io.read(path, index=f"::{stride}", format="extxyz")
    except (ValueError, KeyError, IndexError, OSError) as err:
        # ASE reports a truncated or corrupt file with any of these.
        raise DatasetError(
            f"{path} is not a readable extended XYZ file (corrupt or truncated?): {type(err).__name__}: {err}"
        ) from err
    if not images:
        raise DatasetError(f"{path} holds no frames")

    first = images[0]
    n_atoms = len(first)
    parts = sorted(
        key[len(K.FORCE_PART_PREFIX) :]
        for key, value in first.arrays.items()
        if key.startswith(K.FORCE_PART_PREFIX) and key != forces_key and np.shape(value) == (n_atoms, 3)
    )
    positions, forces, cells, energies = [], [], [], []
    part_values: dict[str, list[np.ndarray]] = {part: [] for part in parts}
    for i, atoms in enumerate(images):
        index = i * stride  # frame number in the file
        if len(atoms) != n_atoms:
            raise DatasetError(
                f"{path}: frame {index} has {len(atoms)} atoms but frame 0 has {n_atoms}; "
                "all frames must hold the same atoms"
            )
        if not np.array_equal(atoms.numbers, first.numbers):
            raise DatasetError(f"{path}: frame {index} lists other species (or another order) than frame 0")
        force = _find_forces(atoms, forces_key)
        if force is None:
            looked = (
                f"'{forces_key}'" if forces_key else f"'{REF_FORCES}', '{K.FORCES}' or calculator results"
            )
            raise DatasetError(
                f"{path}: frame {index} has no forces (looked for {looked}; per-atom arrays present: "
                f"{sorted(atoms.arrays)}); pass forces_key= if they are stored under another name"
            )
        if np.shape(force) != (n_atoms, 3):
            raise DatasetError(
                f"{path}: frame {index} forces have shape {np.shape(force)}, expected ({n_atoms}, 3)"
            )
        positions.append(atoms.positions)
        forces.append(force)
        cells.append(_frame_cell(path, index, atoms))
        energy = _find_energy(atoms, energy_key)
        try:
            energies.append(None if energy is None else float(energy))
        except (TypeError, ValueError) as err:
            raise DatasetError(f"{path}: frame {index} energy {energy!r} is not a number") from err
        for part in parts:
            value = atoms.arrays.get(K.FORCE_PART_PREFIX + part)
            if value is None:
                raise DatasetError(
                    f"{path}: frame {index} lacks force part '{K.FORCE_PART_PREFIX + part}' of frame 0"
                )
            part_values[part].append(value)

    periodic = [cell is not None for cell in cells]
    if any(periodic) and not all(periodic):
        raise DatasetError(
            f"{path}: frame {periodic.index(False) * stride} has no cell but frame "
            f"{periodic.index(True) * stride} is periodic; all frames must agree"
        )
    have_energy = [e is not None for e in energies]
    if energy_key is not None and not all(have_energy):
        raise DatasetError(f"{path}: frame {have_energy.index(False) * stride} has no energy '{energy_key}'")
    if any(have_energy) and not all(have_energy):
        raise DatasetError(
            f"{path}: energy present in {sum(have_energy)} of {len(energies)} frames "
            f"(missing in frame {have_energy.index(False) * stride})"
        )
    try:
        return FrameSet(
            positions=np.stack(positions),
            forces=np.stack(forces),
            numbers=first.numbers.copy(),
            cell=np.stack(cells) if all(periodic) else None,
            energy=np.array(energies, dtype=np.float64) if all(have_energy) else None,
            force_parts={part: np.stack(values) for part, values in part_values.items()},
            meta=_read_meta(path, first),
        )
    except DatasetError as err:
        raise DatasetError(f"{path}: {err}") from err


def _frames_as_atoms(frames: FrameSet):
    """Yield one ``ase.Atoms`` per frame, with reference data as arrays and info."""
    for f in range(frames.n_frames):
        atoms = Atoms(
            numbers=frames.numbers,
            positions=frames.positions[f],
            cell=frames.cell[f] if frames.periodic else None,
            pbc=frames.periodic,
        )
        atoms.arrays[REF_FORCES] = frames.forces[f]
        for part, value in frames.force_parts.items():
            atoms.arrays[K.FORCE_PART_PREFIX + part] = value[f]
        if frames.energy is not None:
            atoms.info[REF_ENERGY] = float(frames.energy[f])
        if f == 0 and frames.meta:
            encoded = base64.urlsafe_b64encode(json.dumps(frames.meta, sort_keys=True).encode())
            atoms.info[META_INFO] = encoded.decode()
        yield atoms


def write_extxyz(frames: FrameSet, path: Path) -> None:
    """Write ``frames`` as extended XYZ to ``path`` (streamed frame by frame)."""
    ase.io.write(path, _frames_as_atoms(frames), format="extxyz")
