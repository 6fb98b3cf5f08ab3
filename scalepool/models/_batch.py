"""AtomsBatch: several frames of atoms stored back to back, the input of every model."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..data import FrameSet
from ..neighbors import batched_neighbor_pairs, pair_vectors


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
    """

    positions: torch.Tensor
    numbers: torch.Tensor
    frame_index: torch.Tensor
    cell: torch.Tensor | None
    n_frames: int
    forces: torch.Tensor | None = None
    energy: torch.Tensor | None = None

    @classmethod
    def from_frameset(
        cls,
        frames: FrameSet,
        indices=None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> AtomsBatch:
        """Batch the frames ``indices`` (all when ``None``) of ``frames``, with their labels."""
        return cls.from_arrays(
            frames.positions, frames.numbers, frames.cell, indices,
            forces=frames.forces, energy=frames.energy, device=device, dtype=dtype,
        )  # fmt: skip

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
    ) -> AtomsBatch:
        """Batch frames ``indices`` (all when ``None``) of per-frame arrays.

        ``positions`` (F, N, 3) Å, ``numbers`` (N,), ``cell`` (F, 3, 3) Å or ``None``,
        optional labels ``forces`` (F, N, 3) eV/Å and ``energy`` (F,) eV: the layout
        of a :class:`~scalepool.data.FrameSet` and of a prediction cache.
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
        """Pairs (n_pairs, 2) and integer shifts (n_pairs, 3) within ``cutoff`` Å (vesin, no gradient)."""
        pairs, shifts = batched_neighbor_pairs(
            self.positions.detach().cpu().double().numpy(),
            cutoff,
            None if self.cell is None else self.cell.detach().cpu().double().numpy(),
            self.frame_index.cpu().numpy(),
            full_list=full_list,
        )
        return torch.as_tensor(pairs, device=self.device), torch.as_tensor(shifts, device=self.device)

    def edge_vectors(self, pairs: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
        """(n_pairs, 3) Å, differentiable in ``positions`` and ``cell``."""
        return pair_vectors(self.positions, pairs, shifts, self.cell, self.frame_index[pairs[:, 0]])
