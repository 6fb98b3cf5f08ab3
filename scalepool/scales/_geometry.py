"""Atom-ion geometry under the minimum-image convention (numpy, per frame).

The scale layer needs, for every atom, the index of and distance to its
nearest ion (routing domains, close-contact masks) and the number of ions
within a few radii (router features).  NaCl boxes hold few ions (18 in the
1,467-atom testbed), so a dense (n_atoms, n_ions) distance matrix per frame
is both the simplest and the fastest way.

Minimum image: every distance comes from the one exact kernel of
:mod:`scalepool.data` (:func:`~scalepool.data.minimum_image_distances`), so the
routing domains and the close-contact metric agree on any cell.
"""

from __future__ import annotations

import numpy as np

from ..data import minimum_image_distances
from ..units import ION_NUMBERS


def ion_mask(numbers: np.ndarray, ion_numbers: tuple[int, ...] = ION_NUMBERS) -> np.ndarray:
    """``(N,) bool``: which atoms are ions (atomic number in ``ion_numbers``)."""
    return np.isin(np.asarray(numbers), ion_numbers)


def atom_ion_distances(positions: np.ndarray, numbers: np.ndarray, cell: np.ndarray | None) -> np.ndarray:
    """Minimum-image distance from every atom to every ion.

    Parameters
    ----------
    positions : (F, N, 3), Å
    numbers : (N,), atomic numbers
    cell : (F, 3, 3), Å, rows are cell vectors; ``None`` for open boundaries

    Returns
    -------
    (F, N, n_ions), Å; ions are ordered as they appear in ``numbers`` and an
    ion's distance to itself is 0.
    """
    positions = np.asarray(positions, dtype=np.float64)
    ions = np.flatnonzero(ion_mask(numbers))
    n_frames, n_atoms, _ = positions.shape
    out = np.empty((n_frames, n_atoms, ions.size))
    for frame in range(n_frames):
        out[frame] = minimum_image_distances(
            positions[frame], positions[frame][ions], None if cell is None else cell[frame]
        )
    return out


def nearest_ion(
    positions: np.ndarray, numbers: np.ndarray, cell: np.ndarray | None, exclude_self: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Index (into the ion list) of and distance to every atom's nearest ion.

    Parameters
    ----------
    positions : (F, N, 3), Å
    numbers : (N,)
    cell : (F, 3, 3), Å, or ``None``
    exclude_self : an ion's nearest ion is another ion (``True``, the
        close-contact convention) or itself (``False``, the routing-domain
        convention, where each ion heads its own domain)

    Returns
    -------
    index : (F, N) int64, position in ``np.flatnonzero(ion_mask(numbers))``;
        -1 where there is no ion
    distance : (F, N) float64, Å; ``inf`` where there is no ion
    """
    dist = atom_ion_distances(positions, numbers, cell)
    n_frames, n_atoms, n_ions = dist.shape
    if n_ions == 0:
        return np.full((n_frames, n_atoms), -1, np.int64), np.full((n_frames, n_atoms), np.inf)
    if exclude_self:
        ions = np.flatnonzero(ion_mask(numbers))
        dist[:, ions, np.arange(n_ions)] = np.inf
    index = dist.argmin(axis=-1)
    distance = np.take_along_axis(dist, index[..., None], axis=-1)[..., 0]
    index = np.where(np.isfinite(distance), index, -1)
    return index.astype(np.int64), distance


def ion_counts(distances: np.ndarray, radii: tuple[float, ...], exclude_zero: bool = True) -> np.ndarray:
    """Number of ions within each radius.

    Parameters
    ----------
    distances : (F, N, n_ions), Å, from :func:`atom_ion_distances`
    radii : Å
    exclude_zero : do not count an ion as its own neighbour

    Returns
    -------
    (F, N, len(radii)) float64 counts
    """
    valid = distances > 0 if exclude_zero else np.ones_like(distances, dtype=bool)
    return np.stack([((distances < r) & valid).sum(axis=-1) for r in radii], axis=-1).astype(np.float64)
