"""Oracle routing and interpolation in closed form (pure numpy functions).

Notation, for the force components of one split flattened to length M:

- ``a = F_ref - F_0`` and ``d = F_1 - F_0``, both ``(M,)`` eV/Å, so the error
  of F(s) = F_0 + s d is ``s d - a``;
- ``sample: (M,) int`` gives the sample (see ``_samples``) of each component.

Losses are sums over the components of a sample, so they add up over
samples: ``"mae"`` sums ``|s d - a|`` (eV/Å), ``"mse"`` sums ``(s d - a)^2``
((eV/Å)^2).  Dividing a total by M gives the mean absolute (squared) error
over all force components, the field's MAE.

Every oracle here reads the reference forces of the split it routes, so on a
test split it is an **upper bound** on what a deployable router can reach.
"""

from __future__ import annotations

import numpy as np

LOSSES = ("mae", "mse")


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return loss


def pointwise_loss(error: np.ndarray, loss: str) -> np.ndarray:
    """``|error|`` for ``"mae"``, ``error**2`` for ``"mse"``; same shape as ``error``."""
    return np.abs(error) if check_loss(loss) == "mae" else np.square(error)


def segment_sum(values: np.ndarray, sample: np.ndarray, n_samples: int) -> np.ndarray:
    """Sum of ``values: (M,)`` over each sample: ``(n_samples,)``."""
    return np.bincount(sample, weights=values, minlength=n_samples)


def sample_losses_linear(
    a: np.ndarray, d: np.ndarray, sample: np.ndarray, n_samples: int, scales, loss: str = "mae"
) -> np.ndarray:
    """Summed loss of every sample at every global scale of ``scales: (K,)``: ``(K, n_samples)``."""
    scales = np.atleast_1d(np.asarray(scales, dtype=np.float64))
    return np.stack([segment_sum(pointwise_loss(s * d - a, loss), sample, n_samples) for s in scales])


def optimal_scale_mse(a: np.ndarray, d: np.ndarray, sample: np.ndarray, n_samples: int) -> np.ndarray:
    """Exact per-sample minimiser in [0, 1] of the summed squared error.

    s* = clip(<a, d> / |d|^2, 0, 1) over the components of each sample; a
    sample whose branches agree exactly (|d| = 0) gets s* = 0.

    Returns ``(n_samples,)``.
    """
    num = segment_sum(a * d, sample, n_samples)
    den = segment_sum(d * d, sample, n_samples)
    s = np.divide(num, den, out=np.zeros(n_samples), where=den > 0)
    return np.clip(s, 0.0, 1.0)


def optimal_scale_mae(a: np.ndarray, d: np.ndarray, sample: np.ndarray, n_samples: int) -> np.ndarray:
    """Exact per-sample minimiser in [0, 1] of the summed absolute error.

    sum_k |s d_k - a_k| = sum_k |d_k| |s - a_k/d_k| (+ a constant from d_k = 0)
    is convex and piecewise linear in s, with breakpoints t_k = a_k / d_k.  Its
    minimum lies at the weighted median of the t_k with weights |d_k| (the
    first breakpoint at which the cumulative weight reaches half the total);
    clipping that point to [0, 1] gives the constrained minimum because the
    function is convex.  Vectorised over samples with one lexsort: O(M log M).
    A sample with d = 0 everywhere gets s* = 0.

    Returns ``(n_samples,)``.
    """
    nonzero = d != 0
    t = a[nonzero] / d[nonzero]
    w = np.abs(d[nonzero])
    g = sample[nonzero]
    order = np.lexsort((t, g))
    t, w, g = t[order], w[order], g[order]
    total = np.bincount(g, weights=w, minlength=n_samples)
    before = np.cumsum(total) - total  # weight of all earlier samples
    cumulative = np.cumsum(w) - before[g]
    reached = np.flatnonzero(cumulative >= 0.5 * total[g])
    groups, first = np.unique(g[reached], return_index=True)
    s = np.zeros(n_samples)
    s[groups] = t[reached[first]]
    return np.clip(s, 0.0, 1.0)


def optimal_scale(a: np.ndarray, d: np.ndarray, sample: np.ndarray, n_samples: int, loss: str = "mae"):
    """Continuous oracle (upper bound): :func:`optimal_scale_mae` or :func:`optimal_scale_mse`."""
    if check_loss(loss) == "mae":
        return optimal_scale_mae(a, d, sample, n_samples)
    return optimal_scale_mse(a, d, sample, n_samples)


def hard_route(sample_losses: np.ndarray) -> np.ndarray:
    """Oracle hard routing (upper bound): per-sample index of the lowest loss.

    ``sample_losses: (K, n_samples)``; ties go to the lower index (the smaller
    scale of a sorted pool).  Returns ``(n_samples,) int64``.
    """
    return np.argmin(sample_losses, axis=0).astype(np.int64)
