"""Routing granularity: which atoms share one scale.

A *sample* is a set of atoms that receives one scale s.  Every granularity is
a partition of the atoms of each frame, so per-sample losses add up to the
total loss and an oracle that minimises each sample's loss minimises the
total:

- ``"frame"``: one s per frame;
- ``"ion"``: one s per ion *domain*: every atom joins its nearest ion
  (minimum image; an ion is its own nearest ion), so each frame splits into
  as many samples as it has ions, and every atom, ion or not, follows the s
  of the ion whose solvation region it lies in.  This keeps a partition
  (unlike routing only the ions), costs one s per ion, and sits between
  "frame" and "atom" in resolution;
- ``"atom"``: one s per atom.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ._geometry import ion_mask, nearest_ion

GRANULARITIES = ("frame", "ion", "atom")


@dataclasses.dataclass(frozen=True, eq=False)
class SampleGroups:
    """Assignment of the atoms of F frames to samples.

    Attributes
    ----------
    granularity : one of :data:`GRANULARITIES`
    atom_sample : (F, N) int64, sample id of every atom, in ``[0, n_samples)``
    n_samples : number of samples
    sample_frame : (n_samples,) int64, the frame (row of ``atom_sample``) of each sample
    """

    granularity: str
    atom_sample: np.ndarray
    n_samples: int
    sample_frame: np.ndarray

    @property
    def component_sample(self) -> np.ndarray:
        """(F * N * 3,) sample id of every force component, C order of (F, N, 3)."""
        return np.repeat(self.atom_sample.reshape(-1), 3)

    def atom_scales(self, sample_scales: np.ndarray) -> np.ndarray:
        """Per-sample scales ``(n_samples,)`` spread to atoms: ``(F, N)``."""
        sample_scales = np.asarray(sample_scales)
        if sample_scales.shape != (self.n_samples,):
            raise ValueError(f"expected ({self.n_samples},) per-sample scales, got {sample_scales.shape}")
        return sample_scales[self.atom_sample]

    def mean(self, values: np.ndarray) -> np.ndarray:
        """Per-sample mean of per-atom values ``(F, N, ...)``: ``(n_samples, ...)``."""
        values = np.asarray(values, dtype=np.float64)
        flat = values.reshape(self.atom_sample.size, -1)
        index = self.atom_sample.reshape(-1)
        sums = np.stack(
            [np.bincount(index, weights=flat[:, j], minlength=self.n_samples) for j in range(flat.shape[1])],
            axis=1,
        )
        counts = np.bincount(index, minlength=self.n_samples)[:, None]
        return (sums / counts).reshape((self.n_samples, *values.shape[2:]))


def sample_groups(
    granularity: str,
    numbers: np.ndarray,
    positions: np.ndarray,
    cell: np.ndarray | None = None,
) -> SampleGroups:
    """Samples of the given granularity for frames ``positions: (F, N, 3) Å``.

    ``numbers: (N,)`` and ``cell: (F, 3, 3) Å`` are needed for ``"ion"``
    domains only; ``"ion"`` raises when the system has no ion.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    n_frames, n_atoms = np.shape(positions)[:2]
    frame_of_atom = np.broadcast_to(np.arange(n_frames)[:, None], (n_frames, n_atoms))
    if granularity == "frame":
        atom_sample = frame_of_atom.astype(np.int64)
        sample_frame = np.arange(n_frames)
    elif granularity == "atom":
        atom_sample = np.arange(n_frames * n_atoms, dtype=np.int64).reshape(n_frames, n_atoms)
        sample_frame = np.repeat(np.arange(n_frames), n_atoms)
    else:
        n_ions = int(ion_mask(numbers).sum())
        if n_ions == 0:
            raise ValueError("granularity 'ion' needs ions (atomic numbers in units.ION_NUMBERS); none found")
        index, _ = nearest_ion(positions, numbers, cell, exclude_self=False)
        atom_sample = (frame_of_atom * n_ions + index).astype(np.int64)
        sample_frame = np.repeat(np.arange(n_frames), n_ions)
    return SampleGroups(granularity, np.ascontiguousarray(atom_sample), int(sample_frame.size), sample_frame)
