"""Files read through ASE (extxyz, traj, db, VASP OUTCAR and vasprun.xml); extxyz written back.

Labels are looked up by :mod:`._atoms` (``REF_*`` names, plain names, then the
calculator results a file stores).  Extended XYZ: reference data as ``REF_forces`` / ``REF_energy``.

Units are ASE's: Å, eV and eV/Å, so nothing is converted.  ASE writes numbers
with 8 decimals (1e-8 Å, 1e-8 eV/Å); energies keep full precision.  Written files carry
per-atom arrays ``REF_forces`` (total force) and ``forces_<part>`` (its
decomposition), the frame energy as ``REF_energy``, and the FrameSet meta as
base64-encoded JSON in the first frame (plain JSON with quotes inside strings
does not survive extxyz's key=value quoting).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import ase.io
from ase import Atoms

from . import _keys as K
from ._atoms import META_INFO, REF_ENERGY, REF_FORCES, REF_STRESS
from ._frameset import DatasetError, FrameSet

#: ASE format names of the formats read through ``ase.io.read``.
ASE_FORMATS = {"extxyz": "extxyz", "traj": "traj", "db": "db", "vasp-out": "vasp-out", "vasp-xml": "vasp-xml"}
_DESCRIBE = {"extxyz": "extended XYZ"}


def read_extxyz(path: Path, forces_key: str | None, energy_key: str | None, stride: int,
                stress_key: str | None = None) -> FrameSet:  # fmt: skip
    """Read every ``stride``-th frame of an extended XYZ file (see ``read_frames``)."""
    return read_ase(path, "extxyz", forces_key, energy_key, stride, stress_key)


def read_ase(
    path: Path,
    fmt: str,
    forces_key: str | None,
    energy_key: str | None,
    stride: int,
    stress_key: str | None = None,
) -> FrameSet:
    """Every ``stride``-th frame of a file ``ase.io.read`` reads (``fmt`` in :data:`ASE_FORMATS`)."""
    try:
        images = ase.io.read(path, index=f"::{stride}", format=ASE_FORMATS[fmt])
    except (
        ValueError,
        KeyError,
        IndexError,
        OSError,
        AssertionError,
        StopIteration,
        ase.io.ParseError,
    ) as err:
        # ASE reports a truncated or corrupt file with any of these.
        raise DatasetError(
            f"{path} is not a readable {_DESCRIBE.get(fmt, fmt)} file (corrupt or truncated?): {type(err).__name__}: {err}"
        ) from err
    if isinstance(images, Atoms):
        images = [images]
    if not images:
        raise DatasetError(f"{path} holds no frames")
    return FrameSet.from_atoms(images, energy_key, forces_key, stress_key, source=path, stride=stride)


def _frames_as_atoms(frames: FrameSet):
    """Yield one ``ase.Atoms`` per frame, with reference data as arrays and info."""
    for f in range(frames.n_frames):
        one = frames.frame(f) if frames.ragged else None
        periodic = bool(frames.pbc[f].all())
        atoms = Atoms(
            numbers=one.numbers if one is not None else frames.numbers,
            positions=one.positions[0] if one is not None else frames.positions[f],
            cell=frames.cells[f] if periodic else None,
            pbc=periodic,
        )
        atoms.arrays[REF_FORCES] = one.forces[0] if one is not None else frames.forces[f]
        for part, value in ({} if frames.ragged else frames.force_parts).items():
            atoms.arrays[K.FORCE_PART_PREFIX + part] = value[f]
        if frames.energy is not None:
            atoms.info[REF_ENERGY] = float(frames.energy[f])
        if frames.stress is not None:
            atoms.info[REF_STRESS] = frames.stress[f].reshape(9)
        if f == 0 and frames.meta:
            encoded = base64.urlsafe_b64encode(json.dumps(frames.meta, sort_keys=True).encode())
            atoms.info[META_INFO] = encoded.decode()
        yield atoms


def write_extxyz(frames: FrameSet, path: Path) -> None:
    """Write ``frames`` as extended XYZ to ``path`` (streamed frame by frame)."""
    ase.io.write(path, _frames_as_atoms(frames), format="extxyz")
