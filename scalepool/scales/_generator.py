"""Scale generators: forces as a function of the scale s in [0, 1].

The scale layer only talks to a generator through :class:`ScaleGenerator`:

- ``anchor_forces(frames)`` gives F_0 and F_1, the forces at s = 0 and s = 1;
- ``forces_at(scales, frames)`` gives F(s) for a global s, one s per frame or
  one s per atom;
- ``is_linear`` says whether F(s) = (1 - s) F_0 + s F_1 exactly, in which case
  the closed-form oracles and the fast residual path apply;
- ``reference`` carries what losses are scored against and what routers may
  read: ``positions``, ``numbers``, ``cell``, ``split`` and ``forces_ref``.

:class:`CachedGenerator` reads a :class:`PredictionCache`.  A live model plugs
in through :class:`FunctionGenerator` (give it a callable and the reference
frames), or by subclassing :class:`ScaleGenerator`; a non-linear generator
(e.g. MuSE pooling at a resolution set by s) sets ``is_linear = False`` and
the scale layer falls back to evaluating ``forces_at`` at each scale.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import numpy as np

from ..data import PredictionCache


def interpolate(f0: np.ndarray, f1: np.ndarray, scales: np.ndarray | float) -> np.ndarray:
    """F(s) = (1 - s) F_0 + s F_1.

    Parameters
    ----------
    f0, f1 : (F, N, 3), eV/Å; or flat (T, 3) for ragged frames
    scales : scalar, (F,) per frame or (F, N) per atom, in [0, 1]; flat forces take a
        scalar or (T,) per atom

    Returns
    -------
    (F, N, 3) [(T, 3)], eV/Å
    """
    s = broadcast_scales(scales, f0.shape[:-1])[..., None]
    return f0 + s * (f1 - f0)


def broadcast_scales(scales: np.ndarray | float, shape: tuple[int, ...]) -> np.ndarray:
    """Scalar, per-frame ``(F,)`` or per-atom ``(F, N)`` scales as an ``(F, N)`` array; for a flat
    ``shape = (T,)`` a scalar or per-atom ``(T,)`` as ``(T,)``."""
    s = np.asarray(scales, dtype=np.float64)
    if len(shape) == 1:
        if s.ndim == 0:
            return np.full(shape, float(s))
        if s.shape == tuple(shape):
            return s
        raise ValueError(f"flat (ragged) scales must be a scalar or per atom {tuple(shape)}; got {s.shape}")
    n_frames, n_atoms = shape
    if s.ndim == 0:
        return np.full(shape, float(s))
    if s.shape == (n_frames,):
        return np.broadcast_to(s[:, None], shape)
    if s.shape == (n_frames, n_atoms):
        return s
    raise ValueError(f"scales must be a scalar, ({n_frames},) or ({n_frames}, {n_atoms}); got {s.shape}")


class ScaleGenerator(abc.ABC):
    """Forces at any scale for the frames of ``reference`` (see module docstring)."""

    #: F(s) is exactly (1 - s) F_0 + s F_1.
    is_linear: bool = False
    #: Frames, species, cell, split and (unless stripped) ``forces_ref``.
    reference: Any

    @abc.abstractmethod
    def anchor_forces(self, frames: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(F_0, F_1)`` for the frames ``frames`` (all for ``None``), each (F, N, 3) eV/Å."""

    @abc.abstractmethod
    def forces_at(self, scales: np.ndarray | float, frames: np.ndarray | None = None) -> np.ndarray:
        """F(s), (F, N, 3) eV/Å; ``scales`` is a scalar, (F,) or (F, N) for those frames."""


class CachedGenerator(ScaleGenerator):
    """Linear interpolation between the anchor branches of a prediction cache."""

    is_linear = True

    def __init__(self, cache: PredictionCache):
        self.reference = cache

    def anchor_forces(self, frames: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        f0, f1 = self.reference.anchor_forces(frames)  # (F, N, 3), or (T, 3) for a ragged cache
        return f0.astype(np.float64), f1.astype(np.float64)

    def forces_at(self, scales: np.ndarray | float, frames: np.ndarray | None = None) -> np.ndarray:
        f0, f1 = self.anchor_forces(frames)
        return interpolate(f0, f1, scales)


class FunctionGenerator(ScaleGenerator):
    """Hook for live models: wrap ``forces_fn(scales, frames) -> (F, N, 3) eV/Å``
    (a ragged reference: ``(T, 3)`` for the frames' atoms back to back, with ``(T,)`` scales).

    ``scales`` reaches ``forces_fn`` as an ``(F, N)`` per-atom array for the
    frame indices ``frames`` (a ``(F,)`` int array into ``reference``).  The
    anchors are ``forces_fn`` at s = 0 and s = 1.  Set ``is_linear=True`` only
    if the model really interpolates linearly.
    """

    def __init__(
        self,
        reference: Any,
        forces_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
        is_linear: bool = False,
    ):
        self.reference = reference
        self.forces_fn = forces_fn
        self.is_linear = bool(is_linear)

    def _frames(self, frames: np.ndarray | None) -> np.ndarray:
        n_frames = (
            self.reference.n_frames if hasattr(self.reference, "n_frames") else len(self.reference.positions)
        )
        return np.arange(n_frames) if frames is None else np.asarray(frames)

    def anchor_forces(self, frames: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.forces_at(0.0, frames), self.forces_at(1.0, frames)

    def forces_at(self, scales: np.ndarray | float, frames: np.ndarray | None = None) -> np.ndarray:
        frames = self._frames(frames)
        if getattr(self.reference, "ragged", False):  # flat: (T_sel,) scales, (T_sel, 3) forces
            shape = (int(np.asarray(self.reference.atom_counts)[frames].sum()),)
        else:
            shape = (frames.size, self.reference.positions.shape[1])
        forces = np.asarray(self.forces_fn(np.ascontiguousarray(broadcast_scales(scales, shape)), frames))
        if forces.shape != (*shape, 3):
            raise ValueError(f"forces_fn returned shape {forces.shape}, expected {(*shape, 3)}")
        return forces.astype(np.float64)


def as_generator(source: PredictionCache | ScaleGenerator) -> ScaleGenerator:
    """A generator from a cache (wrapped in :class:`CachedGenerator`) or a generator."""
    if isinstance(source, ScaleGenerator):
        return source
    if isinstance(source, PredictionCache):
        return CachedGenerator(source)
    raise TypeError(f"expected a PredictionCache or a ScaleGenerator, got {type(source).__name__}")
