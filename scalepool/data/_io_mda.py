"""TRR and H5MD through MDAnalysis, with a topology for the elements.

MDAnalysis works in Å and kJ/(mol·Å) and converts to each format's own units
(TRR: nm and kJ/(mol·nm)) when it reads or writes; here MDAnalysis' force unit
is converted to eV/Å with ``KJ_PER_MOL_ANGSTROM_TO_EV_PER_ANGSTROM``.  Boxes
pass through MDAnalysis' ``[a, b, c, alpha, beta, gamma]`` dimensions, i.e. the
GROMACS orientation: a along x, b in the xy plane (a lower-triangular matrix of
row vectors).  A frame without a box is non-periodic (GROMACS writes a zero box).
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import MDAnalysis as mda
import numpy as np
from ase.data import atomic_numbers, chemical_symbols
from MDAnalysis.coordinates.core import get_reader_for
from MDAnalysis.coordinates.TRR import TRRReader
from MDAnalysis.guesser.default_guesser import DefaultGuesser
from MDAnalysis.lib.mdamath import triclinic_box, triclinic_vectors

from ..units import KJ_PER_MOL_ANGSTROM_TO_EV_PER_ANGSTROM
from ._frameset import DatasetError, FrameSet

#: Format names as MDAnalysis spells them.
_MDA_FORMAT = {"trr": "TRR", "h5md": "H5MD"}
#: Units the H5MD writer is told to store (MDAnalysis' own, stated in the file).
_H5MD_UNITS = {"timeunit": "ps", "lengthunit": "Angstrom", "forceunit": "kJ/(mol*Angstrom)"}
#: Coordinates a PDB line can hold (Å).
_PDB_RANGE = (-999.999, 9999.999)


# ---------------------------------------------------------------- reading
def _symbol_number(symbol: str) -> int | None:
    symbol = str(symbol).strip()
    number = atomic_numbers.get(symbol[:1].upper() + symbol[1:].lower(), 0)
    return number if number > 0 else None  # ASE maps the dummy symbol X to 0


def _attribute(atoms, name: str) -> np.ndarray | None:
    try:
        return np.asarray(getattr(atoms, name))
    except (AttributeError, mda.NoDataError):
        return None


def atomic_numbers_of(universe: mda.Universe, topology: Path) -> np.ndarray:
    """(N,) atomic numbers from the topology's elements, else guessed from names/types.

    Guessing uses MDAnalysis' default guesser and warns, because a name such as
    ``CA`` may mean calcium or an alpha carbon.  Raises DatasetError naming the
    first atom whose element cannot be determined.
    """
    atoms = universe.atoms
    n_atoms = len(atoms)
    empty = np.full(n_atoms, "", dtype=object)
    elements = _attribute(atoms, "elements")
    names = _attribute(atoms, "names")
    types = _attribute(atoms, "types")
    elements = empty if elements is None else elements
    names = empty if names is None else names
    types = empty if types is None else types

    guesser = DefaultGuesser(None)
    numbers = np.zeros(n_atoms, dtype=np.int64)
    n_guessed = 0
    cache: dict[tuple[str, str, str], tuple[int | None, bool]] = {}
    for i, key in enumerate(zip(elements, names, types, strict=True)):
        if key not in cache:
            element, name, kind = (str(k) for k in key)
            number, guessed = _symbol_number(element), False
            for label in (name, kind):
                if number is None and label.strip():
                    number, guessed = _symbol_number(guesser.guess_atom_element(label)), True
            cache[key] = (number, guessed)
        number, guessed = cache[key]
        if number is None:
            raise DatasetError(
                f"cannot determine the element of atom {i} (name '{names[i]}', type '{types[i]}') "
                f"in topology {topology}; use a topology with elements (PDB element column, TPR)"
            )
        numbers[i] = number
        n_guessed += guessed
    if n_guessed:
        warnings.warn(
            f"{topology}: elements of {n_guessed} atom(s) guessed from atom names/types "
            f"({sorted({chemical_symbols[z] for z in np.unique(numbers)})}); check them",
            stacklevel=4,
        )
    return numbers


# ---------------------------------------------------------------- TRR frame headers
_TRR_MAGIC = 1993
#: magic, version-string length (13), XDR string length (12) and "GMX_trn_file", then 13 ints.
_TRR_INTRO = 24
_TRR_INTS = struct.Struct(">13i")
_TRR_FIELDS = (
    "ir_size", "e_size", "box_size", "vir_size", "pres_size", "top_size", "sym_size",
    "x_size", "v_size", "f_size", "natoms", "step", "nre",
)  # fmt: skip


def _unreadable_trr(path: Path, frame: int, offset: int, problem: str) -> DatasetError:
    return DatasetError(
        f"{path} is not a readable TRR file (truncated or corrupt?): frame {frame} at byte {offset}: {problem}"
    )


def trr_frame_atoms(path: Path) -> np.ndarray:
    """(n_frames,) atom count of every frame of a TRR file, read from the frame headers.

    MDAnalysis reads every frame with the atom count of the first, so a frame with
    fewer atoms comes back with stale and misread coordinates; the headers tell.
    Raises DatasetError for a header that is not a TRR header or a truncated frame.
    """
    size = path.stat().st_size
    counts: list[int] = []
    offset = 0
    with open(path, "rb") as handle:
        while offset < size:
            frame = len(counts)
            handle.seek(offset)
            head = handle.read(_TRR_INTRO + _TRR_INTS.size)
            if len(head) < _TRR_INTRO + _TRR_INTS.size:
                raise _unreadable_trr(path, frame, offset, f"the header is cut off after {len(head)} bytes")
            magic, version_length, string_length = struct.unpack(">3i", head[:12])
            if magic != _TRR_MAGIC or version_length != 13 or string_length != 12:
                raise _unreadable_trr(
                    path, frame, offset, f"no TRR frame header (magic number {magic}, expected {_TRR_MAGIC})"
                )
            header = dict(zip(_TRR_FIELDS, _TRR_INTS.unpack(head[_TRR_INTRO:]), strict=True))
            natoms = header["natoms"]
            if natoms < 0 or any(header[k] < 0 for k in _TRR_FIELDS[:10]):
                raise _unreadable_trr(path, frame, offset, f"negative sizes in the header {header}")
            if header["box_size"]:
                real = header["box_size"] // 9
            else:
                vector = next((header[k] for k in ("x_size", "v_size", "f_size") if header[k]), 0)
                real = vector // (3 * natoms) if natoms else 4
            if real not in (4, 8):
                raise _unreadable_trr(path, frame, offset, f"inconsistent header {header}")
            for key in ("x_size", "v_size", "f_size"):
                if header[key] not in (0, 3 * natoms * real):
                    raise _unreadable_trr(
                        path, frame, offset, f"{key} {header[key]} does not fit {natoms} atoms"
                    )
            frame_bytes = _TRR_INTRO + _TRR_INTS.size + 2 * real + sum(header[k] for k in _TRR_FIELDS[:10])
            if offset + frame_bytes > size:
                raise _unreadable_trr(
                    path, frame, offset,
                    f"the frame needs {frame_bytes} bytes but the file ends after {size - offset}",
                )  # fmt: skip
            counts.append(natoms)
            offset += frame_bytes
    return np.asarray(counts, dtype=np.int64)


def check_trr_atom_counts(path: Path) -> int:
    """The atom count of a TRR file; DatasetError naming the first frame whose count differs."""
    counts = trr_frame_atoms(path)
    if not len(counts):
        raise DatasetError(f"{path} holds no frames")
    changed = np.flatnonzero(counts != counts[0])
    if len(changed):
        f = int(changed[0])
        raise DatasetError(
            f"{path}: frame {f} has {counts[f]} atoms but frame 0 has {counts[0]} "
            f"({len(changed)} of {len(counts)} frames differ); every frame must hold the same atoms "
            "(MDAnalysis would read them all with the first frame's count, corrupting the data)"
        )
    return int(counts[0])


class _TRRReaderNoOffsetFiles(TRRReader):
    """MDAnalysis' TRR reader without its offset cache: it would write ``.<name>_offsets.npz``
    and ``.<name>_offsets.lock`` beside the user's trajectory (and trust a stale one)."""

    def _load_offsets(self) -> None:
        self._read_offsets(store=False)


