"""RoutingProblem: a generator, a split and a granularity, with its labels.

Everything that scores scales against reference forces (oracles, pool
refinement, differentiable updates, router training targets) goes through
one :class:`RoutingProblem`, which holds the split's reference forces and,
for a linear generator, the residuals ``a = F_ref - F_0`` and
``d = F_1 - F_0`` so that a loss at any scale costs one pass over the data.
"""

from __future__ import annotations

import numpy as np

from ..data import PredictionCache, split_code
from ._generator import ScaleGenerator, as_generator
from ._oracle import check_loss, hard_route, optimal_scale, pointwise_loss, sample_losses_linear, segment_sum
from ._samples import SampleGroups, cache_groups


def _take(reference, array: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """The frames of a per-atom array of ``reference`` in its layout (see ``PredictionCache.take``)."""
    if hasattr(reference, "take"):
        return reference.take(array, frames)
    return array[reference.atom_index(frames)] if getattr(reference, "ragged", False) else array[frames]


class RoutingProblem:
    """Per-sample losses of a generator on the frames of one split.

    Parameters
    ----------
    source : a :class:`PredictionCache` or any :class:`ScaleGenerator`
    split : ``"train"``, ``"val"``, ``"test"`` or ``None`` (all frames)
    granularity : ``"frame"``, ``"ion"`` or ``"atom"`` (see ``_samples``)
    loss : ``"mae"`` or ``"mse"``, the loss that oracles and refinement minimise

    Attributes
    ----------
    frames : (F_split,) indices of the split's frames in the generator's reference
    groups : :class:`SampleGroups` of those frames
    forces_ref : (F_split, N, 3) eV/Å; flat (T_split, 3) for a ragged reference
    a, d : (M,) eV/Å residuals ``F_ref - F_0`` and ``F_1 - F_0`` (linear generators only)
    n_components : M = 3 N F_split (ragged: 3 T_split)
    """

    def __init__(
        self,
        source: PredictionCache | ScaleGenerator,
        split: str | None = "val",
        granularity: str = "atom",
        loss: str = "mae",
    ):
        self.generator = as_generator(source)
        self.loss = check_loss(loss)
        self.split = split
        ref = self.generator.reference
        if getattr(ref, "forces_ref", None) is None:
            raise ValueError("the generator's reference has no forces_ref: labels are needed to score scales")
        split_codes = np.asarray(ref.split)
        self.frames = (
            np.arange(len(split_codes)) if split is None else np.flatnonzero(split_codes == split_code(split))
        )
        if self.frames.size == 0:
            raise ValueError(f"no frames in split '{split}'")
        self.groups: SampleGroups = cache_groups(granularity, ref, self.frames)
        self.forces_ref = _take(ref, np.asarray(ref.forces_ref, dtype=np.float64), self.frames)
        self.n_components = self.forces_ref.size
        self.component_sample = self.groups.component_sample
        self.a = self.d = None
        if self.generator.is_linear:
            f0, f1 = self.generator.anchor_forces(self.frames)
            self.a = (self.forces_ref - f0).reshape(-1)
            self.d = (f1 - f0).reshape(-1)

    @property
    def n_samples(self) -> int:
        return self.groups.n_samples

    @property
    def granularity(self) -> str:
        return self.groups.granularity

    # ------------------------------------------------------------------ losses
    def sample_losses(self, scales) -> np.ndarray:
        """Summed loss of each sample at each global scale of ``scales: (K,)``: ``(K, n_samples)``."""
        scales = np.atleast_1d(np.asarray(scales, dtype=np.float64))
        if self.a is not None:
            return sample_losses_linear(
                self.a, self.d, self.component_sample, self.n_samples, scales, self.loss
            )
        rows = []
        for s in scales:
            error = (self.generator.forces_at(float(s), self.frames) - self.forces_ref).reshape(-1)
            rows.append(segment_sum(pointwise_loss(error, self.loss), self.component_sample, self.n_samples))
        return np.stack(rows)

    def routed_sample_losses(self, sample_scales: np.ndarray) -> np.ndarray:
        """Summed loss of each sample at its own scale ``sample_scales: (n_samples,)``."""
        sample_scales = np.asarray(sample_scales, dtype=np.float64)
        if self.a is not None:
            s = sample_scales[self.component_sample]
            error = s * self.d - self.a
        else:
            forces = self.generator.forces_at(self.groups.atom_scales(sample_scales), self.frames)
            error = (forces - self.forces_ref).reshape(-1)
        return segment_sum(pointwise_loss(error, self.loss), self.component_sample, self.n_samples)

    def mean(self, sample_sums: np.ndarray) -> float:
        """Mean loss per force component from per-sample sums (eV/Å for MAE)."""
        return float(np.sum(sample_sums) / self.n_components)

    def routed_loss(self, sample_scales: np.ndarray) -> float:
        """Mean loss per component with one scale per sample (eV/Å for MAE)."""
        return self.mean(self.routed_sample_losses(sample_scales))

    # ------------------------------------------------------------------ oracles
    def continuous_oracle(self) -> np.ndarray:
        """Upper bound: each sample's exact best scale in [0, 1], ``(n_samples,)``.

        Uses this split's reference forces; needs a linear generator.
        """
        if self.a is None:
            raise NotImplementedError(
                "the closed-form continuous oracle needs a linear generator (F(s) = (1-s) F_0 + s F_1); "
                "for a non-linear generator route over a fine pool with hard_oracle"
            )
        return optimal_scale(self.a, self.d, self.component_sample, self.n_samples, self.loss)

    def hard_oracle(self, scales) -> tuple[np.ndarray, np.ndarray, float]:
        """Upper bound: each sample takes the pool member with the lowest loss.

        Parameters
        ----------
        scales : (K,) pool scales (a :class:`ScalePool` works)

        Returns
        -------
        choice : (n_samples,) index into ``scales``
        sample_loss : (n_samples,) summed loss at the chosen scale
        mean_loss : float, per component (eV/Å for MAE)
        """
        losses = self.sample_losses(np.asarray(list(scales), dtype=np.float64))
        choice = hard_route(losses)
        best = np.take_along_axis(losses, choice[None], axis=0)[0]
        return choice, best, self.mean(best)
