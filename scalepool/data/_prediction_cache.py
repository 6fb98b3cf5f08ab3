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
    """Branch and reference forces of F frames of N atoms (validated on construction).

    Attributes
    ----------
    forces_ref : (F, N, 3) eV/Å, or ``None`` in a label-free view
        (:meth:`without_labels`), which is what a deployable router may see
    branches : ``{name: (F, N, 3) eV/Å}``
    numbers : (N,) int atomic numbers
    positions : (F, N, 3) Å
    cell : (F, 3, 3) Å rows, or ``None``
    split : (F,) int, codes of ``scalepool.data.keys.SPLIT_CODES``
    anchors : ``(name at s=0, name at s=1)``
    meta : JSON-serialisable dict
    """

    forces_ref: np.ndarray | None
    branches: dict[str, np.ndarray]
    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray | None
    split: np.ndarray
    anchors: tuple[str, str] = ("short", "long")
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.positions = np.asarray(self.positions, dtype=np.float64)
        if self.positions.ndim != 3 or self.positions.shape[-1] != 3:
            raise PredictionCacheError(f"positions must have shape (F, N, 3), got {self.positions.shape}")
        shape = self.positions.shape
        n_frames, n_atoms, _ = shape
        if n_frames == 0 or n_atoms == 0:
            raise PredictionCacheError(f"prediction cache is empty: {n_frames} frames of {n_atoms} atoms")
        _finite(K.POSITIONS, self.positions)
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
        self.anchors = tuple(self.anchors)
        if len(self.anchors) != 2 or any(a not in branches for a in self.anchors):
            raise PredictionCacheError(
                f"anchors {self.anchors} must name two branches; the cache has branches {sorted(branches)}"
            )
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

    # ------------------------------------------------------------------ basics
    @property
    def n_frames(self) -> int:
        return self.positions.shape[0]

    @property
    def n_atoms(self) -> int:
        return self.positions.shape[1]

    @property
    def has_labels(self) -> bool:
        return self.forces_ref is not None

    def anchor_forces(self) -> tuple[np.ndarray, np.ndarray]:
        """``(F_0, F_1)``: the anchor branches' forces, each (F, N, 3) eV/Å."""
        return self.branches[self.anchors[0]], self.branches[self.anchors[1]]

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
            )
        except PredictionCacheError as err:
            raise PredictionCacheError(f"{path}: {err}") from err
