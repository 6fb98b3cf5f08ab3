"""``train``: fit one force branch with checkpoints, resume, early stopping and a safety stop.

One call trains a model on the training block of a time-block split and
validates it on the validation block after every epoch.  The run directory
holds

- ``checkpoint.pt``: the full training state (see :mod:`._state`), written
  atomically at the end of each epoch and every ``checkpoint_every`` batches;
- ``best.pt`` / ``last.pt``: the best-validation and the latest model, in the
  format of :func:`scalepool.models.save_model`;
- ``history.csv``: one row per completed epoch (:data:`HISTORY_COLUMNS`);
- ``config.json``: parameters, dataset path and checksum, split, seed,
  versions, git commit, one entry per session, and the result.

A run killed at any point continues from its last checkpoint when ``train`` is
called again with the same settings, and ends with the same history as an
uninterrupted run: the batch order of epoch ``e`` is a permutation drawn from
``numpy.random.default_rng([seed, e])``, and the checkpoint holds the optimiser,
scheduler and RNG states and the running sums of the epoch in progress.

A run's length is counted in epochs (optimiser steps: epochs x batches per
epoch), never in wall time: with the same seed, data, settings and one torch
thread, two runs write bitwise-identical validation columns in ``history.csv``
(``tests/unit/train/test_determinism.py``).  ``max_minutes`` is only a safety stop: when it
fires the run ends *incomplete* (``TrainResult.complete`` is False) and a later
call continues it to the same end as an uninterrupted run; when it does not
fire it changes nothing.  Wall time is recorded (``elapsed_s``) but decides
nothing else: validation runs after every epoch, whatever the clock says.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1) the same call trains data-parallel
with DistributedDataParallel: every rank takes its shard of each batch and of
the validation frames, and rank 0 alone writes the run folder
(:mod:`._distributed` says how K ranks compute what one process computes).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .._files import canonical_json
from ..data import FrameSet
from ..models import branch_name
from . import _model_io
from ._board import Board, check_tensorboard
from ._common import BEST, CHECKPOINT, CONFIG, HISTORY, LAST, NonFiniteError, TrainError, resolve_device
from ._distributed import Ranks, check_shards, evaluate_sharded, init_ranks
from ._folder import open_run_folder
from ._objective import BatchLoss, check_stress_labels
from ._precision import check_precision, grad_scaler
from ._predict import evaluate_forces
from ._run_config import record_result, write_run_config
from ._settings import TrainSettings, epoch_batches, steps_per_epoch
from ._state import (
    Progress,
    TrainResult,
    check_finite_model,
    history_frame,
    kept_note,
    non_finite_error,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_history,
    writing,
)


def train(
    model: torch.nn.Module,
    frames: FrameSet,
    out_dir: str | os.PathLike,
    *,
    epochs: int,
    max_minutes: float | None = None,
    batch_size: int = 1,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    loss: str = "mae",
    huber_delta: float = 0.1,
    energy_weight: float = 0.1,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    split_gap: int = 0,
    patience: int | None = 20,
    scheduler: str = "plateau",
    lr_factor: float = 0.5,
    lr_patience: int = 5,
    min_lr: float = 1e-6,
    max_grad_norm: float | None = None,
    checkpoint_every: int | None = 20,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
    split_mode: str = "time",
    split_seed: int = 0,
    stress_weight: float = 0.0,
    resume: bool | None = None,
    overwrite: bool = False,
    branch: str | None = None,
    data_path: str | os.PathLike | None = None,
    progress: bool = True,
    tensorboard: bool = False,
    precision: str = "float32",
) -> TrainResult:
    """Train ``model`` on the training block of ``frames``; see the module docstring.

    Parameters
    ----------
    model : a ForceModel (``cutoff``, ``config``, ``forward(batch) -> {"energy",
        "forces", ...}`` in eV and eV/Å); trained in place and left on ``device``
    frames : the whole dataset (fixed or ragged layout); split in time blocks by
        ``split_fractions`` and ``split_gap`` (:meth:`FrameSet.split_indices`), or
        at random (seeded by ``split_seed``, not ``seed``, so runs of several seeds share
        the split) with ``split_mode="random"``
    out_dir : run directory (created); resumed when it holds a checkpoint
    epochs : total number of epochs of the run (a resumed run counts the epochs
        already done; a larger value extends a finished run)
    max_minutes : wall-clock safety stop of this call (``None``: none); when it
        fires, training stops cleanly (checkpoint, ``last.pt``, ``best.pt``),
        the result is incomplete (``stop_reason="time_budget"``) and a later
        call goes on.  Budgets belong in ``epochs``: the stop only guards
        against a run far slower than expected.
    batch_size : frames per optimiser step
    lr, weight_decay : AdamW settings
    loss : ``"mae"``, ``"mse"`` or ``"huber"`` (``huber_delta`` in eV/Å), on
        force components in eV/Å
    energy_weight : weight of the same loss on per-atom energies (eV/atom);
        used only when ``frames.energy`` exists
    stress_weight : weight of the same loss on stress components (eV/Å^3, ASE sign, from
        ``model(batch, compute_stress=True)``); 0 (default) turns it off; above 0 every frame
        must be periodic and ``frames.stress`` present, else :class:`TrainError`
    patience : stop after this many epochs without a lower validation force
        MAE (``None``: never)
    scheduler : ``"plateau"`` (ReduceLROnPlateau on the validation force MAE:
        ``lr_factor``, ``lr_patience``, ``min_lr``) or ``"cosine"`` (annealed to
        ``min_lr`` over ``epochs``)
    max_grad_norm : clip the gradient norm (``None``: no clipping)
    checkpoint_every : also checkpoint every this many batches (``None``: only
        at epoch ends)
    seed : seeds torch at the start of a fresh run and fixes every epoch's
        batch order (the model's initialisation is the caller's)
    device, dtype : where and in which float type to train
    resume : ``None`` resumes when ``out_dir`` holds a checkpoint; ``True``
        requires one; ``False`` refuses a directory that holds one.  A
        checkpoint made with other settings or another dataset is refused.
    overwrite : start a new run in ``out_dir`` even when it holds the files of
        another run (``best.pt``, ``last.pt``, ``history.csv``, ``config.json``,
        ``checkpoint.pt``): they are replaced.  Without it a folder holding run
        files but no checkpoint is refused (a finished run whose checkpoint was
        removed, another tool's output), except the same request's own attempt
        killed before its first checkpoint, which starts again.  Cannot be
        combined with ``resume=True``.
    branch : run name written to ``config.json`` and used by
        :func:`predict_cache` as ``forces_<branch>``; default
        :func:`scalepool.models.branch_name` (``short``/``long``/``muse`` for the catalogue's branches)
    data_path : dataset file, recorded in ``config.json``
    progress : show a tqdm progress bar (rank 0 only)
    tensorboard : also write the history's scalars to ``out_dir/tensorboard`` (needs the
        ``tensorboard`` package; rank 0 only)
    precision : ``"float32"`` (default; autocast never entered), ``"bf16-mixed"`` or
        ``"fp16-mixed"`` (CUDA only): model forwards (training and validation) under
        ``torch.autocast``; weights, energy sums, electrostatics, forces and the loss stay
        float32, fp16 gradients go through a :class:`torch.amp.GradScaler`
        (:mod:`scalepool.train._precision`).  Part of the run's request (``config.json``)
        when not float32.  fp16's loss scale is not checkpointed: a resumed fp16 run starts
        from the initial scale again.

    Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment, or a process group the caller
    initialised) every rank calls ``train`` with the same arguments; ``batch_size`` is the global
    batch, split over the ranks.  ``cuda`` means ``cuda:LOCAL_RANK``.

    Returns
    -------
    TrainResult.  ``KeyboardInterrupt`` is re-raised after a checkpoint is saved.

    Raises
    ------
    TrainError
        for bad settings, a folder that is not this run's, a non-finite loss,
        gradient or validation prediction (naming the epoch and the frames; the
        checkpoint and ``best.pt`` stay the last good ones) or a failed write
        (disk full: naming the file; the previous file is kept).
    """
    settings = TrainSettings(
        epochs=epochs, max_minutes=max_minutes, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        loss=loss, huber_delta=huber_delta, energy_weight=energy_weight, split_fractions=split_fractions,
        split_gap=split_gap, patience=patience, scheduler=scheduler, lr_factor=lr_factor,
        lr_patience=lr_patience, min_lr=min_lr, max_grad_norm=max_grad_norm, checkpoint_every=checkpoint_every,
        seed=seed, dtype=dtype, split_mode=split_mode, split_seed=split_seed, stress_weight=stress_weight,
        precision=precision,
    )  # fmt: skip
    if not isinstance(frames, FrameSet):
        raise TrainError(f"frames must be a FrameSet, got {type(frames).__name__}")
    for attribute in ("cutoff", "config"):
        if not hasattr(model, attribute):
            raise TrainError(
                f"model {type(model).__name__} has no '{attribute}' attribute (ForceModel interface)"
            )
    check_stress_labels(frames, settings.stress_weight)
    if tensorboard:
        check_tensorboard()
    check_precision(settings.precision, resolve_device(device))
    ranks, device = init_ranks(resolve_device(device))
    clean = False
    try:
        session = _Session(model, frames, Path(out_dir), settings, device, branch, progress, ranks)
        check_shards(ranks, len(session.split["train"]), settings.batch_size)
        session.start(resume, data_path, overwrite, tensorboard)
        try:
            result = session.run()
        finally:
            if session.board is not None:
                session.board.close()
        clean = True
        return result
    finally:
        ranks.close(clean)


class _Session:
    """One call of :func:`train`: builds or restores the state, runs epochs, writes files."""

    def __init__(self, model, frames, out, settings, device, branch, progress, ranks: Ranks):
        self.start_time = time.perf_counter()
        self.model, self.frames, self.out, self.s, self.device = model, frames, out, settings, device
        self.dtype = settings.torch_dtype
        self.ranks = ranks
        self.progress = progress and ranks.main
        self.board: Board | None = None
        self.paths = {name: out / name for name in (CHECKPOINT, BEST, LAST, HISTORY, CONFIG)}
        config = canonical_json(model.config)
        self.branch = branch or branch_name(config)
        if not isinstance(self.branch, str) or not self.branch.isidentifier():
            raise TrainError(
                f"branch name must be an identifier (used as forces_<branch>), got {self.branch!r}"
            )
        self.split = frames.split_indices(
            settings.split_fractions, settings.split_gap, settings.split_mode, settings.split_seed
        )
        self.request = settings.request(self.branch, config)
        self.checksum = frames.checksum()
        self.use_energy = frames.energy is not None and settings.energy_weight > 0

    # ---------------------------------------------------------------- setup
    def start(self, resume: bool | None, data_path, overwrite: bool = False, tensorboard: bool = False) -> None:
        """Fresh run (species statistics, seed) or restore every state from the checkpoint.

        Rank 0 checks and prepares the folder and reads the checkpoint; every rank gets its outcome.
        """
        s, paths = self.s, self.paths
        self.resumed, saved = self.ranks.on_main(
            lambda: open_run_folder(self.out, paths, self.request, self.checksum, resume, overwrite), share=True
        )
        if not self.resumed:
            _model_io.fit_species_statistics(self.model, self.frames[self.split["train"]])
        self.model.to(device=self.device, dtype=self.dtype)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
        self.scheduler = s.make_scheduler(self.optimizer)
        if saved is not None:
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            set_rng_state(saved["rng"])
            self.state = Progress.from_dict(saved["progress"])
        else:
            torch.manual_seed(s.seed)
            self.state = Progress()

        def write_files() -> None:
            write_history(paths[HISTORY], self.state.history)  # drops rows written after the checkpoint
            write_run_config(
                paths[CONFIG], resumed=self.resumed, request=self.request, frames=self.frames,
                checksum=self.checksum, split=self.split, data_path=data_path, epochs=s.epochs,
                max_minutes=s.max_minutes, device=self.device, checkpoint_every=s.checkpoint_every,
                state=self.state, launch=self.ranks.describe(),
            )  # fmt: skip
            if tensorboard:
                self.board = Board(self.out, self.state.history)

        self.ranks.on_main(write_files)
        self.base_elapsed = self.state.elapsed_s
        self.deadline = None if s.max_minutes is None else self.start_time + 60.0 * s.max_minutes
        self.net = BatchLoss(self.model, self.frames, s, self.ranks, self.device, self.dtype)  # one step's loss
        self.scaler = grad_scaler(s.precision, self.device)  # fp16-mixed only
        if self.ranks.parallel:
            cuda = self.device.type == "cuda"
            # static_graph: parameters the loss does not reach (an energy-only shift trained without
            # energies) are found in the first step, not assumed used
            self.net = DistributedDataParallel(
                self.net, device_ids=[self.device.index] if cuda else None, static_graph=True
            )

    def save_model(self, name: str) -> None:
        """``best.pt`` or ``last.pt``, only ever with finite weights, atomically (rank 0 calls it)."""
        path = self.paths[name]
        check_finite_model(self.model, path)
        with writing(path, kept_note(path)):
            _model_io.save_model_atomic(self.model, path)

    def non_finite(self, what: str, frames, out=None) -> NonFiniteError:
        """The error of a non-finite loss or gradient at the current epoch and batch (``frames``: this
        rank's shard)."""
        if self.ranks.parallel:
            what = f"{what} (rank {self.ranks.rank} of {self.ranks.world_size})"
        # ragged batches hold frames of different sizes (and open/periodic reordered): no per-frame diagnosis
        out = None if self.frames.ragged else out
        return non_finite_error(what, frames, out, self.state, self.use_energy, self.paths)

    def elapsed(self) -> float:
        return self.base_elapsed + time.perf_counter() - self.start_time

    def out_of_time(self) -> bool:
        # a safety stop only: it may end the run, never change what a step or a validation computes;
        # rank 0's clock decides for every rank
        if self.deadline is None:
            return False
        return bool(self.ranks.from_main(time.perf_counter() > self.deadline))

    def checkpoint(self, rng=None) -> None:
        """Write ``checkpoint.pt`` (rank 0 only; use :meth:`checkpoint_all` where every rank passes)."""
        self.state.elapsed_s = self.elapsed()
        if not self.ranks.main:
            return
        save_checkpoint(
            self.paths[CHECKPOINT], request=self.request, dataset_checksum=self.checksum, progress=self.state,
            model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, rng=rng or rng_state(),
        )  # fmt: skip

    def checkpoint_all(self) -> None:
        """:meth:`checkpoint` called by every rank: a failed write on rank 0 stops them all."""
        self.state.elapsed_s = self.elapsed()
        self.ranks.on_main(self.checkpoint)

    # ----------------------------------------------------------------- loop
    def run(self) -> TrainResult:
        s, state = self.s, self.state
        n_batches = self.steps_per_epoch = steps_per_epoch(len(self.split["train"]), s.batch_size)
        self.bar = tqdm(
            total=s.epochs * n_batches, initial=min(state.epoch, s.epochs) * n_batches + state.batch,
            disable=not self.progress, unit="batch", desc=f"train {self.branch}", dynamic_ncols=True,
        )  # fmt: skip
        self.phase, self.batch_rng = "idle", None  # what a KeyboardInterrupt interrupts
        stop_reason = None
        try:
            while stop_reason is None:
                if state.epoch >= s.epochs:
                    stop_reason = "completed"
                elif s.patience is not None and state.bad_epochs >= s.patience:
                    stop_reason = "early_stopping"
                elif not self.train_epoch():
                    self.checkpoint_all()
                    stop_reason = "time_budget"
                else:
                    self.end_epoch()
                    if self.out_of_time():
                        stop_reason = "time_budget"
        except KeyboardInterrupt:
            # Before the optimiser step (or during validation) the state is that of
            # the step's start; while the optimiser or the epoch's bookkeeping runs
            # it may be half-updated, so the last checkpoint stands.
            if self.phase in ("forward", "validate"):
                self.checkpoint(self.batch_rng)
            elif self.phase == "idle":
                self.checkpoint()
            raise
        finally:
            self.bar.close()
        return self.finish(stop_reason)

    def train_epoch(self) -> bool:
        """Apply the remaining batches of the epoch in progress; False when the time budget ran out."""
        s, state, model = self.s, self.state, self.model
        batches = epoch_batches(self.split["train"], s.seed, state.epoch, s.batch_size)
        model.train()
        while state.batch < len(batches):
            self.batch_rng, self.phase = rng_state(), "forward"
            index = batches[state.batch]
            shard = self.ranks.shard(index)  # the whole batch in one process
            self.optimizer.zero_grad(set_to_none=True)
            # forces, energy and stress terms (_objective); on K ranks weighted so that their
            # rank average is the batch loss; ragged data: several model calls, one DDP forward
            step = self.net(index, shard)
            value, out = step["loss"], step["out"]
            loss = self.ranks.mean(float(value.detach()))
            if not math.isfinite(loss):
                raise self.non_finite(f"non-finite training loss ({loss})", shard, out)
            if self.scaler is not None:  # fp16: scaled loss; an overflowing step is skipped, the scale lowered
                self.scaler.scale(value).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                value.backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if (
                self.scaler is None
                and grads
                and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())
            ):
                names = [
                    name
                    for name, p in model.named_parameters()
                    if p.grad is not None and not bool(torch.isfinite(p.grad).all())
                ]
                raise self.non_finite(f"non-finite gradient of {', '.join(names[:5])}", shard, out)
            if s.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), s.max_grad_norm)
            self.phase = "step"
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            state.loss_sum += loss
            state.loss_count += 1
            state.batch += 1
            self.phase = "idle"
            self.bar.update(1)
            self.bar.set_postfix(epoch=state.epoch + 1, loss=f"{state.loss_sum / state.loss_count:.4g}")
            if s.checkpoint_every and state.batch % s.checkpoint_every == 0 and state.batch < len(batches):
                self.checkpoint_all()
            if self.out_of_time():
                return False
        return True

    def end_epoch(self) -> None:
        """Validate; update best model, schedule and early stopping; close the epoch on disk."""
        s, state = self.s, self.state
        self.batch_rng, self.phase = rng_state(), "validate"
        options = {"batch_size": s.batch_size, "device": self.device, "dtype": self.dtype, "check_finite": True}
        if s.precision != "float32":
            options["precision"] = s.precision
        try:
            if self.ranks.parallel:  # every rank its part of the frames, errors summed over ranks
                scores = evaluate_sharded(self.model, self.frames, self.split["val"], self.ranks, **options)
            else:
                scores = evaluate_forces(self.model, self.frames, self.split["val"], **options)
        except TrainError as err:
            saved = f"{CHECKPOINT} keeps the last good state" if self.paths[CHECKPOINT].exists() else ""
            raise NonFiniteError(
                f"validation after epoch {state.epoch + 1}: {err}; training stopped"
                + (f", {saved}" if saved else "")
            ) from err
        val = scores["force_mae_meV_A"]
        self.phase = "closing"
        improved = val < state.best_val
        if improved:
            state.best_val, state.best_epoch, state.bad_epochs = val, state.epoch + 1, 0
        else:
            state.bad_epochs += 1
        if s.scheduler == "plateau":
            self.scheduler.step(val)
        else:
            self.scheduler.step()
        row = {
            "epoch": state.epoch + 1,
            "train_loss": state.loss_sum / max(state.loss_count, 1),
            "val_force_mae_meV_A": val,
            "lr": self.optimizer.param_groups[0]["lr"],
            "elapsed_s": self.elapsed(),
            "val_energy_mae_meV_atom": scores["energy_mae_meV_atom"] if self.use_energy else float("nan"),
        }
        state.history.append(row)
        state.epoch += 1
        state.batch, state.loss_sum, state.loss_count = 0, 0.0, 0

        def close_files() -> None:  # rank 0
            if improved:
                self.save_model(BEST)
            # Checkpoint first: history.csv is rewritten from the checkpoint on resume.
            self.checkpoint()
            self.phase = "idle"
            write_history(self.paths[HISTORY], state.history)
            self.save_model(LAST)
            if self.board is not None:
                self.board.add(row)

        self.ranks.on_main(close_files)
        self.phase = "idle"
        self.bar.set_postfix(epoch=row["epoch"], loss=f"{row['train_loss']:.4g}", val=f"{val:.1f} meV/Å")

    def finish(self, stop_reason: str) -> TrainResult:
        paths, state = self.paths, self.state
        result = TrainResult(
            out_dir=self.out, best_path=paths[BEST], last_path=paths[LAST], history=history_frame(state.history),
            best_epoch=state.best_epoch, best_val_force_mae=state.best_val, epochs_completed=state.epoch,
            stop_reason=stop_reason, elapsed_s=state.elapsed_s, resumed=self.resumed,
            steps=state.epoch * self.steps_per_epoch + state.batch, steps_per_epoch=self.steps_per_epoch,
        )  # fmt: skip

        def close_files() -> None:  # rank 0
            self.save_model(LAST)
            if not paths[BEST].exists():  # nothing validated yet: the current model stands in
                self.save_model(BEST)
            record_result(paths[CONFIG], result)

        self.ranks.on_main(close_files)
        return result
