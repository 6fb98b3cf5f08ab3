"""The error subsets every table reports, and the one function that computes their MAEs.

=======================  =====================================================
column                   atoms (force components) averaged
=======================  =====================================================
``overall_mae``          all
``close_contact_mae``    ions in a contact pair: nearest counter-ion within
                         :data:`~scalepool.units.CONTACT_PAIR_DISTANCE` (3.5 Å,
                         the first minimum of the testbed's Na-Cl g(r))
``contact_frame_mae``    all atoms of the frames that hold a contact pair
``near_ion_mae``         atoms whose nearest other ion is closer than
                         :data:`~scalepool.units.CLOSE_CONTACT_CUTOFF` (6 Å, the
                         paper's radius; two thirds of the testbed's atoms)
``ion_mae``              Na and Cl
=======================  =====================================================

All in meV/Å.  ``n_contact_ions`` (ion-frames) and ``n_contact_frames`` give
the sizes of the contact subsets, which are small: a number on a few dozen
ions is noisy, and the tables say how many.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..data import contact_ion_mask, nearest_ion_distance_frames
from ..units import CLOSE_CONTACT_CUTOFF, CONTACT_PAIR_DISTANCE, EV_TO_MEV, ION_NUMBERS

#: MAE columns of :func:`subset_errors`, in table order.
SUBSET_METRICS = ("overall_mae", "close_contact_mae", "contact_frame_mae", "near_ion_mae", "ion_mae")


@dataclasses.dataclass(frozen=True)
class Subsets:
    """Atom masks of F frames of N atoms, each (F, N) bool, and the nearest-ion distance (F, N) Å.

    Ragged frames (:meth:`of_cache` on a ragged cache): every array is flat ``(T,)`` and
    ``frame`` ``(T,)`` holds the frame of each atom (``None`` for the fixed layout).
    """

    ions: np.ndarray
    contact_ions: np.ndarray
    contact_frames: np.ndarray
    near_ion: np.ndarray
    nearest_ion: np.ndarray
    frame: np.ndarray | None = None

    @classmethod
    def of_cache(
        cls,
        cache,
        contact_distance: float = CONTACT_PAIR_DISTANCE,
        near_cutoff: float = CLOSE_CONTACT_CUTOFF,
    ) -> Subsets:
        """The subsets of every frame of a :class:`~scalepool.data.PredictionCache`, in its layout.

        Fixed: :meth:`of` on its arrays.  Ragged: frame by frame, each with its own
        cell (open frames: plain distances), flat ``(T,)`` masks.
        """
        if not getattr(cache, "ragged", False):
            return cls.of(cache.positions, cache.numbers, cache.cell, contact_distance, near_cutoff)
        nearest, contact = [], []
        for i in range(cache.n_frames):
            positions, numbers, cell = cache.frame_geometry(i)
            cells = None if cell is None else cell[None]
            nearest.append(nearest_ion_distance_frames(positions[None], numbers, cells).reshape(-1))
            contact.append(contact_ion_mask(positions[None], numbers, cells, contact_distance)[0])
        nearest, contact = np.concatenate(nearest), np.concatenate(contact)
        frame = cache.atom_frame
        frames_with_contact = np.bincount(frame, weights=contact, minlength=cache.n_frames) > 0
        ions = np.isin(cache.numbers, ION_NUMBERS)
        return cls(ions, contact, frames_with_contact[frame], nearest < near_cutoff, nearest, frame)

    @classmethod
    def of(
        cls,
        positions: np.ndarray,
        numbers: np.ndarray,
        cell: np.ndarray | None,
        contact_distance: float = CONTACT_PAIR_DISTANCE,
        near_cutoff: float = CLOSE_CONTACT_CUTOFF,
    ) -> Subsets:
        """positions : (F, N, 3) Å; numbers : (N,); cell : (F, 3, 3) Å rows or ``None``."""
        positions = np.asarray(positions, dtype=np.float64)
        n_frames = len(positions)
        nearest = nearest_ion_distance_frames(positions, numbers, cell).reshape(n_frames, -1)
        contact = contact_ion_mask(positions, numbers, cell, contact_distance)
        ions = np.broadcast_to(np.isin(numbers, ION_NUMBERS)[None, :], contact.shape)
        frames = np.broadcast_to(contact.any(axis=1, keepdims=True), contact.shape)
        return cls(ions, contact, frames, nearest < near_cutoff, nearest)

    def sizes(self) -> dict[str, int]:
        """``n_contact_ions`` (ion-frames in a contact pair) and ``n_contact_frames``."""
        if self.frame is not None:
            n_frames = len(np.unique(self.frame[self.contact_frames]))
        else:
            n_frames = int(self.contact_frames[:, 0].sum()) if self.contact_frames.size else 0
        return {"n_contact_ions": int(self.contact_ions.sum()), "n_contact_frames": n_frames}


def subset_errors(abs_error: np.ndarray, subsets: Subsets) -> dict[str, float]:
    """MAEs of every subset (meV/Å) from absolute force errors ``(F, N, 3)`` eV/Å (ragged
    subsets: flat ``(T, 3)``); NaN for an empty subset."""

    def mean(mask: np.ndarray) -> float:
        return EV_TO_MEV * float(abs_error[mask].mean()) if mask.any() else float("nan")

    return {
        "overall_mae": EV_TO_MEV * float(abs_error.mean()),
        "close_contact_mae": mean(subsets.contact_ions),
        "contact_frame_mae": mean(subsets.contact_frames),
        "near_ion_mae": mean(subsets.near_ion),
        "ion_mae": mean(subsets.ions),
    }
