"""Fitting a :class:`~scalepool.models.MixedForceModel` router on a prediction cache.

Everything here reads the train split of a :class:`PredictionCache` only
(:class:`LeakageError` otherwise).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data import PredictionCache
from ..models import AtomsBatch, MixedForceModel
from ._routers import _Router


@torch.no_grad()
def cache_router_features(
    model: MixedForceModel, cache: PredictionCache, frames_per_batch: int = 8
) -> torch.Tensor:
    """(F, N, n_in) raw router features of every frame of ``cache`` (labels unused),
    from the same torch function the model uses in MD."""
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    out = []
    for start in range(0, cache.n_frames, frames_per_batch):
        index = np.arange(start, min(start + frames_per_batch, cache.n_frames))
        feats = model.features(
            AtomsBatch.from_arrays(
                cache.positions, cache.numbers, cache.cell, index, device=device, dtype=dtype
            )
        )
        out.append(feats.reshape(len(index), cache.n_atoms, -1))
    return torch.cat(out, dim=0)


def fit_router(
    model: MixedForceModel,
    train: PredictionCache,
    steps: int = 300,
    lr: float = 1e-2,
    batch_size: int = 65536,
    seed: int = 0,
) -> dict[str, float]:
    """Fit ``model.router`` on the train split of a prediction cache; returns train metrics.

    The objective is the per-atom force MAE of the cached interpolation
    ``(1 - s_i) F0_i + s_i F1_i`` against ``F_ref`` (the cache's anchors are
    taken as branch0 and branch1); the features come from the cached positions
    and cell through :func:`smooth_router_features`.  The router-gradient term
    of the deployed forces, ``-(e1_i - e0_i - delta_Z) ds_i/dx``, needs atomic
    energies the cache does not hold and is not part of the fit.

    Raises :class:`LeakageError` unless every frame of ``train`` is a
    labelled train frame (pass ``cache.select("train")``).  Only the router
    and the feature standardisation change; the branches are untouched.

    Returns ``{"mae_soft", "mae_hard", "mae_branch0", "mae_branch1",
    "mean_scale"}`` (eV/Å, on the train frames).
    """
    _Router.check_train_only(train)
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    x = cache_router_features(model, train).reshape(-1, len(model.feature_mean))
    f0, f1 = (torch.as_tensor(f, dtype=dtype, device=device).reshape(-1, 3) for f in train.anchor_forces())
    ref = torch.as_tensor(train.forces_ref, dtype=dtype, device=device).reshape(-1, 3)
    d, a = f1 - f0, ref - f0
    with torch.no_grad():
        model.feature_mean.copy_(x.mean(dim=0))
        model.feature_std.copy_(x.std(dim=0).clamp_min(1e-6) if x.shape[0] > 1 else torch.ones_like(x[0]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.router.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.router.parameters(), lr=lr)
    n = x.shape[0]
    for _ in range(steps):
        index = torch.arange(n) if n <= batch_size else torch.randint(n, (batch_size,), generator=generator)
        index = index.to(device)
        optimizer.zero_grad()
        s = torch.sigmoid(model.logits(x[index]))
        loss = (s[:, None] * d[index] - a[index]).abs().mean()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        s = torch.sigmoid(model.logits(x))
        hard = (s > 0.5).to(s.dtype)
        mae = lambda scale: float((scale[:, None] * d - a).abs().mean())  # noqa: E731
        return {
            "mae_soft": mae(s),
            "mae_hard": mae(hard),
            "mae_branch0": mae(torch.zeros_like(s)),
            "mae_branch1": mae(torch.ones_like(s)),
            "mean_scale": float(s.mean()),
        }
