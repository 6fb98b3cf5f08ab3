"""FrameSet: the in-memory dataset, its validation, npz I/O and time-block splits."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .._files import write_npz
from . import _keys as K
from ._sanity import DatasetError, resolve_check
from ._sanity import check_physics as run_physics_checks

# Stored dtypes: positions and cells keep float64 so that a frame can be
# recomputed exactly by a reference engine; forces are float32 (their own
# accuracy is far below float32 resolution) which halves the file size.
_FLOAT_DTYPES = {K.POSITIONS: np.float64, K.CELL: np.float64, K.ENERGY: np.float64}
_FORCE_DTYPE = np.float32


class NotAFileError(DatasetError, IsADirectoryError):
    """A path that should be a data file is a directory (a DatasetError and an IsADirectoryError)."""


#: First bytes of files that are not .npz archives, and what they are.
_SIGNATURES = (
    (b"\x93NUMPY", "a single .npy array, not an .npz archive of named arrays"),
    (b"\x89HDF", "an HDF5 file (H5MD?); read it with read_frames(..., format='h5md')"),
    (b"\x00\x00\x07\xc9", "a GROMACS TRR trajectory; read it with read_frames and a topology"),
    (b"\x1f\x8b", "gzip-compressed; decompress it first"),
    (b"\x80", "a Python pickle; scalepool never unpickles data files"),
)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def _not_npz_reason(path: Path, head: bytes) -> str:
    """What a file that does not start like a zip archive is, for the error message."""
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"not a zip archive (it starts with bytes {head[:8]!r})"
    lines = text.splitlines()
    first = lines[0].strip() if lines else ""
    second = lines[1] if len(lines) > 1 else ""
    if first.isdigit() and ("Properties=" in second or "Lattice=" in second or len(lines) > 2):
        if path.suffix in (".extxyz", ".xyz"):
            fix = f"convert it first: scalepool data convert {path} {path.with_suffix('.npz')}"
        else:
            fix = f"rename it to {path.with_suffix('.extxyz').name}, or read it with read_frames(..., format='extxyz')"
        return f"an (extended) XYZ text file, not a zip archive; {fix}"
    if first.startswith(("ATOM", "HETATM", "CRYST1", "HEADER", "REMARK", "MODEL")):
        return "a PDB text file, not a zip archive"
    return f"a text file, not a zip archive (its first line is {first[:60]!r})"


def _read_npz(path: Path) -> dict[str, Any]:
    """Every array of an ``.npz`` file; errors name the file, the array and the problem."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if not head.startswith(_ZIP_MAGIC):
        raise DatasetError(f"{path} is not a readable .npz file: it is {_not_npz_reason(path, head)}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        ValueError,
        OSError,
        KeyError,
        NotImplementedError,
    ) as err:
        raise DatasetError(
            f"{path} is not a readable .npz file (truncated or corrupt?): {type(err).__name__}: {err}"
        ) from err
    arrays = {}
    with archive:
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except ValueError as err:
                if "pickle" in str(err).lower() or "object arrays" in str(err).lower():
                    raise DatasetError(
                        f"{path}: array '{key}' holds Python objects (a pickled object array); scalepool "
                        "datasets hold numbers and one JSON string, and never unpickle data files"
                    ) from err
                raise DatasetError(f"{path}: array '{key}' is unreadable (corrupt header?): {err}") from err
            except MemoryError as err:
                raise DatasetError(
                    f"{path}: array '{key}' claims a shape too large to load (corrupt header?)"
                ) from err
            except (
                zipfile.BadZipFile,
                zlib.error,
                EOFError,
                OSError,
                KeyError,
                NotImplementedError,
                RuntimeError,
            ) as err:  # RuntimeError: zipfile's "encrypted member" on a flipped flag bit
                raise DatasetError(
                    f"{path}: array '{key}' is unreadable (truncated or corrupt?): {type(err).__name__}: {err}"
                ) from err
    return arrays


def _numeric(path: Path, key: str, value: Any, kinds: str = "iuf") -> np.ndarray:
    """``value`` as an array whose dtype kind is in ``kinds``; DatasetError naming the array otherwise."""
    array = np.asarray(value)
    if array.dtype.kind not in kinds:
        raise DatasetError(
            f"{path}: array '{key}' has dtype {array.dtype} ({'integers' if kinds == 'iu' else 'numbers'} expected)"
        )
    return array


def _read_meta(path: Path, value: Any) -> dict[str, Any]:
    """The JSON object stored in the ``meta`` array; DatasetError naming the file and field otherwise."""
    array = np.asarray(value)
    if array.dtype.kind not in "US" or array.size != 1:
        raise DatasetError(
            f"{path}: array '{K.META}' must be one JSON string, got dtype {array.dtype} shape {array.shape}"
        )
    text = array.reshape(()).item()
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DatasetError(f"{path}: array '{K.META}' is not UTF-8 text: {err}") from err
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"{path}: array '{K.META}' is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}; "
            f"it starts {text[:40]!r})"
        ) from err
    if not isinstance(meta, dict):
        raise DatasetError(
            f"{path}: array '{K.META}' must hold a JSON object, got a JSON {type(meta).__name__}"
        )
    return meta


