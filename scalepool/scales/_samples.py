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

Ragged caches (frames of different atoms, periodic and open frames side by
side) give the same partitions on flat per-atom arrays: ``atom_sample`` is
then ``(T,)``, in the cache's flat order.  An ``"ion"`` frame without ions is
one sample; open frames use plain distances.
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
    atom_sample : (F, N) int64 (fixed layout) or (T,) int64 (ragged, flat order), sample id
        of every atom, in ``[0, n_samples)``
    n_samples : number of samples
    sample_frame : (n_samples,) int64, the frame (row of ``atom_sample``; ragged: the
        position among the frames grouped) of each sample
    """

    granularity: str
    atom_sample: np.ndarray
    n_samples: int
    sample_frame: np.ndarray

    @property
    def component_sample(self) -> np.ndarray:
        """(F * N * 3,) [(T * 3,)] sample id of every force component, C order of (F, N, 3) [(T, 3)]."""
        return np.repeat(self.atom_sample.reshape(-1), 3)

    def atom_scales(self, sample_scales: np.ndarray) -> np.ndarray:
        """Per-sample scales ``(n_samples,)`` spread to atoms: ``(F, N)`` (ragged: ``(T,)``)."""
        sample_scales = np.asarray(sample_scales)
        if sample_scales.shape != (self.n_samples,):
            raise ValueError(f"expected ({self.n_samples},) per-sample scales, got {sample_scales.shape}")
        return sample_scales[self.atom_sample]

    def mean(self, values: np.ndarray) -> np.ndarray:
        """Per-sample mean of per-atom values ``(F, N, ...)`` [ragged ``(T, ...)``]: ``(n_samples, ...)``."""
        values = np.asarray(values, dtype=np.float64)
        flat = values.reshape(self.atom_sample.size, -1)
        index = self.atom_sample.reshape(-1)
        sums = np.stack(
            [np.bincount(index, weights=flat[:, j], minlength=self.n_samples) for j in range(flat.shape[1])],
            axis=1,
        )
        counts = np.bincount(index, minlength=self.n_samples)[:, None]
        return (sums / counts).reshape((self.n_samples, *values.shape[self.atom_sample.ndim :]))


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


def frame_geometry(reference, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(positions (n, 3) Å, numbers (n,), cell (3, 3) Å or None)`` of frame ``i`` of a ragged
    reference (a :class:`~scalepool.data.PredictionCache` or a :class:`~scalepool.data.FrameSet`)."""
    if hasattr(reference, "frame_geometry"):
        return reference.frame_geometry(i)
    one = reference.frame(i)
    return one.positions[0], one.numbers, None if one.cell is None else one.cell[0]


def ragged_sample_groups(granularity: str, geometries: list[tuple]) -> SampleGroups:
    """Samples of frames of any size, ``atom_sample`` flat ``(T,)`` over the frames given.

    ``geometries``: one ``(positions (n, 3) Å, numbers (n,), cell (3, 3) Å or None)`` per
    frame (:func:`frame_geometry`); an ``"ion"`` frame without ions is one sample.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    counts = np.array([len(numbers) for _, numbers, _ in geometries], dtype=np.int64)
    atom_frame = np.repeat(np.arange(len(counts)), counts)
    if granularity == "frame":
        return SampleGroups(granularity, atom_frame, len(counts), np.arange(len(counts)))
    if granularity == "atom":
        return SampleGroups(
            granularity, np.arange(int(counts.sum()), dtype=np.int64), int(counts.sum()), atom_frame
        )
    if not any(ion_mask(numbers).any() for _, numbers, _ in geometries):
        raise ValueError("granularity 'ion' needs ions (atomic numbers in units.ION_NUMBERS); none found")
    parts, sample_frame, start = [], [], 0
    for f, (positions, numbers, cell) in enumerate(geometries):
        n_ions = int(ion_mask(numbers).sum())
        if n_ions == 0:  # no ion: the frame is one domain
            parts.append(np.full(len(numbers), start, dtype=np.int64))
            n_ions = 1
        else:
            index, _ = nearest_ion(
                np.asarray(positions)[None], numbers, None if cell is None else cell[None], False
            )
            parts.append(start + index[0])
        sample_frame += [f] * n_ions
        start += n_ions
    return SampleGroups(granularity, np.concatenate(parts), start, np.asarray(sample_frame, dtype=np.int64))


def cache_groups(granularity: str, reference, frames: np.ndarray | None = None) -> SampleGroups:
    """Samples of the frames ``frames`` (all for ``None``) of a cache (or any reference with
    ``positions``, ``numbers`` and ``cell``), in its own layout: ``atom_sample`` (F_sel, N) for a
    fixed cache, flat ``(T_sel,)`` for a ragged one (``reference.ragged``)."""
    if getattr(reference, "ragged", False):
        index = range(reference.n_frames) if frames is None else np.asarray(frames).tolist()
        return ragged_sample_groups(granularity, [frame_geometry(reference, i) for i in index])
    positions, cell = np.asarray(reference.positions), reference.cell
    if frames is not None:
        positions, cell = positions[frames], None if cell is None else np.asarray(cell)[frames]
    return sample_groups(granularity, reference.numbers, positions, cell)
