"""AtomsBatch: several frames of atoms stored back to back, the input of every model."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..data import FrameSet
from ..neighbors import pair_vectors, torch_batched_neighbor_pairs


@dataclasses.dataclass
class AtomsBatch:
    """Frames concatenated along the atom axis.

    Attributes
    ----------
    positions : (n_atoms, 3), Å, float; set ``requires_grad`` for forces
    numbers : (n_atoms,) int64, atomic numbers
    frame_index : (n_atoms,) int64, frame of each atom, sorted
    cell : (n_frames, 3, 3), Å, rows are cell vectors, or ``None`` (open boundaries)
    n_frames : number of frames
    forces : (n_atoms, 3), eV/Å, reference forces when known
    energy : (n_frames,), eV, reference energies when known
    stress : (n_frames, 3, 3), eV/Å^3, reference stress when known (ASE sign:
        (1/V) dE/d strain, positive under tension)
    """

    positions: torch.Tensor
    numbers: torch.Tensor
    frame_index: torch.Tensor
    cell: torch.Tensor | None
    n_frames: int
    forces: torch.Tensor | None = None
    energy: torch.Tensor | None = None
    stress: torch.Tensor | None = None

    @classmethod
    def from_frameset(
        cls,
        frames: FrameSet,
        indices=None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> AtomsBatch:
        """Batch the frames ``indices`` (all when ``None``) of ``frames``, with their labels.

        Ragged datasets are concatenated without padding.  The models take one
        boundary kind per batch: a batch mixing open and periodic frames is refused
        (split it with ``frames.pbc``; ``scalepool.train`` does).
        """
        if frames.ragged:
            return cls._from_ragged(frames, indices, device, dtype)
        return cls.from_arrays(
            frames.positions, frames.numbers, frames.cell, indices,
            forces=frames.forces, energy=frames.energy, device=device, dtype=dtype,
            stress=getattr(frames, "stress", None),
        )  # fmt: skip

    @classmethod
    def _from_ragged(cls, frames: FrameSet, indices, device, dtype) -> AtomsBatch:
        idx = np.arange(frames.n_frames) if indices is None else np.atleast_1d(np.asarray(indices))
        periodic = frames.pbc[idx].all(axis=1)
        if periodic.any() and not periodic.all():
            raise ValueError(
                f"frames {idx[~periodic][:5].tolist()} are open and frames {idx[periodic][:5].tolist()} periodic: "
                "the models take one boundary kind per batch; batch open and periodic frames apart"
            )
        atoms = frames.atom_index(idx)
        as_tensor = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)  # noqa: E731
        labels = {}
        if frames.stress is not None:
            labels["stress"] = as_tensor(frames.stress[idx])
        return cls(
            positions=as_tensor(frames.positions_flat[atoms]),
            numbers=torch.as_tensor(frames.numbers_flat[atoms], dtype=torch.long, device=device),
            frame_index=torch.arange(len(idx), device=device).repeat_interleave(
                torch.as_tensor(frames.atom_counts[idx], device=device)
            ),
            cell=as_tensor(frames.cells[idx]) if periodic.all() else None,
            n_frames=len(idx),
            forces=as_tensor(frames.forces_flat[atoms]),
            energy=None if frames.energy is None else as_tensor(frames.energy[idx]),
            **labels,
        )

    @classmethod
    def from_arrays(
        cls,
        positions: np.ndarray,
        numbers: np.ndarray,
        cell: np.ndarray | None,
        indices=None,
        forces: np.ndarray | None = None,
        energy: np.ndarray | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        stress: np.ndarray | None = None,
    ) -> AtomsBatch:
        """Batch frames ``indices`` (all when ``None``) of per-frame arrays.

        ``positions`` (F, N, 3) Å, ``numbers`` (N,), ``cell`` (F, 3, 3) Å or ``None``,
        optional labels ``forces`` (F, N, 3) eV/Å, ``energy`` (F,) eV and ``stress``
        (F, 3, 3) eV/Å^3: the layout of a :class:`~scalepool.data.FrameSet` and of
        a prediction cache.
        """
        idx = np.arange(len(positions)) if indices is None else np.atleast_1d(np.asarray(indices))
        n, n_atoms = len(idx), positions.shape[1]
        as_tensor = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)  # noqa: E731
        return cls(
            positions=as_tensor(positions[idx].reshape(-1, 3)),
            numbers=torch.as_tensor(np.tile(numbers, n), dtype=torch.long, device=device),
            frame_index=torch.arange(n, device=device).repeat_interleave(n_atoms),
            cell=None if cell is None else as_tensor(cell[idx]),
            n_frames=n,
            forces=None if forces is None else as_tensor(forces[idx].reshape(-1, 3)),
            energy=None if energy is None else as_tensor(energy[idx]),
            stress=None if stress is None else as_tensor(_checked_stress(stress, len(positions))[idx]),
        )

    @property
    def n_atoms(self) -> int:
        return self.positions.shape[0]

    @property
    def device(self) -> torch.device:
        return self.positions.device

    def to(self, device=None, dtype=None) -> AtomsBatch:
        """Copy to another device and/or float dtype (integers keep theirs)."""

        def move(t):
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return dataclasses.replace(
            self,
            **{f.name: move(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "n_frames"},
        )

    def neighbors(self, cutoff: float, full_list: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs (n_pairs, 2) and integer shifts (n_pairs, 3) within ``cutoff`` Å, int64 on
        ``self.device`` (vesin-torch on that device, no copy to the host, no gradient)."""
        return torch_batched_neighbor_pairs(
            self.positions, cutoff, self.cell, self.frame_index, full_list=full_list, n_frames=self.n_frames
        )

    def strained(self, strain: torch.Tensor) -> AtomsBatch:
        """This batch deformed by ``strain`` : (n_frames, 3, 3), dimensionless, one per frame.

        Positions (rows) ``x -> x (I + eps_f)`` and cell rows ``h -> h (I + eps_f)``
        with ``eps_f`` the symmetric part of ``strain[f]``, inside the autograd
        graph, so ``dE/d strain`` at zero strain is ``V`` times the stress (ASE
        sign).  Fractional coordinates, and hence neighbour pairs and shifts,
        are unchanged.  Needs a cell.
        """
        if self.cell is None:
            raise ValueError("a strain needs periodic frames: this batch has no cell (open boundaries)")
        if tuple(strain.shape) != (self.n_frames, 3, 3):
            raise ValueError(f"strain must have shape ({self.n_frames}, 3, 3), got {tuple(strain.shape)}")
        eps = 0.5 * (strain + strain.transpose(1, 2))
        positions = self.positions + torch.einsum("ni,nij->nj", self.positions, eps[self.frame_index])
        cell = self.cell + torch.bmm(self.cell, eps)
        return dataclasses.replace(self, positions=positions, cell=cell)

    def edge_vectors(self, pairs: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
        """(n_pairs, 3) Å, differentiable in ``positions`` and ``cell``."""
        return pair_vectors(self.positions, pairs, shifts, self.cell, self.frame_index[pairs[:, 0]])


def _checked_stress(stress: np.ndarray, n_frames: int) -> np.ndarray:
    """``stress`` as an (F, 3, 3) array; a clear error on another shape or non-finite values."""
    stress = np.asarray(stress)
    if stress.shape != (n_frames, 3, 3):
        raise ValueError(f"stress must have shape ({n_frames}, 3, 3) eV/Å^3, got {stress.shape}")
    bad = np.flatnonzero(~np.isfinite(stress).all(axis=(1, 2)))
    if len(bad):
        raise ValueError(f"stress of frame {int(bad[0])} contains NaN or inf ({len(bad)} frames in all)")
    return stress