def _check_finite(name: str, array: np.ndarray) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        first = np.argwhere(bad)[0].tolist()
        raise DatasetError(
            f"{name} contains {int(bad.sum())} non-finite value(s) (NaN or inf); first at index {first}"
        )


@dataclasses.dataclass
class FrameSet:
    """A trajectory with reference forces.

    Attributes
    ----------
    positions : (F, N, 3) float64, Å
    forces : (F, N, 3) float32, eV/Å, total reference force
    numbers : (N,) int, atomic numbers
    cell : (F, 3, 3) float64, Å, rows are cell vectors; ``None`` for a
        non-periodic system
    energy : (F,) float64, eV, or ``None``
    force_parts : ``{part: (F, N, 3) eV/Å}``, optional decomposition whose sum
        should equal ``forces`` (e.g. ``bonded``, ``direct``, ``reciprocal``)
    meta : JSON-serialisable dict (generator, parameters, versions, seed)
    """

    positions: np.ndarray
    forces: np.ndarray
    numbers: np.ndarray
    cell: np.ndarray | None = None
    energy: np.ndarray | None = None
    force_parts: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.positions = np.asarray(self.positions, dtype=np.float64)
        if self.forces is None:
            raise DatasetError("forces are missing: scalepool datasets need reference forces")
        self.forces = np.asarray(self.forces, dtype=_FORCE_DTYPE)
        self.numbers = np.asarray(self.numbers)
        if self.positions.ndim != 3 or self.positions.shape[-1] != 3:
            raise DatasetError(f"positions must have shape (F, N, 3), got {self.positions.shape}")
        n_frames, n_atoms, _ = self.positions.shape
        if n_frames == 0 or n_atoms == 0:
            raise DatasetError(f"dataset is empty: {n_frames} frames of {n_atoms} atoms")
        if self.forces.shape != self.positions.shape:
            raise DatasetError(
                f"forces have shape {self.forces.shape} but positions have {self.positions.shape}"
            )
        if self.numbers.shape != (n_atoms,):
            raise DatasetError(f"numbers must have shape ({n_atoms},), got {self.numbers.shape}")
        if not np.issubdtype(self.numbers.dtype, np.integer):
            raise DatasetError(f"numbers must be integers, got dtype {self.numbers.dtype}")
        self.numbers = self.numbers.astype(np.int64)
        if (self.numbers < 1).any() or (self.numbers > 118).any():
            raise DatasetError(f"atomic numbers must lie in 1..118, got {sorted(set(self.numbers.tolist()))}")
        if self.cell is not None:
            self.cell = np.asarray(self.cell, dtype=np.float64)
            if self.cell.shape == (3, 3):
                self.cell = np.broadcast_to(self.cell, (n_frames, 3, 3)).copy()
            if self.cell.shape != (n_frames, 3, 3):
                raise DatasetError(f"cell must have shape ({n_frames}, 3, 3), got {self.cell.shape}")
            _check_finite(K.CELL, self.cell)
            volume = np.abs(np.linalg.det(self.cell))
            if (volume < 1e-6).any():
                raise DatasetError(
                    f"cell of frame {int(np.argmin(volume))} is degenerate (volume {volume.min():.3g} Å^3); "
                    "periodic data need a full 3D box"
                )
        if self.energy is not None:
            self.energy = np.asarray(self.energy, dtype=np.float64).reshape(-1)
            if self.energy.shape != (n_frames,):
                raise DatasetError(f"energy must have shape ({n_frames},), got {self.energy.shape}")
            _check_finite(K.ENERGY, self.energy)
        parts = {}
        for part, value in self.force_parts.items():
            value = np.asarray(value, dtype=_FORCE_DTYPE)
            if value.shape != self.positions.shape:
                raise DatasetError(
                    f"force part '{part}' has shape {value.shape}, expected {self.positions.shape}"
                )
            _check_finite(K.FORCE_PART_PREFIX + part, value)
            parts[part] = value
        self.force_parts = parts
        _check_finite(K.POSITIONS, self.positions)
        _check_finite(K.FORCES, self.forces)
        if not isinstance(self.meta, dict):
            raise DatasetError(f"meta must be a dict (a JSON object), got {type(self.meta).__name__}")
        json.dumps(self.meta)  # fail now, not when saving, if meta is not JSON

    # ------------------------------------------------------------------ basics
    @property
    def n_frames(self) -> int:
        return self.positions.shape[0]

    @property
    def n_atoms(self) -> int:
        return self.positions.shape[1]

    @property
    def periodic(self) -> bool:
        return self.cell is not None

    def __len__(self) -> int:
        return self.n_frames

    def __getitem__(self, index) -> FrameSet:
        """Frames selected by an int, slice or index array, as a new FrameSet."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return FrameSet(
            positions=self.positions[index],
            forces=self.forces[index],
            numbers=self.numbers.copy(),
            cell=None if self.cell is None else self.cell[index],
            energy=None if self.energy is None else self.energy[index],
            force_parts={k: v[index] for k, v in self.force_parts.items()},
            meta=dict(self.meta),
        )

    # --------------------------------------------------------------- splits
    def split_indices(
        self, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), gap: int = 0
    ) -> dict[str, np.ndarray]:
        """Contiguous time-block split; see :func:`time_block_split`."""
        return time_block_split(self.n_frames, fractions, gap)

    def split(
        self, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), gap: int = 0
    ) -> dict[str, FrameSet]:
        """``{"train", "val", "test"}`` FrameSets in time order, never shuffled."""
        return {name: self[idx] for name, idx in self.split_indices(fractions, gap).items()}

    # ---------------------------------------------------------------- npz I/O
    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            K.POSITIONS: self.positions,
            K.FORCES: self.forces,
            K.NUMBERS: self.numbers,
            K.META: np.array(json.dumps(self.meta, sort_keys=True)),
        }
        if self.cell is not None:
            arrays[K.CELL] = self.cell
        if self.energy is not None:
            arrays[K.ENERGY] = self.energy
        for part, value in self.force_parts.items():
            arrays[K.FORCE_PART_PREFIX + part] = value
        return arrays

    def save(self, path: str | os.PathLike) -> Path:
        """Write the dataset as one compressed ``.npz`` (schema in the README and :mod:`scalepool.data.keys`).

        The file is written to a temporary name and renamed, so an interrupted
        save never leaves a half-written dataset behind.
        """
        if Path(path).suffix != ".npz":
            raise ValueError(f"dataset files end in .npz, got {path}")
        return write_npz(path, self.to_arrays())

    @classmethod
    def load(cls, path: str | os.PathLike, check_physics: bool | str = True) -> FrameSet:
        """Read a dataset ``.npz``; errors name the file and the missing or malformed array.

        ``check_physics``: run the physical sanity checks of :mod:`scalepool.data._sanity`
        (close contacts, density, cell, force magnitudes, periodic meta without a cell):
        ``True`` refuses what no real dataset shows (:class:`PhysicsError`) and warns
        about the rest, ``"strict"`` refuses both, ``False`` skips them.

        Raises FileNotFoundError (no such file), DatasetError (a directory, an empty,
        truncated or non-.npz file, a missing or malformed array, invalid meta JSON,
        a failed physics check).
        """
        run_checks, strict = resolve_check(check_physics)
        path = Path(path)
        if path.is_dir():
            raise NotAFileError(f"{path} is a directory, not a dataset file (.npz)")
        if not path.exists():
            raise FileNotFoundError(f"dataset file not found: {path}")
        if path.stat().st_size == 0:
            raise DatasetError(f"{path} is empty (0 bytes)")
        arrays = _read_npz(path)
        missing = [k for k in (K.POSITIONS, K.FORCES, K.NUMBERS) if k not in arrays]
        if missing:
            raise DatasetError(f"{path} lacks required array(s) {missing}; it holds {sorted(arrays)}")
        meta = _read_meta(path, arrays[K.META]) if K.META in arrays else {}
        fields = {}
        for key in (K.POSITIONS, K.FORCES, K.CELL, K.ENERGY):
            if key in arrays:
                fields[key] = _numeric(path, key, arrays[key])
        numbers = _numeric(path, K.NUMBERS, arrays[K.NUMBERS], kinds="iu")
        parts = {
            key[len(K.FORCE_PART_PREFIX) :]: _numeric(path, key, value)
            for key, value in arrays.items()
            if key.startswith(K.FORCE_PART_PREFIX)
        }
        try:
            frames = cls(
                positions=fields[K.POSITIONS],
                forces=fields[K.FORCES],
                numbers=numbers,
                cell=fields.get(K.CELL),
                energy=fields.get(K.ENERGY),
                force_parts=parts,
                meta=meta,
            )
        except (DatasetError, ValueError, TypeError) as err:
            raise DatasetError(f"{path}: {err}") from err
        if run_checks:
            run_physics_checks(frames, source=path, strict=strict)
        return frames

    def checksum(self) -> str:
        """SHA-256 of positions, forces, numbers and cell (provenance of results)."""
        digest = hashlib.sha256()
        for array in (self.positions, self.forces, self.numbers, self.cell):
            if array is not None:
                digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


def time_block_split(
    n_frames: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), gap: int = 0
) -> dict[str, np.ndarray]:
    """Split ``range(n_frames)`` into contiguous train/val/test blocks.

    Blocks follow time order, separated by ``gap`` dropped frames, so frames that
    are correlated in time never sit on both sides of a split.  Every block gets
    at least one frame.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions}")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    usable = n_frames - 2 * gap
    if usable < 3:
        raise ValueError(f"{n_frames} frames cannot make three blocks with a gap of {gap}")
    total = sum(fractions)
    n_train = max(1, int(round(usable * fractions[0] / total)))
    n_val = max(1, int(round(usable * fractions[1] / total)))
    n_test = usable - n_train - n_val
    if n_test < 1:
        n_train -= 1 - n_test
        n_test = 1
    start_val = n_train + gap
    start_test = start_val + n_val + gap
    return {
        "train": np.arange(0, n_train),
        "val": np.arange(start_val, start_val + n_val),
        "test": np.arange(start_test, start_test + n_test),
    }
