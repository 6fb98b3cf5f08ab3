"""The prediction cache: branch forces and reference forces of one dataset.

The second file contract beside the dataset (:class:`FrameSet`).
``scalepool predict`` builds one :class:`PredictionCache` from trained runs and
saves it as one compressed ``.npz``; the whole scale layer (oracles, pools,
routers, tables), the metrics and the studies load it through
:meth:`PredictionCache.load` and never touch a model again.

========================  ============  ==========================================
array                     shape         meaning
========================  ============  ==========================================
``forces_ref``            (F, N, 3)     eV/Å, reference forces
``forces_<branch>``       (F, N, 3)     eV/Å, one per branch (``forces_short``...)
``numbers``               (N,)          atomic numbers
``positions``             (F, N, 3)     Å
``cell``                  (F, 3, 3)     Å, rows are cell vectors (optional:
                                        absent for open boundaries)
``split``                 (F,)          int, 0 train / 1 val / 2 test
``meta``                  ()            JSON string, see below
========================  ============  ==========================================

``meta`` holds at least ``{"branches": [...], "anchors": {"0": "short", "1":
"long"}}``: the branch names (each has a ``forces_<name>`` array) and the
branches that are the scale anchors s = 0 and s = 1.  Several runs of one
branch get distinct names (``short``, ``short_2``...): a null pair routes
between two of them.  ``scalepool predict`` adds ``runs``, ``model_file``,
``frame_index`` (the dataset frame of every row; frames in split gaps are left
out), ``dataset_checksum``, ``dataset_path``, ``split_fractions``,
``split_gap``, ``created``, ``versions`` and ``git_commit``; anything else is
carried along untouched.

**Ragged layout** (frames of different atom counts, species or boundaries; the
presence of ``n_atoms`` marks it, as in the dataset file):

========================  ============  ==========================================
array                     shape         meaning
========================  ============  ==========================================
``forces_ref``            (T, 3)        eV/Å, frames back to back (T = sum n_atoms)
``forces_<branch>``       (T, 3)        eV/Å, one per branch
``numbers``               (T,)          atomic numbers
``positions``             (T, 3)        Å
``n_atoms``               (F,)          int, atoms of each frame
``cell``                  (F, 3, 3)     Å, zero rows for open frames
``pbc``                   (F, 3)        bool, each frame fully periodic or open
``split``                 (F,)          int, 0 train / 1 val / 2 test
``meta``                  ()            JSON string, as above
========================  ============  ==========================================

Code that takes both layouts reads the uniform accessors: :attr:`~PredictionCache.counts`
(F,), :attr:`~PredictionCache.offsets` (F + 1,), :attr:`~PredictionCache.atom_frame`
(T,), :meth:`~PredictionCache.atom_index`, :meth:`~PredictionCache.take` (the frames of
a per-atom array in the cache's own layout), :attr:`~PredictionCache.numbers_flat`,
:attr:`~PredictionCache.positions_flat`, :meth:`~PredictionCache.frame_geometry`.  A
fixed cache keeps exactly its arrays and numbers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .._files import write_npz
from . import _keys as K
from ._ragged import RaggedLayoutError

_FORCE_DTYPE = np.float32


class PredictionCacheError(ValueError):
    """A prediction cache is malformed; the message says what and where."""


def split_code(split: str | int) -> int:
    if isinstance(split, (int, np.integer)) and int(split) in K.SPLIT_CODES.values():
        return int(split)
    if split in K.SPLIT_CODES:
        return K.SPLIT_CODES[split]
    raise ValueError(f"split must be one of {sorted(K.SPLIT_CODES)} (or its code), got {split!r}")


def _finite(name: str, array: np.ndarray) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        raise PredictionCacheError(
            f"{name} holds {int(bad.sum())} non-finite value(s); first at index {np.argwhere(bad)[0].tolist()}"
        )


@dataclasses.dataclass(eq=False)
class PredictionCache:
    """Branch and reference forces of F frames (validated on construction).

    Attributes (fixed layout: F frames of the same N atoms; ragged layout, when
    ``atom_counts`` is given: T atoms back to back, shapes in brackets)
    ----------
    forces_ref : (F, N, 3) [(T, 3)] eV/Å, or ``None`` in a label-free view
        (:meth:`without_labels`), which is what a deployable router may see
    branches : ``{name: (F, N, 3) [(T, 3)] eV/Å}``
    numbers : (N,) [(T,)] int atomic numbers
    positions : (F, N, 3) [(T, 3)] Å
    cell : (F, 3, 3) Å rows, or ``None`` [always (F, 3, 3), zero rows on open frames]
    split : (F,) int, codes of ``scalepool.data.keys.SPLIT_CODES``
    anchors : ``(name at s=0, name at s=1)``
    meta : JSON-serialisable dict
    atom_counts : ``None`` [(F,) int, atoms of each frame]
    pbc : ``None`` [(F, 3) bool, default: periodic where the cell row is non-zero]
    """

    forces_ref: np.ndarray | None
    branches: dict[str, np.ndarray]
    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray | None
    split: np.ndarray
    anchors: tuple[str, str] = ("short", "long")
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    atom_counts: np.ndarray | None = None
    pbc: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.atom_counts is not None:
            self._init_ragged()
        else:
            if self.pbc is not None:
                raise PredictionCacheError(
                    "pbc applies to the ragged layout only (fixed layout: cell or None)"
                )
            self._init_fixed()
        self.anchors = tuple(self.anchors)
        if len(self.anchors) != 2 or any(a not in self.branches for a in self.anchors):
            raise PredictionCacheError(
                f"anchors {self.anchors} must name two branches; the cache has branches {sorted(self.branches)}"
            )
        n_frames = self.n_frames
        self.split = np.asarray(self.split)
        if self.split.shape != (n_frames,) or not np.issubdtype(self.split.dtype, np.integer):
            raise PredictionCacheError(
                f"split must be integers of shape ({n_frames},), got {self.split.dtype} {self.split.shape}"
            )
        unknown = sorted(set(np.unique(self.split).tolist()) - set(K.SPLIT_CODES.values()))
        if unknown:
            raise PredictionCacheError(f"split holds unknown code(s) {unknown}; codes are {K.SPLIT_CODES}")
        self.split = self.split.astype(np.int64)
        json.dumps(self.meta)

    def _checked_forces(self, shape: tuple[int, ...]) -> None:
        """forces_ref and every branch as float32 of ``shape``, finite."""
        if self.forces_ref is not None:
            self.forces_ref = np.asarray(self.forces_ref, dtype=_FORCE_DTYPE)
            if self.forces_ref.shape != shape:
                raise PredictionCacheError(
                    f"{K.FORCES_REF} has shape {self.forces_ref.shape}, expected {shape}"
                )
            _finite(K.FORCES_REF, self.forces_ref)
        branches = {}
        for name, value in self.branches.items():
            value = np.asarray(value, dtype=_FORCE_DTYPE)
            if value.shape != shape:
                raise PredictionCacheError(
                    f"branch '{name}' forces have shape {value.shape}, expected {shape}"
                )
            _finite(K.FORCE_PART_PREFIX + name, value)
            branches[name] = value
        self.branches = branches

    def _init_ragged(self) -> None:
        """Validate the ragged layout: (T, 3) positions and forces, (T,) numbers, (F,) counts."""
        counts = np.asarray(self.atom_counts)
        if counts.ndim != 1 or counts.dtype.kind not in "iu" or len(counts) == 0:
            raise PredictionCacheError(
                f"'{K.N_ATOMS}' must be a non-empty 1-D integer array (F,), got {counts.dtype} {counts.shape}"
            )
        if (counts < 1).any():
            raise PredictionCacheError(
                f"frame {int(np.argmax(counts < 1))} has {int(counts.min())} atoms ('{K.N_ATOMS}')"
            )
        self.atom_counts = counts.astype(np.int64)
        n_frames, total = len(counts), int(counts.sum())
        self.positions = np.asarray(self.positions, dtype=np.float64)
        if self.positions.shape != (total, 3):
            raise PredictionCacheError(
                f"ragged {K.POSITIONS} must have shape (T, 3) = ({total}, 3) (T = sum of '{K.N_ATOMS}'), "
                f"got {self.positions.shape}"
            )
        _finite(K.POSITIONS, self.positions)
        self._checked_forces((total, 3))
        self.numbers = np.asarray(self.numbers)
        if self.numbers.shape != (total,) or not np.issubdtype(self.numbers.dtype, np.integer):
            raise PredictionCacheError(
                f"ragged numbers must be integers of shape ({total},), got {self.numbers.dtype} {self.numbers.shape}"
            )
        self.numbers = self.numbers.astype(np.int64)
        cell = np.zeros((n_frames, 3, 3)) if self.cell is None else np.asarray(self.cell, dtype=np.float64)
        if cell.shape != (n_frames, 3, 3):
            raise PredictionCacheError(f"ragged cell must have shape ({n_frames}, 3, 3), got {cell.shape}")
        _finite(K.CELL, cell)
        pbc = (np.abs(cell).sum(axis=2) > 0) if self.pbc is None else np.asarray(self.pbc)
        if pbc.shape != (n_frames, 3):
            raise PredictionCacheError(f"'{K.PBC}' must have shape ({n_frames}, 3), got {pbc.shape}")
        pbc = pbc.astype(bool)
        partial = np.flatnonzero(pbc.any(axis=1) & ~pbc.all(axis=1))
        if len(partial):
            f = int(partial[0])
            raise PredictionCacheError(
                f"frame {f} is periodic along some axes only (pbc={pbc[f].tolist()}); frames are fully "
                "periodic or open"
            )
        thin = np.flatnonzero(pbc.all(axis=1) & (np.abs(np.linalg.det(cell)) < 1e-6))
        if len(thin):
            raise PredictionCacheError(f"cell of periodic frame {int(thin[0])} is degenerate")
        self.cell, self.pbc = cell, pbc

    def _init_fixed(self) -> None:
        self.positions = np.asarray(self.positions, dtype=np.float64)
        if self.positions.ndim != 3 or self.positions.shape[-1] != 3:
            raise PredictionCacheError(f"positions must have shape (F, N, 3), got {self.positions.shape}")
        shape = self.positions.shape
        n_frames, n_atoms, _ = shape
        if n_frames == 0 or n_atoms == 0:
            raise PredictionCacheError(f"prediction cache is empty: {n_frames} frames of {n_atoms} atoms")
        _finite(K.POSITIONS, self.positions)
        self._checked_forces(shape)
        self.numbers = np.asarray(self.numbers)
        if self.numbers.shape != (n_atoms,) or not np.issubdtype(self.numbers.dtype, np.integer):
            raise PredictionCacheError(
                f"numbers must be integers of shape ({n_atoms},), got {self.numbers.dtype} {self.numbers.shape}"
            )
        self.numbers = self.numbers.astype(np.int64)
        if self.cell is not None:
            self.cell = np.asarray(self.cell, dtype=np.float64)
            if self.cell.shape == (3, 3):
                self.cell = np.broadcast_to(self.cell, (n_frames, 3, 3)).copy()
            if self.cell.shape != (n_frames, 3, 3):
                raise PredictionCacheError(f"cell must have shape ({n_frames}, 3, 3), got {self.cell.shape}")
            _finite(K.CELL, self.cell)

    # ------------------------------------------------------------------ basics
    @property
    def ragged(self) -> bool:
        """Whether the cache holds the ragged layout (frames back to back)."""
        return self.atom_counts is not None

    @property
    def n_frames(self) -> int:
        return len(self.atom_counts) if self.ragged else self.positions.shape[0]

    @property
    def n_atoms(self) -> int:
        """Atoms per frame (fixed layout only; ragged caches: :attr:`counts`)."""
        if self.ragged:
            raise RaggedLayoutError(
                "PredictionCache.n_atoms: this cache is ragged (frames differ in atoms); use counts (F,) "
                "or n_atoms_total"
            )
        return self.positions.shape[1]

    @property
    def n_atoms_total(self) -> int:
        """T, the atoms summed over frames."""
        return int(self.counts.sum())

    @property
    def counts(self) -> np.ndarray:
        """(F,) int64, atoms of each frame (either layout)."""
        if self.ragged:
            return self.atom_counts
        return np.full(self.positions.shape[0], self.positions.shape[1], dtype=np.int64)

    @property
    def offsets(self) -> np.ndarray:
        """(F + 1,) int64: frame ``i`` holds flat rows ``offsets[i]:offsets[i + 1]``."""
        return np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    @property
    def atom_frame(self) -> np.ndarray:
        """(T,) int64, the frame of every atom in flat order (the frame index)."""
        return np.repeat(np.arange(self.n_frames, dtype=np.int64), self.counts)

    def atom_index(self, frames: np.ndarray | None = None) -> np.ndarray:
        """(T_sel,) int64 flat rows of the atoms of ``frames`` (all for ``None``), frame after frame."""
        offsets = self.offsets
        if frames is None:
            return np.arange(offsets[-1], dtype=np.int64)
        frames = np.atleast_1d(np.asarray(frames, dtype=np.int64))
        if frames.size == 0:
            return np.zeros(0, dtype=np.int64)
        starts, counts = offsets[frames], self.counts[frames]
        shift = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        return np.arange(int(counts.sum()), dtype=np.int64) + shift

    def take(self, array: np.ndarray, frames: np.ndarray | None = None) -> np.ndarray:
        """The frames ``frames`` of a per-atom array in this cache's layout.

        ``array`` is (F, N, ...) for a fixed cache (returns ``array[frames]``) or
        (T, ...) for a ragged one (returns the rows :meth:`atom_index` of those frames).
        """
        if frames is None:
            return array
        return array[self.atom_index(frames)] if self.ragged else array[frames]

    def flat(self, array: np.ndarray) -> np.ndarray:
        """A per-atom array ``(F, N, ...)`` or ``(T, ...)`` as ``(T, ...)`` in flat order."""
        array = np.asarray(array)
        return array if self.ragged else array.reshape(-1, *array.shape[2:])

    @property
    def numbers_flat(self) -> np.ndarray:
        """(T,) atomic numbers of every atom, flat order."""
        return self.numbers if self.ragged else np.tile(self.numbers, self.n_frames)

    @property
    def positions_flat(self) -> np.ndarray:
        """(T, 3) Å, flat order."""
        return self.flat(self.positions)

    @property
    def frame_periodic(self) -> np.ndarray:
        """(F,) bool, whether each frame is periodic."""
        if self.ragged:
            return self.pbc.all(axis=1)
        return np.full(self.n_frames, self.cell is not None)

    def frame_geometry(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(positions (n, 3) Å, numbers (n,), cell (3, 3) Å or None for an open frame)`` of frame ``i``."""
        if not self.ragged:
            return self.positions[i], self.numbers, None if self.cell is None else self.cell[i]
        lo, hi = self.offsets[i], self.offsets[i + 1]
        cell = self.cell[i] if self.pbc[i].all() else None
        return self.positions[lo:hi], self.numbers[lo:hi], cell

    @property
    def has_labels(self) -> bool:
        return self.forces_ref is not None

    def anchor_forces(self, frames: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(F_0, F_1)``: the anchor branches' forces of ``frames`` (all for ``None``), eV/Å,
        each (F, N, 3) (fixed) or (T, 3) (ragged), see :meth:`take`."""
        return tuple(self.take(self.branches[a], frames) for a in self.anchors)

    def frames(self, split: str | int | None = None) -> np.ndarray:
        """Indices of the frames of ``split`` (all frames for ``None``)."""
        if split is None:
            return np.arange(self.n_frames)
        return np.flatnonzero(self.split == split_code(split))

    def subset(self, index: np.ndarray) -> PredictionCache:
        """The frames ``index`` as a new cache (``meta['frame_index']`` is kept in sync)."""
        index = np.asarray(index, dtype=np.int64)
        meta = dict(self.meta)
        meta["frame_index"] = np.asarray(meta.get("frame_index", np.arange(self.n_frames)))[index].tolist()
        if self.ragged:
            atoms = self.atom_index(index)
            return PredictionCache(
                forces_ref=None if self.forces_ref is None else self.forces_ref[atoms],
                branches={k: v[atoms] for k, v in self.branches.items()},
                numbers=self.numbers[atoms],
                positions=self.positions[atoms],
                cell=self.cell[index],
                split=self.split[index],
                anchors=self.anchors,
                meta=meta,
                atom_counts=self.atom_counts[index],
                pbc=self.pbc[index],
            )
        return PredictionCache(
            forces_ref=None if self.forces_ref is None else self.forces_ref[index],
            branches={k: v[index] for k, v in self.branches.items()},
            numbers=self.numbers.copy(),
            positions=self.positions[index],
            cell=None if self.cell is None else self.cell[index],
            split=self.split[index],
            anchors=self.anchors,
            meta=meta,
        )

    def select(self, split: str | int, labels: bool = True) -> PredictionCache:
        """The frames of one split; ``labels=False`` also drops the reference forces."""
        index = self.frames(split)
        if index.size == 0:
            raise PredictionCacheError(f"the cache has no frames in split '{split}'")
        view = self.subset(index)
        return view if labels else view.without_labels()

    def without_labels(self) -> PredictionCache:
        """The same frames with ``forces_ref`` removed: what is known at inference."""
        return dataclasses.replace(self, forces_ref=None, meta=dict(self.meta))

    def split_names(self) -> list[str]:
        """Names of the splits present, in code order."""
        present = set(np.unique(self.split).tolist())
        return [name for name, code in sorted(K.SPLIT_CODES.items(), key=lambda kv: kv[1]) if code in present]

    # ------------------------------------------------------------------ I/O
    def to_arrays(self) -> dict[str, np.ndarray]:
        if self.forces_ref is None:
            raise PredictionCacheError("a label-free view cannot be saved as a prediction cache")
        meta = dict(self.meta)
        meta["branches"] = list(self.branches)
        meta["anchors"] = {"0": self.anchors[0], "1": self.anchors[1]}
        arrays = {
            K.FORCES_REF: self.forces_ref,
            K.NUMBERS: self.numbers,
            K.POSITIONS: self.positions,
            K.SPLIT: self.split,
            K.META: np.array(json.dumps(meta, sort_keys=True)),
        }
        if self.cell is not None:
            arrays[K.CELL] = self.cell
        if self.ragged:
            arrays[K.N_ATOMS], arrays[K.PBC] = self.atom_counts, self.pbc
        for name, value in self.branches.items():
            arrays[K.FORCE_PART_PREFIX + name] = value
        return arrays

    def save(self, path: str | os.PathLike) -> Path:
        """Write the cache as one compressed ``.npz`` (atomic rename)."""
        if Path(path).suffix != ".npz":
            raise PredictionCacheError(f"prediction caches end in .npz, got {path}")
        return write_npz(path, self.to_arrays())

    @classmethod
    def load(cls, path: str | os.PathLike) -> PredictionCache:
        """Read and validate a prediction cache; errors name the file and the array."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"prediction cache not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (zipfile.BadZipFile, EOFError, ValueError, OSError) as err:
            raise PredictionCacheError(f"{path} is not a readable .npz file: {err}") from err
        missing = [k for k in (K.FORCES_REF, K.NUMBERS, K.POSITIONS, K.SPLIT, K.META) if k not in arrays]
        if missing:
            raise PredictionCacheError(f"{path} lacks required array(s) {missing}; it holds {sorted(arrays)}")
        try:
            meta = json.loads(str(arrays[K.META]))
        except json.JSONDecodeError as err:
            raise PredictionCacheError(f"{path}: meta is not valid JSON: {err}") from err
        if not isinstance(meta, dict) or "branches" not in meta or "anchors" not in meta:
            raise PredictionCacheError(
                f"{path}: meta must be a JSON object with 'branches' and 'anchors' "
                f'(e.g. {{"anchors": {{"0": "short", "1": "long"}}}}), got keys '
                f"{sorted(meta) if isinstance(meta, dict) else type(meta).__name__}"
            )
        anchors = meta["anchors"]
        if not isinstance(anchors, dict) or set(anchors) != {"0", "1"}:
            raise PredictionCacheError(
                f"{path}: meta['anchors'] must map '0' and '1' to branches, got {anchors}"
            )
        on_disk = sorted(
            k[len(K.FORCE_PART_PREFIX) :]
            for k in arrays
            if k.startswith(K.FORCE_PART_PREFIX) and k != K.FORCES_REF
        )
        if sorted(meta["branches"]) != on_disk:
            raise PredictionCacheError(
                f"{path}: meta lists branches {sorted(meta['branches'])} but the file holds forces for {on_disk}"
            )
        try:
            return cls(
                forces_ref=arrays[K.FORCES_REF],
                branches={b: arrays[K.FORCE_PART_PREFIX + b] for b in meta["branches"]},
                numbers=arrays[K.NUMBERS],
                positions=arrays[K.POSITIONS],
                cell=arrays.get(K.CELL),
                split=arrays[K.SPLIT],
                anchors=(anchors["0"], anchors["1"]),
                meta={k: v for k, v in meta.items() if k not in ("branches", "anchors")},
                atom_counts=arrays.get(K.N_ATOMS),
                pbc=arrays.get(K.PBC),
            )
        except PredictionCacheError as err:
            raise PredictionCacheError(f"{path}: {err}") from err