#: Reader classes handed to MDAnalysis (a class instead of a format name).
_READERS = {"trr": _TRRReaderNoOffsetFiles}


def _trajectory_atom_count(path: Path, fmt: str) -> int | str:
    try:
        if fmt == "trr":
            return int(trr_frame_atoms(path)[0])
        return get_reader_for(str(path), format=_MDA_FORMAT[fmt])(str(path)).n_atoms
    except Exception:  # only used to word an error message
        return "an unknown number of"


def _open_universe(path: Path, topology: Path, fmt: str) -> mda.Universe:
    if not topology.is_file():
        raise FileNotFoundError(f"topology file not found: {topology}")
    if topology.stat().st_size == 0:
        raise DatasetError(f"topology {topology} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # A non-periodic companion PDB carries MDAnalysis' placeholder 1 Å^3 box.
            warnings.filterwarnings("ignore", message=r".*1 A\^3 CRYST1 record")
            universe = mda.Universe(str(topology))
    except Exception as err:  # MDAnalysis parsers raise many types
        raise DatasetError(f"cannot read topology {topology}: {type(err).__name__}: {err}") from err
    if fmt == "trr":
        check_trr_atom_counts(path)
    try:
        universe.load_new(str(path), format=_READERS.get(fmt, _MDA_FORMAT[fmt]))
    except ValueError as err:
        if "number of atoms" in str(err):
            raise DatasetError(
                f"topology {topology} has {len(universe.atoms)} atoms but trajectory {path} has "
                f"{_trajectory_atom_count(path, fmt)}: mismatched topology"
            ) from err
        raise DatasetError(f"{path} is not a readable {fmt.upper()} file: {err}") from err
    except (OSError, EOFError) as err:
        raise DatasetError(
            f"{path} is not a readable {fmt.upper()} file (truncated or corrupt?): {err}"
        ) from err
    return universe


def read_mda(path: Path, topology: Path, fmt: str, stride: int) -> FrameSet:
    """Read every ``stride``-th frame of a TRR/H5MD file (see ``read_frames``)."""
    universe = _open_universe(path, topology, fmt)
    numbers = atomic_numbers_of(universe, topology)
    frames = universe.trajectory[::stride]
    n_frames, n_atoms = len(frames), len(universe.atoms)
    positions = np.empty((n_frames, n_atoms, 3), dtype=np.float64)  # Å
    forces = np.empty((n_frames, n_atoms, 3), dtype=np.float32)  # eV/Å
    cells: list[np.ndarray | None] = []  # (3, 3) Å each
    try:
        for i, ts in enumerate(frames):
            if not ts.has_forces:
                raise DatasetError(
                    f"{path}: frame {ts.frame} has no forces; scalepool datasets need reference forces"
                )
            if not ts.has_positions:
                raise DatasetError(f"{path}: frame {ts.frame} has no positions")
            positions[i] = ts.positions
            forces[i] = ts.forces * KJ_PER_MOL_ANGSTROM_TO_EV_PER_ANGSTROM
            dims = ts.dimensions
            cells.append(None if dims is None else triclinic_vectors(dims, dtype=np.float64))
    except (OSError, EOFError) as err:
        raise DatasetError(
            f"{path}: reading frame {len(cells)} failed (truncated or corrupt?): {err}"
        ) from err
    finally:
        universe.trajectory.close()

    boxed = [cell is not None for cell in cells]
    if any(boxed) and not all(boxed):
        raise DatasetError(
            f"{path}: frame {boxed.index(False) * stride} has no box but frame {boxed.index(True) * stride} "
            "has one; a trajectory must be periodic in every frame or in none"
        )
    try:
        return FrameSet(
            positions=positions,
            forces=forces,
            numbers=numbers,
            cell=np.stack(cells) if all(boxed) else None,
        )
    except DatasetError as err:
        raise DatasetError(f"{path}: {err}") from err


# ---------------------------------------------------------------- writing
def check_gromacs_cell(frames: FrameSet, path: Path) -> None:
    """Raise unless every cell is lower triangular with a positive diagonal.

    That is the orientation TRR and MDAnalysis store (a along x, b in the xy
    plane); any other orientation would come back rotated against the positions.
    """
    if frames.cell is None:
        return
    cell = frames.cell  # (F, 3, 3) Å
    scale = np.abs(cell).max(axis=(1, 2))
    upper = np.abs(cell[:, [0, 0, 1], [1, 2, 2]]).max(axis=1)
    diagonal = np.diagonal(cell, axis1=1, axis2=2)
    bad = (upper > 1e-9 * scale) | (diagonal <= 0).any(axis=1)
    if bad.any():
        f = int(np.argmax(bad))
        raise DatasetError(
            f"cannot write {path}: the cell of frame {f} is not in the GROMACS orientation "
            f"(a along x, b in the xy plane, rows {cell[f].tolist()}); rotate the frames first "
            "(e.g. with ase.cell.Cell.standard_form) or write extxyz/npz"
        )


def _universe_for(frames: FrameSet) -> mda.Universe:
    """A one-frame in-memory Universe with element names, one residue per atom."""
    n_atoms = frames.n_atoms
    symbols = [chemical_symbols[z] for z in frames.numbers]
    universe = mda.Universe.empty(
        n_atoms, n_residues=n_atoms, atom_resindex=np.arange(n_atoms), trajectory=True
    )
    universe.add_TopologyAttr("names", symbols)
    universe.add_TopologyAttr("types", symbols)
    universe.add_TopologyAttr("elements", symbols)
    universe.add_TopologyAttr("resnames", [s.upper() for s in symbols])
    universe.add_TopologyAttr("resids", np.arange(1, n_atoms + 1))
    return universe


def _set_frame(universe: mda.Universe, frames: FrameSet, f: int) -> None:
    ts = universe.trajectory.ts
    ts.frame = f
    ts.time = float(f)  # FrameSet keeps no time: the frame index stands in
    ts.data["step"] = f
    ts.positions = frames.positions[f]
    ts.has_forces = True
    ts.forces = frames.forces[f] / KJ_PER_MOL_ANGSTROM_TO_EV_PER_ANGSTROM  # kJ/(mol·Å)
    ts.dimensions = None if frames.cell is None else triclinic_box(*frames.cell[f])


def write_mda(frames: FrameSet, path: Path, topology: Path, fmt: str) -> None:
    """Write ``frames`` as TRR/H5MD to ``path`` and a PDB topology to ``topology``.

    The PDB holds frame 0 (atoms at the origin if they do not fit PDB columns),
    element symbols as atom names and in the element column, and the box.
    """
    universe = _universe_for(frames)
    _set_frame(universe, frames, 0)
    if not (_PDB_RANGE[0] <= frames.positions[0]).all() or not (frames.positions[0] <= _PDB_RANGE[1]).all():
        universe.trajectory.ts.positions = np.zeros((frames.n_atoms, 3))
    with warnings.catch_warnings():
        # The PDB writer warns about every attribute a minimal topology lacks.
        warnings.filterwarnings("ignore", module=r"MDAnalysis\..*")
        universe.atoms.write(str(topology), file_format="PDB")
    extra = _H5MD_UNITS if fmt == "h5md" else {}
    with mda.Writer(str(path), frames.n_atoms, format=_MDA_FORMAT[fmt], **extra) as writer:
        for f in range(frames.n_frames):
            _set_frame(universe, frames, f)
            writer.write(universe.atoms)
