"""FrameSet: the in-memory dataset (fixed or ragged layout), its validation, npz I/O and splits.

Two layouts share one class:

- **fixed**: every frame holds the same atoms in the same order (a trajectory):
  ``positions (F, N, 3)``, ``numbers (N,)``, ``cell (F, 3, 3)`` or none.
- **ragged**: frames differ in atom count, species and order (independent
  configurations, several systems): ``positions (T, 3)`` concatenated over
  frames, ``numbers (T,)``, ``atom_counts (F,)`` (npz key ``n_atoms``, whose
  presence marks the layout), per-frame ``cell (F, 3, 3)`` and ``pbc (F, 3)``.

Code that must take both reads the uniform accessors: :attr:`FrameSet.atom_counts`,
:attr:`~FrameSet.offsets`, :meth:`~FrameSet.frame_slices`, :meth:`~FrameSet.frame`,
:attr:`~FrameSet.positions_flat`, :attr:`~FrameSet.forces_flat`,
:attr:`~FrameSet.numbers_flat`, :attr:`~FrameSet.cells`, :attr:`~FrameSet.pbc`,
:meth:`~FrameSet.atom_index`.  The fixed-layout-only attributes (``positions``,
``forces``, ``numbers``, ``cell``, ``force_parts``, ``n_atoms``) raise
:class:`RaggedLayoutError` on ragged data, naming the accessor to use instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._files import write_npz
from . import _keys as K
from ._atoms import atoms_fields
from ._npz import _check_finite, _numeric, _read_meta, _read_npz
from ._ragged import RaggedLayoutError, validate_fixed, validate_ragged
from ._sanity import DatasetError, resolve_check
from ._sanity import check_physics as run_physics_checks
from ._splits import random_split, time_block_split

#: Fixed-layout attributes and the uniform accessor to use on ragged data.
_INSTEAD = {
    "positions": "positions_flat (T, 3) with offsets, or frame(i)",
    "forces": "forces_flat (T, 3) with offsets, or frame(i)",
    "numbers": "numbers_flat (T,) with offsets, or frame(i)",
    "cell": "cells (F, 3, 3) with pbc (F, 3)",
    "force_parts": "frame(i) (ragged datasets hold no force decomposition)",
    "n_atoms": "atom_counts (F,) or n_atoms_total",
}


class NotAFileError(DatasetError, IsADirectoryError):
    """A path that should be a data file is a directory (a DatasetError and an IsADirectoryError)."""


class FrameSet:
    """A set of frames with reference forces, in the fixed or the ragged layout.

    Fixed layout (``atom_counts`` not given)
        positions : (F, N, 3) float64, Å
        forces : (F, N, 3) float32, eV/Å, total reference force
        numbers : (N,) int, atomic numbers
        cell : (F, 3, 3) float64, Å, rows are cell vectors; ``None`` for a
            non-periodic system
        force_parts : ``{part: (F, N, 3) eV/Å}``, optional decomposition whose sum
            should equal ``forces`` (e.g. ``bonded``, ``direct``, ``reciprocal``)

    Ragged layout (``atom_counts`` given)
        positions : (T, 3) float64, Å, frames back to back (T = sum of atom_counts)
        forces : (T, 3) float32, eV/Å
        numbers : (T,) int
        atom_counts : (F,) int, atoms of each frame (npz key ``n_atoms``)
        cell : (F, 3, 3) float64, Å, rows zero on non-periodic axes (``None``: all open)
        pbc : (F, 3) bool (default: periodic where the cell row is non-zero);
            each frame is fully periodic or fully open

    Both layouts
        energy : (F,) float64, eV, or ``None``
        stress : (F, 3, 3) float64, eV/Å^3, or ``None`` (periodic frames only)
        meta : JSON-serialisable dict (generator, parameters, versions, seed)
    """

    def __init__(
        self,
        positions,
        forces,
        numbers,
        cell=None,
        energy=None,
        force_parts: dict[str, np.ndarray] | None = None,
        meta: dict[str, Any] | None = None,
        *,
        atom_counts=None,
        pbc=None,
        stress=None,
    ) -> None:
        force_parts = {} if force_parts is None else force_parts
        meta = {} if meta is None else meta
        if forces is None:
            raise DatasetError("forces are missing: scalepool datasets need reference forces")
        self._ragged = atom_counts is not None
        if self._ragged:
            if force_parts:
                raise DatasetError("ragged datasets hold no force decomposition (force_parts)")
            fields = validate_ragged(positions, forces, numbers, atom_counts, cell, pbc)
            self._positions, self._forces, self._numbers = (
                fields["positions"],
                fields["forces"],
                fields["numbers"],
            )
            self._counts, self._cell, self._pbc = fields["atom_counts"], fields["cell"], fields["pbc"]
            self._force_parts = {}
        else:
            if pbc is not None:
                raise DatasetError("pbc applies to the ragged layout only (fixed layout: cell or None)")
            self._init_fixed(positions, forces, numbers, cell, force_parts)
        n_frames = self.n_frames
        self.energy = energy
        if self.energy is not None:
            self.energy = np.asarray(self.energy, dtype=np.float64).reshape(-1)
            if self.energy.shape != (n_frames,):
                raise DatasetError(f"energy must have shape ({n_frames},), got {self.energy.shape}")
            _check_finite(K.ENERGY, self.energy)
        self.stress = None if stress is None else np.asarray(stress, dtype=np.float64)
        if self.stress is not None:
            if self.stress.shape != (n_frames, 3, 3):
                raise DatasetError(
                    f"stress must have shape ({n_frames}, 3, 3) eV/Å^3, got {self.stress.shape}"
                )
            _check_finite(K.STRESS, self.stress)
            open_frames = np.flatnonzero(~self.pbc.all(axis=1))
            if len(open_frames):
                raise DatasetError(
                    f"stress given for non-periodic frame {int(open_frames[0])}: stress is defined for "
                    "periodic frames only"
                )
        self.meta = meta
        if not isinstance(self.meta, dict):
            raise DatasetError(f"meta must be a dict (a JSON object), got {type(self.meta).__name__}")
        json.dumps(self.meta)  # fail now, not when saving, if meta is not JSON

    def _init_fixed(self, positions, forces, numbers, cell, force_parts) -> None:
        fields = validate_fixed(positions, forces, numbers, cell, force_parts)
        self._positions, self._forces, self._numbers = (
            fields["positions"],
            fields["forces"],
            fields["numbers"],
        )
        self._cell, self._force_parts = fields["cell"], fields["force_parts"]
        n_frames = len(self._positions)
        self._counts = np.full(n_frames, self._positions.shape[1], dtype=np.int64)
        self._pbc = np.full((n_frames, 3), self._cell is not None)

    # ------------------------------------------------- fixed-layout attributes
    def _fixed(self, name: str):
        if self._ragged:
            raise RaggedLayoutError(
                f"FrameSet.{name} exists for the fixed layout only (same atoms in every frame); this dataset "
                f"is ragged ({self.n_frames} frames of {self._counts.min()}..{self._counts.max()} atoms): "
                f"use {_INSTEAD[name]}"
            )
        return getattr(self, "_" + name)

    positions = property(lambda self: self._fixed("positions"), doc="(F, N, 3) Å; fixed layout only")
    forces = property(lambda self: self._fixed("forces"), doc="(F, N, 3) eV/Å; fixed layout only")
    numbers = property(lambda self: self._fixed("numbers"), doc="(N,) atomic numbers; fixed layout only")
    cell = property(lambda self: self._fixed("cell"), doc="(F, 3, 3) Å or None; fixed layout only")
    force_parts = property(lambda self: self._fixed("force_parts"), doc="{part: (F, N, 3) eV/Å}; fixed only")

    @property
    def n_atoms(self) -> int:
        """Atoms per frame (fixed layout only; ragged: :attr:`atom_counts`)."""
        if self._ragged:
            self._fixed("n_atoms")
        return self._positions.shape[1]

    # ------------------------------------------------------ uniform accessors
    @property
    def ragged(self) -> bool:
        """True for the ragged layout (frames may differ in atoms)."""
        return self._ragged

    @property
    def n_frames(self) -> int:
        return len(self._counts)

    @property
    def atom_counts(self) -> np.ndarray:
        """(F,) int, atoms of each frame."""
        return self._counts

    @property
    def n_atoms_total(self) -> int:
        """Atoms summed over frames (T)."""
        return int(self._counts.sum())

    @property
    def offsets(self) -> np.ndarray:
        """(F + 1,) int: frame ``f`` holds flat atoms ``offsets[f]:offsets[f + 1]``."""
        return np.concatenate([[0], np.cumsum(self._counts)]).astype(np.int64)

    def frame_slices(self) -> list[slice]:
        """One slice into the flat (T, ...) arrays per frame."""
        off = self.offsets
        return [slice(int(off[f]), int(off[f + 1])) for f in range(self.n_frames)]

    def atom_index(self, indices=None) -> np.ndarray:
        """(n,) flat atom indices of the frames ``indices`` (all when None), concatenated in that order."""
        idx = np.arange(self.n_frames) if indices is None else np.atleast_1d(np.asarray(indices))
        off = self.offsets
        if len(idx) == 0:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(off[i], off[i + 1]) for i in idx])

    @property
    def positions_flat(self) -> np.ndarray:
        """(T, 3) float64 Å, frames back to back."""
        return self._positions if self._ragged else self._positions.reshape(-1, 3)

    @property
    def forces_flat(self) -> np.ndarray:
        """(T, 3) float32 eV/Å, frames back to back."""
        return self._forces if self._ragged else self._forces.reshape(-1, 3)

    @property
    def numbers_flat(self) -> np.ndarray:
        """(T,) int64 atomic numbers, frames back to back."""
        return self._numbers if self._ragged else np.tile(self._numbers, self.n_frames)

    @property
    def cells(self) -> np.ndarray:
        """(F, 3, 3) float64 Å; zero rows on non-periodic axes (all zero for an open frame)."""
        if self._cell is None:
            return np.zeros((self.n_frames, 3, 3))
        return self._cell

    @property
    def pbc(self) -> np.ndarray:
        """(F, 3) bool, periodic axes of each frame."""
        return self._pbc

    @property
    def periodic(self) -> bool:
        """Every frame is fully periodic."""
        return bool(self._pbc.all())

    def species(self) -> list[int]:
        """Sorted atomic numbers present in any frame."""
        return sorted(set(np.unique(self._numbers).tolist()))

    def species_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """``(species (S,), counts (F, S))``: atoms of each species in each frame."""
        species = np.unique(self._numbers)
        if not self._ragged:
            counts = (self._numbers[:, None] == species[None, :]).sum(axis=0)
            return species, np.tile(counts, (self.n_frames, 1))
        column = np.searchsorted(species, self._numbers)
        frame = np.repeat(np.arange(self.n_frames), self._counts)
        counts = np.zeros((self.n_frames, len(species)), dtype=np.int64)
        np.add.at(counts, (frame, column), 1)
        return species, counts

    def frame(self, index: int) -> FrameSet:
        """Frame ``index`` as a one-frame fixed-layout FrameSet (cell None when open)."""
        index = int(index)
        if not -self.n_frames <= index < self.n_frames:
            raise IndexError(f"frame {index} out of range for {self.n_frames} frames")
        if not self._ragged:
            return self[index]
        index %= self.n_frames
        sl = self.frame_slices()[index]
        periodic = bool(self._pbc[index].all())
        return FrameSet(
            positions=self._positions[None, sl],
            forces=self._forces[None, sl],
            numbers=self._numbers[sl].copy(),
            cell=self._cell[index : index + 1] if periodic else None,
            energy=None if self.energy is None else self.energy[index : index + 1],
            stress=None if self.stress is None else self.stress[index : index + 1],
            meta=dict(self.meta),
        )

    def groups(self) -> list[tuple[np.ndarray, FrameSet]]:
        """``[(frame indices, fixed-layout FrameSet)]``: frames with the same atoms and boundaries together."""
        if not self._ragged:
            return [(np.arange(self.n_frames), self)]
        keys: dict[tuple, list[int]] = {}
        for f, sl in enumerate(self.frame_slices()):
            keys.setdefault((self._numbers[sl].tobytes(), bool(self._pbc[f].all())), []).append(f)
        out = []
        for (_, periodic), members in keys.items():
            idx = np.asarray(members)
            atoms = self.atom_index(idx)
            n = int(self._counts[idx[0]])
            out.append((idx, FrameSet(
                positions=self._positions[atoms].reshape(len(idx), n, 3),
                forces=self._forces[atoms].reshape(len(idx), n, 3),
                numbers=self._numbers[atoms[:n]].copy(),
                cell=self._cell[idx] if periodic else None,
                energy=None if self.energy is None else self.energy[idx],
                stress=None if self.stress is None else self.stress[idx],
                meta=dict(self.meta),
            )))  # fmt: skip
        return out

    def __len__(self) -> int:
        return self.n_frames

    def __repr__(self) -> str:
        layout = "ragged" if self._ragged else f"fixed, {self._counts[0]} atoms"
        return f"FrameSet({self.n_frames} frames, {layout}, species {self.species()})"

    def __getitem__(self, index) -> FrameSet:
        """Frames selected by an int, slice or index array, as a new FrameSet of the same layout."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        stress = None if self.stress is None else self.stress[index]
        energy = None if self.energy is None else self.energy[index]
        if self._ragged:
            idx = np.arange(self.n_frames)[index]
            atoms = self.atom_index(idx)
            return FrameSet(
                positions=self._positions[atoms], forces=self._forces[atoms], numbers=self._numbers[atoms],
                atom_counts=self._counts[idx], cell=None if self._cell is None else self._cell[idx],
                pbc=self._pbc[idx], energy=energy, stress=stress, meta=dict(self.meta),
            )  # fmt: skip
        return FrameSet(
            positions=self._positions[index],
            forces=self._forces[index],
            numbers=self._numbers.copy(),
            cell=None if self._cell is None else self._cell[index],
            energy=energy,
            force_parts={k: v[index] for k, v in self._force_parts.items()},
            meta=dict(self.meta),
            stress=stress,
        )

    # --------------------------------------------------------------- splits
    def split_indices(
        self,
        fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
        gap: int = 0,
        mode: str = "time",
        seed: int = 0,
    ) -> dict[str, np.ndarray]:
        """Train/val/test frame indices: contiguous time blocks (:func:`time_block_split`, the
        default, for trajectories) or ``mode="random"`` (:func:`random_split`, seeded, for
        independent configurations; ``gap`` must be 0)."""
        if mode == "time":
            return time_block_split(self.n_frames, fractions, gap)
        if mode == "random":
            if gap:
                raise ValueError(f"a random split has no time gap; got gap={gap}")
            return random_split(self.n_frames, fractions, seed)
        raise ValueError(f"split mode must be 'time' or 'random', got {mode!r}")

    def split(
        self, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), gap: int = 0
    ) -> dict[str, FrameSet]:
        """``{"train", "val", "test"}`` FrameSets in time order, never shuffled."""
        return {name: self[idx] for name, idx in self.split_indices(fractions, gap).items()}

    # ---------------------------------------------------------------- npz I/O
    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            K.POSITIONS: self._positions,
            K.FORCES: self._forces,
            K.NUMBERS: self._numbers,
            K.META: np.array(json.dumps(self.meta, sort_keys=True)),
        }
        if self._ragged:
            arrays[K.N_ATOMS] = self._counts
            arrays[K.PBC] = self._pbc
            arrays[K.CELL] = self.cells
        elif self._cell is not None:
            arrays[K.CELL] = self._cell
        if self.energy is not None:
            arrays[K.ENERGY] = self.energy
        if self.stress is not None:
            arrays[K.STRESS] = self.stress
        for part, value in self._force_parts.items():
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
        """Read a dataset ``.npz`` (either layout); errors name the file and the missing or malformed array.

        ``check_physics``: run the physical sanity checks of :mod:`scalepool.data._sanity`
        (close contacts, density, cell, force magnitudes, periodic meta without a cell):
        ``True`` refuses what no real dataset shows (:class:`PhysicsError`) and warns
        about the rest, ``"strict"`` refuses both, ``False`` skips them.  Ragged data
        are checked per group of frames with the same atoms.

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
        for key in (K.POSITIONS, K.FORCES, K.CELL, K.ENERGY, K.STRESS):
            if key in arrays:
                fields[key] = _numeric(path, key, arrays[key])
        numbers = _numeric(path, K.NUMBERS, arrays[K.NUMBERS], kinds="iu")
        ragged = {}
        if K.N_ATOMS in arrays:
            ragged["atom_counts"] = _numeric(path, K.N_ATOMS, arrays[K.N_ATOMS], kinds="iu")
            if K.PBC in arrays:
                ragged["pbc"] = _numeric(path, K.PBC, arrays[K.PBC], kinds="bui")
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
                stress=fields.get(K.STRESS),
                **ragged,
            )
        except (DatasetError, ValueError, TypeError) as err:
            raise DatasetError(f"{path}: {err}") from err
        if run_checks:
            frames.check_physics(source=path, strict=strict)
        return frames

    def check_physics(self, source=None, strict: bool = False) -> None:
        """:func:`scalepool.data.check_physics` on this dataset (ragged: per group of equal frames)."""
        if not self._ragged:
            run_physics_checks(self, source=source, strict=strict)
            return
        for idx, group in self.groups():
            where = f"{source} frames {_listing(idx)}" if source is not None else f"frames {_listing(idx)}"
            run_physics_checks(group, source=where, strict=strict)

    @classmethod
    def from_atoms(
        cls,
        images,
        energy_key: str | None = None,
        forces_key: str | None = None,
        stress_key: str | None = None,
        source: str | os.PathLike | None = None,
        ragged: bool | None = None,
        stride: int = 1,
    ) -> FrameSet:
        """A FrameSet from ``ase.Atoms`` objects (labels looked up as in :func:`scalepool.data.read_frames`).

        ``ragged=None`` gives the fixed layout when every frame holds the same atoms in the
        same order with the same boundaries, else the ragged layout.  ``source`` names the
        file in error messages (each also names the frame; frame ``i`` of ``images`` is frame
        ``i * stride`` of the file).  Label keys: :func:`scalepool.data._atoms.atoms_fields`.
        """
        fields = atoms_fields(images, energy_key, forces_key, stress_key, source, ragged, stride)
        try:
            return cls(**fields)
        except DatasetError as err:
            raise DatasetError(f"{'atoms' if source is None else source}: {err}") from err

    @classmethod
    def concatenate(cls, framesets: list[FrameSet]) -> FrameSet:
        """Frames of several FrameSets in order: fixed layout when every frame holds the same atoms and
        boundaries (force parts kept where all have them), else ragged.  Meta of the first."""
        if not framesets:
            raise DatasetError("nothing to concatenate: no FrameSet given")
        first = framesets[0]
        energy = (
            None
            if any(f.energy is None for f in framesets)
            else np.concatenate([f.energy for f in framesets])
        )
        stress = (
            None
            if any(f.stress is None for f in framesets)
            else np.concatenate([f.stress for f in framesets])
        )
        fixed = all(not f.ragged for f in framesets) and all(
            np.array_equal(f.numbers, first.numbers) and (f.cell is None) == (first.cell is None)
            for f in framesets
        )
        if fixed:
            parts = set.intersection(*(set(f.force_parts) for f in framesets))
            return cls(
                positions=np.concatenate([f.positions for f in framesets]),
                forces=np.concatenate([f.forces for f in framesets]),
                numbers=first.numbers.copy(),
                cell=None if first.cell is None else np.concatenate([f.cell for f in framesets]),
                energy=energy, stress=stress, meta=dict(first.meta),
                force_parts={p: np.concatenate([f.force_parts[p] for f in framesets]) for p in sorted(parts)},
            )  # fmt: skip
        return cls(
            positions=np.concatenate([f.positions_flat for f in framesets]),
            forces=np.concatenate([f.forces_flat for f in framesets]),
            numbers=np.concatenate([f.numbers_flat for f in framesets]),
            atom_counts=np.concatenate([f.atom_counts for f in framesets]),
            cell=np.concatenate([f.cells for f in framesets]),
            pbc=np.concatenate([f.pbc for f in framesets]),
            energy=energy, stress=stress, meta=dict(first.meta),
        )  # fmt: skip

    def checksum(self) -> str:
        """SHA-256 of positions, forces, numbers and cell (ragged: also atom counts and pbc)."""
        digest = hashlib.sha256()
        extra = (self._counts, self._pbc) if self._ragged else ()
        for array in (self._positions, self._forces, self._numbers, self._cell, *extra):
            if array is not None:
                digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


def _listing(idx: np.ndarray, shown: int = 6) -> str:
    text = ", ".join(str(int(i)) for i in idx[:shown])
    return f"[{text}{', ...' if len(idx) > shown else ''}]"
