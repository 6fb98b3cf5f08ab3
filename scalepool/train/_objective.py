"""The training loss of one batch: forces, per-atom energies and (optionally) stress.

:class:`BatchLoss` is a module around the model so that a data-parallel run
wraps *it* in DistributedDataParallel: one DDP forward per optimiser step, even
when a ragged batch needs several model calls (open and periodic frames).

The loss of a batch is

    loss(F_pred, F_ref)                                  over force components, eV/Å
    + energy_weight * loss(E_pred / n, E_ref / n)        over frames, eV/atom
    + stress_weight * loss(sigma_pred, sigma_ref)        over stress components, eV/Å^3

with ``loss`` the elementwise mean of :meth:`TrainSettings.loss_function`.  On K
ranks each term is the mean over the rank's shard times ``K * shard / batch``
(atoms for the force term, frames for the others), so that the average over
ranks, which DistributedDataParallel applies to the gradients, is the batch's
loss (:mod:`._distributed`).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from ..data import FrameSet
from ._common import TrainError
from ._distributed import Ranks
from ._precision import autocast
from ._predict import forward_frames
from ._settings import TrainSettings


def atoms_in(frames: FrameSet, indices: np.ndarray) -> int:
    """Atoms of the frames ``indices`` (either layout)."""
    return int(np.asarray(frames.atom_counts)[np.asarray(indices, dtype=int)].sum())


def check_stress_labels(frames: FrameSet, stress_weight: float, source: str = "the dataset") -> None:
    """Refuse a stress loss without stress labels or on open frames (stress needs a cell)."""
    if stress_weight <= 0:
        return
    if getattr(frames, "stress", None) is None:
        raise TrainError(
            f"stress_weight={stress_weight} (--stress-weight) but {source} has no stress labels "
            "(field 'stress', (n_frames, 3, 3) eV/Å^3); add them or train with stress_weight 0"
        )
    periodic = np.asarray(frames.pbc).all(axis=1)
    if not periodic.all():
        raise TrainError(
            f"stress_weight={stress_weight} (--stress-weight): frame {int(np.flatnonzero(~periodic)[0])} of "
            f"{source} is not periodic; the stress loss needs periodic frames with a cell"
        )


class BatchLoss(nn.Module):
    """``forward(index, shard) -> {"loss": scalar tensor, "out": model output}``.

    index : (n,) dataset frames of the whole batch; shard : this rank's part (all of ``index``
    in one process).  ``out`` is the model's output on ``shard`` (``forces`` (n_atoms, 3) eV/Å,
    ``energy`` (n_frames,) eV, ``stress`` (n_frames, 3, 3) eV/Å^3 with a stress loss).
    """

    def __init__(
        self, model: nn.Module, frames: FrameSet, settings: TrainSettings, ranks: Ranks, device, dtype
    ):
        super().__init__()
        self.model = model
        self.frames, self.ranks, self.device, self.dtype = frames, ranks, device, dtype
        self.loss_fn = settings.loss_function()
        self.energy_weight = settings.energy_weight if frames.energy is not None else 0.0
        self.stress_weight = settings.stress_weight
        self.precision = settings.precision
        check_stress_labels(frames, self.stress_weight)

    def forward(self, index: np.ndarray, shard: np.ndarray) -> dict:
        model = self.model
        if self.stress_weight > 0:
            model = lambda batch: self.model(batch, compute_stress=True)  # noqa: E731
        # mixed precision: the forward (and the force gradient inside it) under autocast; the
        # model returns float32 energies and forces, so the loss below is float32
        with autocast(self.precision, self.device):
            out, labels, n = forward_frames(model, self.frames, shard, self.device, self.dtype)
        force_weight = frame_weight = 1.0
        if self.ranks.parallel:
            force_weight = self.ranks.loss_weight(atoms_in(self.frames, shard), atoms_in(self.frames, index))
            frame_weight = self.ranks.loss_weight(len(shard), len(index))
        value = self.loss_fn(out["forces"], labels.forces)
        if self.ranks.parallel:
            value = force_weight * value
        if self.energy_weight > 0:
            term = self.loss_fn(out["energy"] / n, labels.energy / n)
            value = value + self.energy_weight * (frame_weight * term if self.ranks.parallel else term)
        if self.stress_weight > 0:
            if "stress" not in out:
                raise TrainError(
                    f"stress_weight={self.stress_weight} but the model returned no 'stress' "
                    f"({type(self.model).__name__}.forward(batch, compute_stress=True))"
                )
            term = self.loss_fn(out["stress"], labels.stress.reshape(out["stress"].shape))
            value = value + self.stress_weight * (frame_weight * term if self.ranks.parallel else term)
        return {"loss": value, "out": out}
