"""Trajectory I/O: read any supported file into a FrameSet and write one back.

The format comes from the file extension (or ``format=``); each one goes
through its reference library:

=========  =======================  ==========  ======================================
format     extensions               library     what it keeps
=========  =======================  ==========  ======================================
npz        ``.npz``                 numpy       everything (the dataset schema)
extxyz     ``.extxyz``, ``.xyz``    ASE         positions, forces, cell, numbers,
                                                energy, force parts, meta
trr        ``.trr``                 MDAnalysis  positions, forces, cell (single
                                                precision); numbers via a topology
h5md       ``.h5md``                MDAnalysis  as trr (units stored in the file);
                                                needs the optional package h5py
traj       ``.traj``                ASE         positions, cell, pbc, numbers and the
                                                calculator's energy, forces, stress
db         ``.db``                  ASE         as traj (one row per frame)
vasp-out   ``OUTCAR*``              ASE         as traj (VASP OUTCAR, read only)
vasp-xml   ``vasprun*.xml``         ASE         as traj (VASP vasprun.xml, read only)
=========  =======================  ==========  ======================================

ASE formats may hold frames that differ in atoms, species or boundaries (molecules
beside periodic crystals): they are read into the ragged layout of
:class:`FrameSet`; frames that all hold the same atoms keep the fixed layout.

TRR and H5MD files hold no atom types, so they travel with a topology:
:func:`write_frames` writes ``<stem>.pdb`` beside them (elements in the PDB
element column), and :func:`read_frames` uses that companion when no
``topology=`` is given.  Every write is atomic: the data go to hidden temporary
files in the target folder that are renamed at the end, so a failed or
interrupted write leaves no output (and keeps an older file of the same name).

LAMMPS dumps are not supported: a dump records neither the unit style of its
``fx fy fz`` columns (eV/Å for ``metal``, kcal/(mol·Å) for ``real``) nor the
elements behind its integer atom types, so reading one faithfully needs inputs
outside this interface.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from .._files import atomic_paths, write_npz
from ._frameset import DatasetError, FrameSet, NotAFileError
from ._sanity import resolve_check

#: Readable formats and their file extensions.
SUPPORTED_READ: dict[str, tuple[str, ...]] = {
    "npz": (".npz",),
    "extxyz": (".extxyz", ".xyz"),
    "trr": (".trr",),
    "h5md": (".h5md",),
}
#: Writable formats and their file extensions (TRR and H5MD also write ``<stem>.pdb``).
SUPPORTED_WRITE: dict[str, tuple[str, ...]] = dict(SUPPORTED_READ)
SUPPORTED_READ.update({"traj": (".traj",), "db": (".db",), "vasp-out": ("OUTCAR",), "vasp-xml": (".xml",)})

#: Formats read through ase.io.read (forces_key, energy_key and stress_key apply to these).
_ASE_READ = ("extxyz", "traj", "db", "vasp-out", "vasp-xml")

#: Formats whose atoms come from a separate topology file.
_NEEDS_TOPOLOGY = ("trr", "h5md")
_ALIASES = {"xyz": "extxyz"}
_UNSUPPORTED = {
    ("lammpsdump", ".lammpstrj", ".dump"): (
        "LAMMPS dump files are not supported: a dump records neither the unit style of its "
        "force columns nor the elements of its atom types; convert it to extxyz with known units"
    ),
    ("xtc", ".xtc", "dcd", ".dcd"): "this format stores no forces",
}


def _describe(table: dict[str, tuple[str, ...]]) -> str:
    return ", ".join(f"{name} ({' '.join(exts)})" for name, exts in table.items())


def _resolve_format(path: Path, format: str | None, table: dict[str, tuple[str, ...]]) -> str:
    """The format name for ``path``: ``format`` when given, else from the extension."""
    key = (format or path.suffix).lower()
    if format is None and path.name.upper().startswith("OUTCAR") and "vasp-out" in table:
        return "vasp-out"
    for names, reason in _UNSUPPORTED.items():
        if key in names:
            raise DatasetError(f"{path}: {reason}. Supported: {_describe(table)}")
    if format is not None:
        name = _ALIASES.get(key, key)
        if name not in table:
            raise DatasetError(f"{path}: unknown format '{format}'; supported: {_describe(table)}")
        return name
    for name, extensions in table.items():
        if key in extensions:
            return name
    raise DatasetError(
        f"cannot tell the format of {path} from its extension '{path.suffix}'; "
        f"supported: {_describe(table)}; or pass format="
    )


def _require_h5py(path: Path) -> None:
    if importlib.util.find_spec("h5py") is None:
        raise ImportError(f"{path}: H5MD files need the optional package h5py (pip install h5py)")


def companion_topology(path: str | os.PathLike) -> Path:
    """The topology written beside a TRR or H5MD trajectory: ``<stem>.pdb``."""
    return Path(path).with_suffix(".pdb")


def read_frames(
    path: str | os.PathLike,
    topology: str | os.PathLike | None = None,
    format: str | None = None,
    forces_key: str | None = None,
    energy_key: str | None = None,
    stride: int = 1,
    check_physics: bool | str = True,
    stress_key: str | None = None,
) -> FrameSet:
    """Read a trajectory with reference forces into a :class:`FrameSet` (Å, eV/Å, eV).

    Parameters
    ----------
    path : trajectory file; its extension picks the format (see ``SUPPORTED_READ``).
    topology : TRR/H5MD only: a file MDAnalysis can parse (``.pdb``, ``.gro``,
        ``.tpr``, ``.psf``) with the same atoms in the same order.  Default: the
        companion ``<stem>.pdb`` written by :func:`write_frames`.  Elements come
        from the topology, or are guessed from atom names/types (with a warning).
    format : override the extension: one of ``SUPPORTED_READ``.
    forces_key : ASE formats only: per-atom array (or calculator result) holding the
        forces in eV/Å.  Default: ``REF_forces``, then ``forces``, then the
        calculator's forces.  A named key never falls back.
    energy_key : ASE formats only: ``info`` key (or calculator result) holding the
        energy in eV.  Default: ``REF_energy``, then ``energy``, then the
        calculator's energy (or none).
    stress_key : ASE formats only: ``info`` key (or calculator result) holding the
        stress in eV/Å^3 (ASE sign, (3, 3), (9,) or Voigt (6,)).  Default:
        ``REF_stress``, then ``stress``, then the calculator's, kept when every
        frame is periodic and has one; a named key on an open frame is an error.
    stride : keep every ``stride``-th frame, starting with the first.
    check_physics : run the physical sanity checks (:func:`scalepool.data.check_physics`:
        close contacts, density, cell, force magnitudes) on the frames read:
        ``True`` refuses what no real dataset shows and warns about the rest,
        ``"strict"`` refuses both, ``False`` skips them.

    Raises
    ------
    FileNotFoundError : ``path`` or ``topology`` does not exist.
    DatasetError : ``path`` is a directory, or the file is empty, truncated,
        corrupt, of an unknown format or of another format than its extension
        says, has no forces, non-finite values, inconsistent atoms (a TRR frame
        with another atom count) or boxes, does not match its topology, or fails
        a physics check (:class:`~scalepool.data.PhysicsError`).  The message
        names the file and the problem.
    """
    path = Path(path)
    run_checks, strict = resolve_check(check_physics)
    if path.is_dir():
        raise NotAFileError(f"{path} is a directory, not a trajectory file")
    if not path.exists():
        raise FileNotFoundError(f"trajectory file not found: {path}")
    if not path.is_file():
        raise DatasetError(f"{path} is not a regular file (a device, socket or pipe?)")
    fmt = _resolve_format(path, format, SUPPORTED_READ)
    if path.stat().st_size == 0:
        raise DatasetError(f"{path} is empty (0 bytes)")
    if not isinstance(stride, (int, np.integer)) or isinstance(stride, bool) or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    if fmt not in _ASE_READ and (forces_key is not None or energy_key is not None or stress_key is not None):
        raise ValueError(
            f"forces_key, energy_key and stress_key apply to files read through ASE ({', '.join(_ASE_READ)}), "
            f"not {fmt} ({path})"
        )
    if fmt not in _NEEDS_TOPOLOGY and topology is not None:
        raise ValueError(
            f"topology applies to {' and '.join(_NEEDS_TOPOLOGY)} files only, not {fmt} ({path})"
        )

    if fmt == "npz":
        frames = FrameSet.load(path, check_physics=check_physics)
        return frames if stride == 1 else frames[::stride]
    if fmt in _ASE_READ:
        from ._io_ase import read_ase

        if fmt == "extxyz":
            _refuse_binary_as_text(path)
        frames = read_ase(path, fmt, forces_key, energy_key, stride, stress_key)
    else:
        if fmt == "h5md":
            _require_h5py(path)
        from ._io_mda import read_mda

        if topology is None:
            topology = companion_topology(path)
            if not topology.is_file():
                raise DatasetError(
                    f"{path}: a {fmt.upper()} file holds no atom types; pass topology= (.pdb, .gro, .tpr, "
                    f".psf) or place {topology.name} beside it"
                )
        elif Path(topology).is_dir():
            raise NotAFileError(f"topology {topology} is a directory, not a topology file")
        frames = read_mda(path, Path(topology), fmt, stride=stride)
    if run_checks:
        frames.check_physics(source=path, strict=strict)
    return frames


def _refuse_binary_as_text(path: Path) -> None:
    """DatasetError when a file handed to the extxyz reader is an .npz archive or other binary."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise DatasetError(
            f"{path} is an .npz (zip) archive, not an extended XYZ text file; rename it to .npz "
            "or pass format='npz'"
        )
    if b"\x00" in head:
        raise DatasetError(f"{path} is a binary file, not an extended XYZ text file")


