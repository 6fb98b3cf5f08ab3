"""Fitting a :class:`~scalepool.models.MixedForceModel`: the router on a prediction
cache, then the whole mixture end to end through its own forces.

- :func:`fit_router` (fast, minutes-free): the router minimises the cached
  per-atom interpolation ``(1 - s) F0 + s F1`` against ``F_ref``.  That is not
  the deployed model's force: mixing energies is not mixing forces, and the
  router term ``-(e1 - e0 - delta_Z) ds/dx`` is left out.  Use it as a warm start.
- :func:`fit_mixed_model`: the loss is the MAE of the model's own forces
  ``-dE/dx`` on dataset frames, so what is fitted is what MD runs.

Both read train frames only (:class:`LeakageError` otherwise).
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import FrameSet, PredictionCache
from ..models import AtomsBatch, MixedForceModel
from ..units import EV_TO_MEV
from ._routers import LeakageError, _Router


@torch.no_grad()
def cache_router_features(
    model: MixedForceModel, cache: PredictionCache, frames_per_batch: int = 8
) -> torch.Tensor:
    """(F, N, n_in) raw router features of every frame of ``cache`` (labels unused),
    from the same torch function the model uses in MD; (T, n_in) for a ragged cache
    (one frame per model call, each with its own cell or none)."""
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    if cache.ragged:
        rows = []
        for i in range(cache.n_frames):
            positions, numbers, cell = cache.frame_geometry(i)
            batch = AtomsBatch.from_arrays(
                positions[None], numbers, None if cell is None else cell[None], device=device, dtype=dtype
            )
            rows.append(model.features(batch))
        return torch.cat(rows, dim=0)
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


# ---------------------------------------------------------------------------- end to end
@dataclasses.dataclass
class MixedFitResult:
    """What :func:`fit_mixed_model` did.  Errors are force MAEs in meV/Å over the
    force components of the ``monitor_index`` train frames (the same frames before
    and after), so they compare like with like.

    Attributes
    ----------
    steps, frames_per_step : optimiser steps taken and frames in each
    losses : (steps,) meV/Å, the minibatch loss of each step
    train_mae_initial, train_mae_final : the mixed model's own forces
        (``-dE/dx``, router term included) before and after the fit
    train_mae_branch0, train_mae_branch1 : each branch alone
    mean_scale_initial, mean_scale_final : mean per-atom s on those frames
    monitor_index : dataset frames of the before/after errors (train frames only)
    seconds_per_step : wall time of one optimiser step (reported, never a budget)
    kept_initial : the fit did not lower the monitor error, so the starting
        parameters were restored (``keep_best``); ``train_mae_final`` is then theirs
    """

    steps: int
    frames_per_step: int
    losses: list[float]
    train_mae_initial: float
    train_mae_final: float
    train_mae_branch0: float
    train_mae_branch1: float
    mean_scale_initial: float
    mean_scale_final: float
    monitor_index: list[int]
    seconds_per_step: float
    kept_initial: bool = False

    @property
    def best_branch_mae(self) -> float:
        return min(self.train_mae_branch0, self.train_mae_branch1)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_train_frames(
    frames: FrameSet, index, split_fractions, split_gap: int = 0, split_frames: dict | None = None
) -> np.ndarray:
    """``index`` as an int array, or :class:`LeakageError` when a frame lies outside the
    train block of the time-block split ``(split_fractions, split_gap)``, or of the
    recorded blocks ``split_frames`` (``{"train", "val", "test"}`` frame lists of a random split)."""
    index = np.atleast_1d(np.asarray(index))
    if index.size == 0 or not np.issubdtype(index.dtype, np.integer):
        raise ValueError(f"train_index must be a non-empty array of frame indices, got {index!r}")
    if split_frames is not None:
        blocks = {name: np.asarray(split_frames[name], dtype=np.int64) for name in ("train", "val", "test")}
    else:
        blocks = frames.split_indices(tuple(split_fractions), split_gap)
    outside = np.setdiff1d(index, blocks["train"])
    if outside.size:
        where = [name for name in ("val", "test") if np.isin(outside, blocks[name]).any()]
        inside = (outside >= 0) & (outside < frames.n_frames)
        if not inside.all():
            where.append("none (not a frame of the dataset)")
        if not np.isin(outside[inside], np.concatenate([blocks["val"], blocks["test"]])).all():
            where.append("gap")
        raise LeakageError(
            f"the mixed model is fitted on train frames only; {outside.size} frame(s) "
            f"(e.g. {outside[:5].tolist()}) lie in split(s) {where} of fractions "
            f"{tuple(split_fractions)} gap {split_gap}; train frames are "
            f"{int(blocks['train'][0])}..{int(blocks['train'][-1])}"
        )
    return index


def _batch(model: MixedForceModel, frames: FrameSet, index) -> AtomsBatch:
    param = next(model.parameters())
    return AtomsBatch.from_frameset(frames, index, device=param.device, dtype=param.dtype)


def _chunks(index: np.ndarray, size: int):
    return [index[i : i + size] for i in range(0, len(index), size)]


def _frame_chunks(frames: FrameSet, index: np.ndarray, size: int):
    """Chunks of ``index`` the models can batch: a ragged dataset's periodic and open frames
    apart (each in the given order), a fixed one as :func:`_chunks`."""
    if not frames.ragged:
        return _chunks(index, size)
    periodic = frames.pbc[index].all(axis=1)
    return [c for part in (index[periodic], index[~periodic]) for c in _chunks(part, size)]


def _monitor(model: MixedForceModel, frames: FrameSet, index: np.ndarray, size: int, branches: bool):
    """Force MAEs (meV/Å) of the mixed model (and of each branch) and the mean scale on ``index``."""
    sums, n, s_sum = np.zeros(3), 0, 0.0
    members = [model, model.branch0, model.branch1] if branches else [model]
    for chunk in _frame_chunks(frames, index, size):
        batch = _batch(model, frames, chunk)
        for k, member in enumerate(members):
            forces = member(batch, create_graph=False)["forces"].detach()
            sums[k] += float((forces - batch.forces).abs().double().sum())
        with torch.no_grad():
            s_sum += float(model.scales(batch).double().sum())
        n += batch.forces.numel()
    mae = sums / max(n, 1) * EV_TO_MEV
    return mae, s_sum / max(n // 3, 1)


@torch.no_grad()
def _centre_delta(model: MixedForceModel, frames: FrameSet, index: np.ndarray, size: int) -> None:
    """Set ``delta_correction`` so that ``e1 - e0 - delta_Z`` has zero mean per species on ``index``:
    a small coefficient of ``ds/dx`` is what keeps the router term of the forces small."""
    model.delta_correction.zero_()
    sums = torch.zeros_like(model.delta_correction)
    counts = torch.zeros_like(model.delta_correction)
    for chunk in _frame_chunks(frames, index, size):
        batch = _batch(model, frames, chunk)
        gap = (
            model.branch1.atomic_energies(batch)
            - model.delta(batch.numbers)
            - model.branch0.atomic_energies(batch)
        )
        sums.index_add_(0, batch.numbers, gap)
        counts.index_add_(0, batch.numbers, torch.ones_like(gap))
    model.delta_correction.copy_(torch.where(counts > 0, sums / counts.clamp_min(1), 0.0))


def fit_mixed_model(
    model: MixedForceModel,
    frames: FrameSet,
    train_index,
    *,
    split_fractions: tuple[float, float, float],
    split_gap: int = 0,
    split_frames: dict | None = None,
    steps: int | None = 200,
    epochs: int | None = None,
    frames_per_step: int = 1,
    lr: float = 1e-3,
    delta_lr: float = 1e-2,
    train_delta: bool = True,
    centre_delta: bool = True,
    freeze_branches: bool = True,
    monitor_frames: int | None = 16,
    keep_best: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> MixedFitResult:
    """Fit the router (and ``delta_correction``) through the model's own conservative forces.

    The loss of a step is the force MAE (eV/Å, over components) of
    ``model(batch)["forces"]``, i.e. ``-dE/dx`` of the mixed energy with the
    router term ``-(e1 - e0 - delta_Z) ds/dx`` and the energy (not force) mixing
    included, against ``frames.forces``: the quantity MD uses, unlike the cached
    interpolation of :func:`fit_router`.  Its gradient goes through the forces
    (``create_graph``), so a step costs about four energy+force evaluations of
    both branches.  The router is refined from its current state (warm-start it
    with :func:`fit_router`; its feature standardisation is set here from the
    train frames when it is still the identity).

    Parameters
    ----------
    model : moved nowhere; fitted on its device and in its dtype
    frames : the dataset; ``train_index`` its frames to fit on
    split_fractions, split_gap : the time-block split the branches were trained
        with; every frame of ``train_index`` must lie in its train block
        (:class:`LeakageError` otherwise)
    split_frames : ``{"train", "val", "test"}`` frame lists of a random split (as
        recorded by the runs); replaces the time blocks of ``split_fractions``
    steps, epochs : budget in optimiser steps, or in passes over ``train_index``
        (``epochs`` wins when given); never wall-clock
    frames_per_step : frames per optimiser step
    lr, delta_lr : Adam learning rates of the router and of ``delta_correction``
        (eV), both annealed to zero by a cosine schedule over the budget
    train_delta : also fit ``delta_correction``; ``centre_delta`` first sets it
        so that ``e1 - e0 - delta_Z`` has zero mean per species on the monitor frames
    freeze_branches : keep the branches fixed (``requires_grad`` is restored afterwards)
    monitor_frames : number of train frames (evenly spread) on which the
        before/after errors are measured; ``None``: all
    keep_best : restore the starting parameters when the fit ends with a higher
        monitor error than it started with (train frames only, so no leakage)
    seed : frame order; the fit is deterministic for a given seed and thread count

    Returns a :class:`MixedFitResult`; ``model`` is fitted in place and left in eval mode.
    """
    if not isinstance(model, MixedForceModel):
        raise TypeError(f"fit_mixed_model fits a MixedForceModel, got {type(model).__name__}")
    if model.hard:
        raise ValueError("a hard (0/1) router has no gradient and is not conservative; fit with hard=False")
    if frames.forces_flat is None:
        raise ValueError("fitting needs the frames' reference forces")
    index = check_train_frames(frames, train_index, split_fractions, split_gap, split_frames)
    if frames_per_step < 1:
        raise ValueError(f"frames_per_step must be >= 1, got {frames_per_step}")
    per_epoch = -(-len(index) // frames_per_step)
    n_steps = int(epochs) * per_epoch if epochs is not None else int(steps or 0)
    if n_steps < 0:
        raise ValueError(f"the budget must be >= 0 steps, got {n_steps}")
    n_monitor = len(index) if monitor_frames is None else min(int(monitor_frames), len(index))
    monitor = index[np.unique(np.linspace(0, len(index) - 1, max(n_monitor, 1)).round().astype(int))]

    model.eval()
    branch_params = [p for b in (model.branch0, model.branch1) for p in b.parameters()]
    flags = [p.requires_grad for p in branch_params]
    try:
        if freeze_branches:
            for p in branch_params:
                p.requires_grad_(False)
        mae, scale0 = _monitor(model, frames, monitor, frames_per_step, branches=True)
        start_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        fitting = n_steps > 0  # a zero budget only measures the model as given
        if fitting and bool((model.feature_mean == 0).all() and (model.feature_std == 1).all()):
            _standardise_features(model, frames, index, frames_per_step)
        if fitting and train_delta and centre_delta:
            _centre_delta(model, frames, monitor, frames_per_step)
        groups = [{"params": list(model.router.parameters()), "lr": lr}]
        if train_delta:
            groups.append({"params": [model.delta_correction], "lr": delta_lr})
        if not freeze_branches:
            groups.append({"params": branch_params, "lr": lr})
        optimizer = torch.optim.Adam(groups)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda k: 0.5 * (1.0 + math.cos(math.pi * k / max(n_steps, 1)))
        )
        rng = np.random.default_rng(seed)
        order: list[np.ndarray] = []
        losses = []
        start = time.perf_counter()
        for _ in tqdm(
            range(n_steps), disable=not progress, desc="fit mixed", unit="step", dynamic_ncols=True
        ):
            if not order:
                order = _frame_chunks(frames, rng.permutation(index), frames_per_step)[::-1]
            batch = _batch(model, frames, order.pop())
            optimizer.zero_grad(set_to_none=True)
            forces = model(batch, create_graph=True)["forces"]
            loss = (forces - batch.forces).abs().mean()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()) * EV_TO_MEV)
        seconds = (time.perf_counter() - start) / max(n_steps, 1)
        final, scale1 = _monitor(model, frames, monitor, frames_per_step, branches=False)
        kept_initial = bool(keep_best and final[0] > mae[0])
        if kept_initial:
            model.load_state_dict(start_state)
            final, scale1 = mae, scale0
    finally:
        for p, flag in zip(branch_params, flags, strict=True):
            p.requires_grad_(flag)
        model.zero_grad(set_to_none=True)
        model.eval()
    return MixedFitResult(
        steps=n_steps,
        frames_per_step=frames_per_step,
        losses=losses,
        train_mae_initial=float(mae[0]),
        train_mae_final=float(final[0]),
        train_mae_branch0=float(mae[1]),
        train_mae_branch1=float(mae[2]),
        mean_scale_initial=scale0,
        mean_scale_final=scale1,
        monitor_index=monitor.tolist(),
        seconds_per_step=seconds,
        kept_initial=kept_initial,
    )


@torch.no_grad()
def _standardise_features(model: MixedForceModel, frames: FrameSet, index: np.ndarray, size: int) -> None:
    """Feature mean and std over the atoms of the ``index`` frames (train frames only)."""
    feats = torch.cat([model.features(_batch(model, frames, c)) for c in _frame_chunks(frames, index, size)])
    model.feature_mean.copy_(feats.mean(dim=0))
    model.feature_std.copy_(
        feats.std(dim=0).clamp_min(1e-6) if feats.shape[0] > 1 else torch.ones_like(feats[0])
    )
