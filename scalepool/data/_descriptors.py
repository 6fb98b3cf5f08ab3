"""Close-contact descriptors: nearest-ion and nearest-counterion distances.

Every distance follows the minimum-image convention and is **exact** for any
cell, triclinic and strongly skewed ones included.  Wrapping a fractional
difference into [-0.5, 0.5) and converting back is only exact for orthorhombic
cells, so periodic distances are found in four steps:

1. the cell is Minkowski-reduced (same lattice, shortest basis vectors;
   :func:`ase.geometry.minkowski_reduce`), which leaves every minimum-image
   distance unchanged;
2. the fractional difference is wrapped in the reduced basis.  A wrapped
   vector no longer than h/2, half the smallest lattice-plane spacing, is the
   minimum image; a longer one belongs to a pair at least h/2 apart.  So a
   nearest-ion distance whose wrapped value is at most h/2 is final, and only
   atoms with no ion within h/2 (rare in a solution) go on;
3. their wrapped vectors are compared with the 26 neighbouring images
   ``n`` in {-1, 0, 1}^3;
4. the result is certified: an image ``n`` can only beat a candidate distance
   ``d`` if ``|n_k| <= 0.5 + d |b_k|`` for every k (``b_k`` the reciprocal
   vectors, rows of ``inv(cell).T``).  Pairs for which that bound allows
   ``|n_k| > 1`` are searched again over every image the bound allows.

Step 4 makes the result exact whatever the cell; steps 1-3 make it rare and
keep a frame of 1,500 atoms and 18 ions at a few milliseconds.

Ions are the atoms whose atomic number is in ``ion_numbers`` (Na+ and Cl- by
default, :data:`scalepool.units.ION_NUMBERS`).  An atom is never its own
nearest ion: the ion itself and its periodic images are excluded, so an ion
with no other ion in the system gets ``inf``, as does every atom of a system
without ions.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
from ase.geometry import minkowski_reduce

from ..units import CLOSE_CONTACT_CUTOFF, ION_NUMBERS
from ._frameset import FrameSet

#: Sign of the ionic charge of monatomic ions, by atomic number.
ION_CHARGE_SIGN: dict[int, int] = {
    3: +1,  # Li+
    11: +1,  # Na+
    19: +1,  # K+
    9: -1,  # F-
    17: -1,  # Cl-
    35: -1,  # Br-
    53: -1,  # I-
}

# Keys of the dictionary returned by :func:`frameset_descriptors`.
NEAREST_ION = "nearest_ion"  # (F, N) float64, Å
CLOSE_CONTACT = "close_contact"  # (F, N) bool
MIN_ION_ION = "min_ion_ion"  # (F,) float64, Å
NEAREST_COUNTERION = "nearest_counterion"  # (F, n_ions) float64, Å
ION_INDEX = "ion_index"  # (n_ions,) int64, atom index of each ion column

# Largest number of (pair, image) combinations held in memory at once.
_CHUNK = 4_000_000


@dataclasses.dataclass(frozen=True)
class _Lattice:
    """A Minkowski-reduced cell and what the image search needs from it."""

    cell: np.ndarray  # (3, 3) reduced cell, rows are vectors, Å
    inverse: np.ndarray  # (3, 3) inverse of ``cell``, 1/Å
    recip_norms: np.ndarray  # (3,) |b_k|, norms of the columns of ``inverse``, 1/Å
    images: np.ndarray  # (13, 3) n @ cell for one n of each pair ±n in {-1, 0, 1}^3 \ {0}, Å
    half_height: float  # half the smallest distance between lattice planes, Å

    @classmethod
    def from_cell(cls, cell: np.ndarray) -> _Lattice:
        reduced, _ = minkowski_reduce(cell)
        reduced = np.asarray(reduced, dtype=np.float64)
        inverse = np.linalg.inv(reduced)
        recip_norms = np.linalg.norm(inverse, axis=0)
        return cls(reduced, inverse, recip_norms, _image_vectors((1, 1, 1), reduced), 0.5 / recip_norms.max())


def _image_vectors(reach, cell: np.ndarray) -> np.ndarray:
    """(n_images, 3) vectors n @ cell, one n of each pair ±n with 0 < max|n_k / reach[k]| <= 1."""
    ranges = [range(-int(m), int(m) + 1) for m in reach]
    shifts = np.array(list(itertools.product(*ranges)), dtype=np.int64)
    # keep n > 0 in lexicographic order: its first non-zero component is positive
    first = shifts[np.arange(len(shifts)), np.argmax(shifts != 0, axis=1)]
    return shifts[first > 0].astype(np.float64) @ cell


def _nearest_image(vectors: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Shortest of |v|, |v + s| and |v - s| over the image vectors s, for each v.

    vectors : (n, 3), Å; images : (n_images, 3), Å, one of each pair ±s.
    Returns (n,), Å.
    """
    out = np.empty(len(vectors))
    step = max(1, _CHUNK // len(images))
    image_sq = np.einsum("sk,sk->s", images, images)
    for lo in range(0, len(vectors), step):
        v = vectors[lo : lo + step]
        # |v ± s|^2 - |v|^2 = |s|^2 ± 2 v.s; the better sign gives |s|^2 - 2 |v.s|.
        # float64 keeps the difference accurate to ~1e-13 Å^2 at box-sized |v|.
        gain = image_sq - 2.0 * np.abs(np.einsum("pk,sk->ps", v, images))
        squared = np.einsum("pk,pk->p", v, v) + np.minimum(gain.min(axis=1), 0.0)
        out[lo : lo + step] = np.sqrt(np.maximum(squared, 0.0))
    return out


def _wrapped(points: np.ndarray, targets: np.ndarray, lattice: _Lattice | None) -> np.ndarray:
    """(n, m, 3) differences target - point, Å, wrapped into the reduced cell if periodic."""
    delta = targets[None, :, :] - points[:, None, :]
    if lattice is None:
        return delta
    # einsum, not matmul: BLAS threads on skinny (n, 3) products slow down
    # tenfold when other processes share the cores.
    frac = np.einsum("pqk,kl->pql", delta, lattice.inverse)
    frac -= np.round(frac)
    return np.einsum("pqk,kl->pql", frac, lattice.cell)


def _exact_lengths(vectors: np.ndarray, lattice: _Lattice) -> np.ndarray:
    """Minimum-image lengths (k,), Å, of wrapped difference vectors (k, 3), Å."""
    dist = np.sqrt(np.einsum("pk,pk->p", vectors, vectors))
    # A wrapped vector no longer than half the smallest plane spacing is the
    # minimum image: every other image has some |f_k + n_k| >= 1/2, hence a
    # length of at least 0.5 / |b_k|.  Only longer vectors are searched.
    far = np.flatnonzero(dist > lattice.half_height)
    if len(far):
        vectors = vectors[far]
        best = _nearest_image(vectors, lattice.images)
        # Certificate: an image n can only be shorter than ``best`` if
        # |n_k| <= 0.5 + best * |b_k| for each k.
        reach = np.floor(0.5 + best[:, None] * lattice.recip_norms[None, :] + 1e-9).astype(np.int64)
        unsure = (reach > 1).any(axis=1)
        if unsure.any():
            wide = _image_vectors(reach[unsure].max(axis=0), lattice.cell)
            best[unsure] = _nearest_image(vectors[unsure], wide)
        dist[far] = best
    return dist


def _distances(points: np.ndarray, targets: np.ndarray, lattice: _Lattice | None) -> np.ndarray:
    """Exact minimum-image distances from every point to every target.

    points : (n, 3), Å; targets : (m, 3), Å.  Returns (n, m), Å.
    """
    vectors = _wrapped(points, targets, lattice)
    if lattice is None:
        return np.linalg.norm(vectors, axis=-1)
    return _exact_lengths(vectors.reshape(-1, 3), lattice).reshape(vectors.shape[:2])


def _min_distances(
    points: np.ndarray, targets: np.ndarray, lattice: _Lattice | None, excluded: np.ndarray
) -> np.ndarray:
    """Exact distance from each point to its nearest target that is not excluded.

    points : (n, 3), Å; targets : (m, 3), Å; excluded : (n, m) bool.
    Returns (n,), Å, ``inf`` where every target is excluded.

    Only rows whose wrapped minimum exceeds half the smallest plane spacing
    need the image search: a wrapped length w <= h/2 is exact and any longer
    wrapped length belongs to a pair at least h/2 apart, so such a row
    minimum is already the true one.
    """
    if targets.shape[0] == 0:
        return np.full(points.shape[0], np.inf)
    vectors = _wrapped(points, targets, lattice)
    table = np.sqrt(np.einsum("pqk,pqk->pq", vectors, vectors))
    table[excluded] = np.inf
    best = table.min(axis=1)
    if lattice is None:
        return best
    unsure = np.flatnonzero(np.isfinite(best) & (best > lattice.half_height))
    if len(unsure):
        rows = _exact_lengths(vectors[unsure].reshape(-1, 3), lattice).reshape(len(unsure), -1)
        rows[excluded[unsure]] = np.inf
        best[unsure] = rows.min(axis=1)
    return best


def minimum_image_distances(points, targets, cell) -> np.ndarray:
    """Exact minimum-image distance from every point to every target (the one kernel).

    points : (n, 3), Å; targets : (m, 3), Å; cell : (3, 3), Å, rows are cell
    vectors, or ``None`` for open boundaries.  Returns (n, m), Å.
    """
    points, targets = np.asarray(points, np.float64), np.asarray(targets, np.float64)
    cell = _check_cell(cell)
    return _distances(points, targets, None if cell is None else _Lattice.from_cell(cell))


def minimum_image_vectors(vectors, cell) -> np.ndarray:
    """The shortest periodic image of each displacement (exact for any cell).

    vectors : (..., 3), Å; cell : (3, 3), Å rows, or ``None`` (returned as given).
    Returns (..., 3), Å: ``v + n @ cell`` with the smallest length over integer ``n``.
    """
    vectors = np.asarray(vectors, np.float64)
    cell = _check_cell(cell)
    if cell is None:
        return vectors.copy()
    lattice = _Lattice.from_cell(cell)
    flat = vectors.reshape(-1, 3)
    frac = flat @ lattice.inverse
    flat = (frac - np.round(frac)) @ lattice.cell
    # as in _exact_lengths: only vectors longer than h/2 can have a shorter image, and the
    # certificate |n_k| <= 0.5 + |v| |b_k| bounds the images that need a look
    far = np.flatnonzero(np.linalg.norm(flat, axis=1) > lattice.half_height)
    if len(far):
        reach = np.floor(
            0.5 + np.linalg.norm(flat[far], axis=1)[:, None] * lattice.recip_norms[None, :] + 1e-9
        ).astype(np.int64)
        images = _image_vectors(np.maximum(reach.max(axis=0), 1), lattice.cell)
        images = np.concatenate([np.zeros((1, 3)), images, -images])  # (n_images, 3), Å
        candidates = flat[far][:, None, :] + images[None, :, :]
        best = np.einsum("pik,pik->pi", candidates, candidates).argmin(axis=1)
        flat[far] = candidates[np.arange(len(far)), best]
    return flat.reshape(vectors.shape)


# ----------------------------------------------------------------- validation
def _check_frame(positions, numbers, cell) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (n_atoms, 3), got {positions.shape}")
    if not np.isfinite(positions).all():
        raise ValueError(f"positions contain {int((~np.isfinite(positions)).sum())} non-finite value(s)")
    numbers = np.asarray(numbers)
    if numbers.shape != (len(positions),):
        raise ValueError(
            f"numbers must have shape ({len(positions)},) to match positions, got {numbers.shape}"
        )
    if len(numbers) and not np.issubdtype(numbers.dtype, np.integer):
        raise ValueError(f"numbers must be integer atomic numbers, got dtype {numbers.dtype}")
    return positions, numbers.astype(np.int64), _check_cell(cell)


def _check_cell(cell) -> np.ndarray | None:
    if cell is None:
        return None
    cell = np.asarray(cell, dtype=np.float64)
    if cell.shape != (3, 3):
        raise ValueError(f"cell must have shape (3, 3) (rows are cell vectors) or be None, got {cell.shape}")
    if not np.isfinite(cell).all():
        raise ValueError("cell contains non-finite values")
    volume = abs(np.linalg.det(cell))
    if volume < 1e-6:
        raise ValueError(f"cell is degenerate (volume {volume:.3g} Å^3); periodic data need a full 3D box")
    return cell


def _ion_table(numbers: np.ndarray, ion_numbers, signs: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Indices (n_ions,) of the ions and, if asked, their charge signs (n_ions,)."""
    ion_numbers = tuple(int(z) for z in ion_numbers)
    index = np.flatnonzero(np.isin(numbers, ion_numbers))
    if not signs:
        return index, None
    unknown = sorted(set(ion_numbers) - set(ION_CHARGE_SIGN))
    if unknown:
        raise ValueError(
            f"no charge sign known for atomic number(s) {unknown}; ION_CHARGE_SIGN covers "
            f"{sorted(ION_CHARGE_SIGN)}"
        )
    return index, np.array([ION_CHARGE_SIGN[int(z)] for z in numbers[index]], dtype=np.int64)


# ------------------------------------------------------------------- kernels
def _self_mask(n_atoms: int, ion_index: np.ndarray) -> np.ndarray:
    """(n_atoms, n_ions) bool, True where the atom is the ion of that column."""
    mask = np.zeros((n_atoms, len(ion_index)), dtype=bool)
    mask[ion_index, np.arange(len(ion_index))] = True
    return mask


def _nearest_ion(positions, ion_index, lattice, self_mask) -> np.ndarray:
    """(n_atoms,) distance from each atom to the nearest ion other than itself."""
    return _min_distances(positions, positions[ion_index], lattice, self_mask)


def _nearest_among_ions(positions, ion_index, lattice, excluded) -> np.ndarray:
    """(n_ions,) distance from each ion to the nearest ion not excluded ((n_ions, n_ions) bool)."""
    ions = positions[ion_index]
    return _min_distances(ions, ions, lattice, excluded)


# --------------------------------------------------------------- public API
def nearest_ion_distance(positions, numbers, cell, ion_numbers=ION_NUMBERS) -> np.ndarray:
    """Distance from every atom to the nearest ion other than itself.

    Parameters
    ----------
    positions : (n_atoms, 3), Å
    numbers : (n_atoms,) int, atomic numbers
    cell : (3, 3), Å, rows are cell vectors (minimum image, exact for any
        triclinic cell), or ``None`` for open boundaries
    ion_numbers : atomic numbers counted as ions

    Returns
    -------
    (n_atoms,) float64, Å.  ``inf`` where there is no other ion: every atom of a
    system without ions, and an ion that is the only one.
    """
    positions, numbers, cell = _check_frame(positions, numbers, cell)
    ion_index, _ = _ion_table(numbers, ion_numbers, signs=False)
    lattice = None if cell is None else _Lattice.from_cell(cell)
    return _nearest_ion(positions, ion_index, lattice, _self_mask(len(positions), ion_index))


def nearest_counterion_distance(
    positions, numbers, cell, ion_numbers=ION_NUMBERS
) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each ion to the nearest ion of opposite charge sign.

    Parameters are those of :func:`nearest_ion_distance`; every ion number must
    be in :data:`ION_CHARGE_SIGN`.

    Returns
    -------
    distance : (n_ions,) float64, Å, ``inf`` for an ion without any counterion
    ion_index : (n_ions,) int64, atom index of each ion, ascending
    """
    positions, numbers, cell = _check_frame(positions, numbers, cell)
    ion_index, signs = _ion_table(numbers, ion_numbers, signs=True)
    lattice = None if cell is None else _Lattice.from_cell(cell)
    same_sign = signs[:, None] == signs[None, :]
    return _nearest_among_ions(positions, ion_index, lattice, same_sign), ion_index


def min_ion_ion_distance(positions, numbers, cell, ion_numbers=ION_NUMBERS) -> float:
    """Shortest distance between two distinct ions in one frame, Å (``inf`` below two ions).

    Parameters are those of :func:`nearest_ion_distance`.
    """
    positions, numbers, cell = _check_frame(positions, numbers, cell)
    ion_index, _ = _ion_table(numbers, ion_numbers, signs=False)
    if len(ion_index) < 2:
        return float("inf")
    lattice = None if cell is None else _Lattice.from_cell(cell)
    itself = np.eye(len(ion_index), dtype=bool)
    return float(_nearest_among_ions(positions, ion_index, lattice, itself).min())


def close_contact_mask(nearest, cutoff: float = CLOSE_CONTACT_CUTOFF) -> np.ndarray:
    """Atoms in close contact: nearest-ion distance strictly below ``cutoff``.

    nearest : (...,) Å, e.g. from :func:`nearest_ion_distance` (``inf`` is never
    in contact); cutoff : Å.  Returns a bool array of the same shape.
    """
    nearest = np.asarray(nearest, dtype=np.float64)
    if np.isnan(nearest).any():
        raise ValueError(f"nearest-ion distances contain {int(np.isnan(nearest).sum())} NaN value(s)")
    if not (np.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"cutoff must be a positive finite distance in Å, got {cutoff}")
    return nearest < cutoff


def frameset_descriptors(
    frames: FrameSet,
    cutoff: float = CLOSE_CONTACT_CUTOFF,
    progress: bool = False,
    ion_numbers=ION_NUMBERS,
) -> dict[str, np.ndarray]:
    """Close-contact descriptors of every frame of a :class:`FrameSet`.

    Parameters
    ----------
    frames : FrameSet, F frames of N atoms (periodic if ``frames.cell`` is set)
    cutoff : close-contact threshold on the nearest-ion distance, Å
    progress : show a tqdm progress bar over frames
    ion_numbers : atomic numbers counted as ions; each needs an entry in
        :data:`ION_CHARGE_SIGN`

    Returns
    -------
    dict with ``nearest_ion`` (F, N) Å, ``close_contact`` (F, N) bool,
    ``min_ion_ion`` (F,) Å, ``nearest_counterion`` (F, n_ions) Å and
    ``ion_index`` (n_ions,), the atom index of each counterion column.
    Missing partners give ``inf`` as in :func:`nearest_ion_distance`.
    """
    if not isinstance(frames, FrameSet):
        raise TypeError(f"frames must be a FrameSet, got {type(frames).__name__}")
    close_contact_mask(np.zeros(0), cutoff)  # validates the cutoff before the loop
    ion_index, signs = _ion_table(frames.numbers, ion_numbers, signs=True)
    n_frames, n_atoms = frames.n_frames, frames.n_atoms
    nearest = np.empty((n_frames, n_atoms))
    counter = np.empty((n_frames, len(ion_index)))
    self_mask = _self_mask(n_atoms, ion_index)
    same_sign = signs[:, None] == signs[None, :]
    lattice, lattice_key = None, None  # constant-volume runs reduce their cell once
    steps = range(n_frames)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="descriptors", unit="frame")
    for f in steps:
        if frames.cell is not None and frames.cell[f].tobytes() != lattice_key:
            lattice, lattice_key = _Lattice.from_cell(frames.cell[f]), frames.cell[f].tobytes()
        nearest[f] = _nearest_ion(frames.positions[f], ion_index, lattice, self_mask)
        counter[f] = _nearest_among_ions(frames.positions[f], ion_index, lattice, same_sign)
    min_ion_ion = nearest[:, ion_index].min(axis=1) if len(ion_index) else np.full(n_frames, np.inf)
    return {
        NEAREST_ION: nearest,
        CLOSE_CONTACT: close_contact_mask(nearest, cutoff),
        MIN_ION_ION: min_ion_ion,
        NEAREST_COUNTERION: counter,
        ION_INDEX: ion_index,
    }


__all__ = [
    "CLOSE_CONTACT",
    "ION_CHARGE_SIGN",
    "ION_INDEX",
    "MIN_ION_ION",
    "NEAREST_COUNTERION",
    "NEAREST_ION",
    "close_contact_mask",
    "frameset_descriptors",
    "min_ion_ion_distance",
    "nearest_counterion_distance",
    "nearest_ion_distance",
]
