"""Differentiable scale updates: pool scales moved by gradient descent.

Each sample is routed softly over the pool with weights
``softmax(-loss_per_sample_per_scale / temperature)``; the soft-routed loss
is differentiable in the pool scales, so gradient descent moves them toward
the scales the samples need.  The temperature is annealed toward hard
routing, scales are clamped to [0, 1] after each step, and scales that meet
(within ``merge_tol``) merge into one.  The loss reads the labels of the
split it is fitted on: fit on train or val, never on test.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._oracle import check_loss
from ._pool import ANCHORS, ScalePool
from ._problem import RoutingProblem


def sample_losses_torch(
    a: torch.Tensor, d: torch.Tensor, sample: torch.Tensor, n_samples: int, scales: torch.Tensor, loss: str
) -> torch.Tensor:
    """Summed loss of each sample at each scale, differentiable in ``scales``.

    ``a, d: (M,)`` eV/Å residuals (see ``_oracle``), ``sample: (M,)`` int64,
    ``scales: (K,)``; returns ``(K, n_samples)``.
    """
    error = scales[:, None] * d[None, :] - a[None, :]
    point = error.abs() if check_loss(loss) == "mae" else error.square()
    out = torch.zeros(scales.shape[0], n_samples, dtype=point.dtype, device=point.device)
    return out.index_add_(1, sample, point)


class SoftPoolRouter(nn.Module):
    """A pool whose scales are parameters (``learnable=True``) or buffers.

    Parameters
    ----------
    pool : initial scales
    temperature : softmax temperature in loss units per component (eV/Å for
        MAE); small means nearly hard routing
    learnable : scales are ``nn.Parameter`` (moved by gradient descent) or frozen buffers
    fixed_anchors : 0 and 1, if in ``pool``, stay fixed (buffers) either way
    loss : ``"mae"`` or ``"mse"``
    """

    def __init__(
        self,
        pool: ScalePool | list[float],
        temperature: float = 0.05,
        learnable: bool = True,
        fixed_anchors: bool = True,
        loss: str = "mae",
    ):
        super().__init__()
        pool = pool if isinstance(pool, ScalePool) else ScalePool(tuple(pool))
        self.loss = check_loss(loss)
        self.learnable = bool(learnable)
        anchors = [s for s in pool if fixed_anchors and s in ANCHORS]
        free = [s for s in pool if s not in anchors]
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float64))
        self._set_free(torch.tensor(free, dtype=torch.float64))
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float64))

    def _set_free(self, values: torch.Tensor) -> None:
        if "free" in self._parameters:
            del self._parameters["free"]
        if "free" in self._buffers:
            del self._buffers["free"]
        if self.learnable:
            self.free = nn.Parameter(values.detach().clone())
        else:
            self.register_buffer("free", values.detach().clone())

    @property
    def scales(self) -> torch.Tensor:
        """(K,) current scales: fixed anchors first, then the free ones."""
        return torch.cat([self.anchors.to(self.free), self.free])

    def pool(self) -> ScalePool:
        """The current scales as a (new) :class:`ScalePool`."""
        return ScalePool(tuple(self.scales.detach().cpu().tolist()))

    def weights(self, sample_losses: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Soft routing weights ``(K, n_samples)`` from summed losses ``(K, n_samples)``."""
        return torch.softmax(-(sample_losses / counts) / self.temperature, dim=0)

    def forward(self, a: torch.Tensor, d: torch.Tensor, sample: torch.Tensor, counts: torch.Tensor):
        """Soft-routed mean loss per force component.

        ``a, d: (M,)`` eV/Å, ``sample: (M,)`` int64, ``counts: (n_samples,)``
        components per sample.  Returns a scalar (eV/Å for MAE).
        """
        losses = sample_losses_torch(a, d, sample, counts.shape[0], self.scales, self.loss)
        return (self.weights(losses, counts) * losses).sum() / a.shape[0]

    @torch.no_grad()
    def clamp_(self) -> None:
        self.free.clamp_(0.0, 1.0)

    @torch.no_grad()
    def merge_close_(self, tol: float) -> bool:
        """Merge free scales within ``tol`` of an anchor (dropped) or of each other
        (replaced by their mean).  Returns whether anything merged."""
        values = sorted(self.free.detach().cpu().tolist())
        anchors = self.anchors.cpu().tolist()
        kept = [v for v in values if all(abs(v - a) > tol for a in anchors)]
        merged: list[list[float]] = []
        for v in kept:
            if merged and v - merged[-1][-1] <= tol:
                merged[-1].append(v)
            else:
                merged.append([v])
        new = [float(np.mean(group)) for group in merged]
        if len(new) == len(values):
            return False
        self._set_free(torch.tensor(new, dtype=self.free.dtype, device=self.free.device))
        return True


def fit_pool_scales(
    source,
    pool: ScalePool | list[float],
    split: str = "val",
    granularity: str = "atom",
    loss: str = "mae",
    steps: int = 200,
    lr: float = 0.01,
    temperature: tuple[float, float] = (0.1, 0.005),
    merge_tol: float = 0.01,
    learnable: bool = True,
    fixed_anchors: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[ScalePool, dict]:
    """Move the pool scales by gradient descent on the soft-routed loss.

    Parameters
    ----------
    source : :class:`RoutingProblem` (linear generator), or a cache / generator
        (then ``split``, ``granularity`` and ``loss`` build the problem)
    temperature : (start, end); annealed geometrically over ``steps``
    merge_tol : scales closer than this merge (checked every step)

    Returns
    -------
    (pool, trace): the trained pool (a new object) and ``{"loss", "scales",
    "temperature"}`` per step.
    """
    problem = (
        source if isinstance(source, RoutingProblem) else RoutingProblem(source, split, granularity, loss)
    )
    if problem.a is None:
        raise NotImplementedError("differentiable scale updates need a linear generator (cached residuals)")
    router = SoftPoolRouter(pool, temperature[0], learnable, fixed_anchors, problem.loss).to(device)
    a = torch.as_tensor(problem.a, device=device)
    d = torch.as_tensor(problem.d, device=device)
    sample = torch.as_tensor(problem.component_sample, device=device)
    counts = torch.bincount(sample, minlength=problem.n_samples).to(a.dtype)
    trace: dict[str, list] = {"loss": [], "scales": [], "temperature": []}
    if not learnable or router.free.numel() == 0:
        return router.pool(), trace
    optimizer = torch.optim.Adam(router.parameters(), lr=lr)
    t0, t1 = temperature
    for step in range(steps):
        router.temperature.fill_(t0 * (t1 / t0) ** (step / max(steps - 1, 1)))
        optimizer.zero_grad()
        value = router(a, d, sample, counts)
        value.backward()
        optimizer.step()
        router.clamp_()
        trace["loss"].append(float(value.detach()))
        trace["scales"].append(router.scales.detach().cpu().tolist())
        trace["temperature"].append(float(router.temperature))
        if router.merge_close_(merge_tol):
            if router.free.numel() == 0:
                break
            optimizer = torch.optim.Adam(router.parameters(), lr=lr)
    return router.pool(), trace