def write_frames(frameset: FrameSet, path: str | os.PathLike, format: str | None = None) -> Path:
    """Write ``frameset`` to ``path`` in the format of its extension; returns ``path``.

    TRR and H5MD also write the topology :func:`companion_topology` (``<stem>.pdb``,
    replacing any file of that name) so that :func:`read_frames` can read them
    back.  Units follow each format: extxyz in Å and eV/Å with ``REF_forces``,
    ``REF_energy`` and ``forces_<part>`` arrays; TRR in nm and kJ/(mol·nm),
    converted by MDAnalysis.  TRR and H5MD drop energy, force parts and meta, and
    need cells in the GROMACS orientation (a along x, b in the xy plane).

    The write is atomic: on any error no new file appears.
    """
    if not isinstance(frameset, FrameSet):
        raise TypeError(f"write_frames expects a FrameSet, got {type(frameset).__name__}")
    path = Path(path)
    fmt = _resolve_format(path, format, SUPPORTED_WRITE)
    if frameset.ragged and fmt not in ("npz", "extxyz"):
        raise DatasetError(
            f"cannot write {path}: {fmt} files hold the same atoms in every frame, and this dataset is ragged "
            "(frames differ in atoms); write .npz or .extxyz"
        )
    if path.is_dir():
        raise NotAFileError(f"cannot write {path}: it is a directory")
    if fmt == "npz":
        write_npz(path, frameset.to_arrays())
    elif fmt == "extxyz":
        from ._io_ase import write_extxyz

        with atomic_paths(path) as (tmp,):
            write_extxyz(frameset, tmp)
    else:
        if fmt == "h5md":
            _require_h5py(path)
        from ._io_mda import check_gromacs_cell, write_mda

        check_gromacs_cell(frameset, path)
        if companion_topology(path) == path:
            raise DatasetError(f"cannot write {fmt} to {path}: its topology {path.name} would overwrite it")
        with atomic_paths(path, companion_topology(path)) as (tmp, tmp_top):
            write_mda(frameset, tmp, tmp_top, fmt)
    return path
