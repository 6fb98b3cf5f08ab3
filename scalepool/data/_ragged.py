"""Validation of the two dataset layouts: fixed (same atoms in every frame) and ragged (frames back to back)."""

from __future__ import annotations

import numpy as np

from . import _keys as K
from ._npz import _check_finite
from ._sanity import DatasetError

#: Stored force dtype: float32 (forces' own accuracy is far below its resolution); positions and
#: cells stay float64 so that a frame can be recomputed exactly by a reference engine.
_FORCE_DTYPE = np.float32


class RaggedLayoutError(DatasetError, AttributeError):
    """A fixed-layout attribute (``positions (F, N, 3)``...) was asked of a ragged dataset."""


def validate_ragged(positions, forces, numbers, atom_counts, cell, pbc) -> dict[str, np.ndarray]:
    """Checked, converted arrays of the ragged layout.

    positions : (T, 3) Å; forces : (T, 3) eV/Å; numbers : (T,) int in 1..118;
    atom_counts : (F,) int >= 1 summing to T; cell : (F, 3, 3) Å or None (all open);
    pbc : (F, 3) bool or None (periodic where a cell row is non-zero).  Each frame
    must be fully periodic (a full 3D cell) or fully open.

    Returns ``{"positions", "forces", "numbers", "atom_counts", "cell", "pbc"}``
    (cell always (F, 3, 3), zero for open frames).  Raises DatasetError naming
    the array and the first bad frame.
    """
    counts = np.asarray(atom_counts)
    if counts.ndim != 1 or counts.dtype.kind not in "iu":
        raise DatasetError(
            f"'{K.N_ATOMS}' must be a 1-D integer array (F,), got {counts.dtype} {counts.shape}"
        )
    counts = counts.astype(np.int64)
    if len(counts) == 0:
        raise DatasetError("dataset is empty: 0 frames")
    if (counts < 1).any():
        raise DatasetError(
            f"frame {int(np.argmax(counts < 1))} has {int(counts.min())} atoms ('{K.N_ATOMS}')"
        )
    total = int(counts.sum())
    n_frames = len(counts)
    positions = np.asarray(positions, dtype=np.float64)
    forces = np.asarray(forces, dtype=_FORCE_DTYPE)
    numbers = np.asarray(numbers)
    for name, array in ((K.POSITIONS, positions), (K.FORCES, forces)):
        if array.shape != (total, 3):
            raise DatasetError(
                f"ragged '{name}' must have shape (T, 3) = ({total}, 3) (T = sum of '{K.N_ATOMS}'), "
                f"got {array.shape}"
            )
    if numbers.shape != (total,):
        raise DatasetError(f"ragged '{K.NUMBERS}' must have shape ({total},), got {numbers.shape}")
    if not np.issubdtype(numbers.dtype, np.integer):
        raise DatasetError(f"numbers must be integers, got dtype {numbers.dtype}")
    numbers = numbers.astype(np.int64)
    bad = (numbers < 1) | (numbers > 118)
    if bad.any():
        atom = int(np.argmax(bad))
        frame = int(np.searchsorted(np.cumsum(counts), atom, side="right"))
        raise DatasetError(f"frame {frame}: atomic number {int(numbers[atom])} outside 1..118")
    _check_finite(K.POSITIONS, positions)
    _check_finite(K.FORCES, forces)
    cell = np.zeros((n_frames, 3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
    if cell.shape != (n_frames, 3, 3):
        raise DatasetError(f"ragged '{K.CELL}' must have shape ({n_frames}, 3, 3), got {cell.shape}")
    _check_finite(K.CELL, cell)
    nonzero = np.abs(cell).sum(axis=2) > 0  # (F, 3)
    pbc = nonzero if pbc is None else np.asarray(pbc)
    if pbc.shape != (n_frames, 3):
        raise DatasetError(f"'{K.PBC}' must have shape ({n_frames}, 3), got {pbc.shape}")
    pbc = pbc.astype(bool)
    partial = np.flatnonzero(pbc.any(axis=1) & ~pbc.all(axis=1))
    if len(partial):
        f = int(partial[0])
        raise DatasetError(
            f"frame {f} is periodic along some axes only (pbc={pbc[f].tolist()}); scalepool handles fully "
            "periodic or non-periodic frames"
        )
    periodic = pbc.all(axis=1)
    volume = np.abs(np.linalg.det(cell))
    thin = np.flatnonzero(periodic & (volume < 1e-6))
    if len(thin):
        f = int(thin[0])
        raise DatasetError(
            f"cell of periodic frame {f} is degenerate (volume {volume[f]:.3g} Å^3); periodic frames need a "
            "full 3D box"
        )
    return {"positions": positions, "forces": forces, "numbers": numbers, "atom_counts": counts,
            "cell": cell, "pbc": pbc}  # fmt: skip


def validate_fixed(positions, forces, numbers, cell, force_parts) -> dict:
    """Checked, converted arrays of the fixed layout (the checks FrameSet always made).

    positions : (F, N, 3) Å; forces : (F, N, 3) eV/Å; numbers : (N,) int in 1..118;
    cell : (F, 3, 3) or (3, 3) Å, or None; force_parts : ``{part: (F, N, 3) eV/Å}``.
    Returns ``{"positions", "forces", "numbers", "cell", "force_parts"}``.
    """
    positions = np.asarray(positions, dtype=np.float64)
    forces = np.asarray(forces, dtype=_FORCE_DTYPE)
    numbers = np.asarray(numbers)
    if positions.ndim != 3 or positions.shape[-1] != 3:
        raise DatasetError(f"positions must have shape (F, N, 3), got {positions.shape}")
    n_frames, n_atoms, _ = positions.shape
    if n_frames == 0 or n_atoms == 0:
        raise DatasetError(f"dataset is empty: {n_frames} frames of {n_atoms} atoms")
    if forces.shape != positions.shape:
        raise DatasetError(f"forces have shape {forces.shape} but positions have {positions.shape}")
    if numbers.shape != (n_atoms,):
        raise DatasetError(f"numbers must have shape ({n_atoms},), got {numbers.shape}")
    if not np.issubdtype(numbers.dtype, np.integer):
        raise DatasetError(f"numbers must be integers, got dtype {numbers.dtype}")
    numbers = numbers.astype(np.int64)
    if (numbers < 1).any() or (numbers > 118).any():
        raise DatasetError(f"atomic numbers must lie in 1..118, got {sorted(set(numbers.tolist()))}")
    if cell is not None:
        cell = np.asarray(cell, dtype=np.float64)
        if cell.shape == (3, 3):
            cell = np.broadcast_to(cell, (n_frames, 3, 3)).copy()
        if cell.shape != (n_frames, 3, 3):
            raise DatasetError(f"cell must have shape ({n_frames}, 3, 3), got {cell.shape}")
        _check_finite(K.CELL, cell)
        volume = np.abs(np.linalg.det(cell))
        if (volume < 1e-6).any():
            raise DatasetError(
                f"cell of frame {int(np.argmin(volume))} is degenerate (volume {volume.min():.3g} Å^3); "
                "periodic data need a full 3D box"
            )
    parts = {}
    for part, value in force_parts.items():
        value = np.asarray(value, dtype=_FORCE_DTYPE)
        if value.shape != positions.shape:
            raise DatasetError(f"force part '{part}' has shape {value.shape}, expected {positions.shape}")
        _check_finite(K.FORCE_PART_PREFIX + part, value)
        parts[part] = value
    _check_finite(K.POSITIONS, positions)
    _check_finite(K.FORCES, forces)
    return {"positions": positions, "forces": forces, "numbers": numbers, "cell": cell, "force_parts": parts}
