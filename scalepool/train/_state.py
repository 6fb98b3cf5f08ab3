"""Training state: what a checkpoint holds, how it is written, and the history file.

A checkpoint (``checkpoint.pt``) is one ``torch.save`` dictionary:

- ``format``: :data:`CHECKPOINT_FORMAT`;
- ``request``: the parameters that must not change on resume (model config,
  optimiser and loss settings, split, seed, dtype), and ``dataset_checksum``;
- ``progress``: a :class:`Progress` as a dict (epoch, batch position, running
  train-loss sums, best-so-far, early-stopping counter, elapsed time and the
  full metrics history);
- ``model``, ``optimizer``, ``scheduler``: state dicts;
- ``rng``: torch CPU (and CUDA) generator states at the batch position.

Everything is plain tensors and Python values, so it loads with
``torch.load(..., weights_only=True)``.  The history lives in the checkpoint and
``history.csv`` is rewritten from it, so after a crash and resume the file never
has a duplicated or a missing epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .._files import canonical_json, write_text, write_torch
from ._common import BEST, CHECKPOINT, NonFiniteError, TrainError

CHECKPOINT_FORMAT = "scalepool-train-checkpoint/1"

#: Columns of ``history.csv``: epoch (1-based), mean train loss over the
#: epoch's batches (loss units: eV/Å for "mae", (eV/Å)^2 for "mse"), validation
#: force MAE in meV/Å over force components, learning rate at the end of the
#: epoch, training time so far in seconds (all sessions), and validation energy
#: MAE in meV/atom (NaN without reference energies).
HISTORY_COLUMNS = ["epoch", "train_loss", "val_force_mae_meV_A", "lr", "elapsed_s", "val_energy_mae_meV_atom"]


@dataclasses.dataclass
class Progress:
    """Where a run stands; everything needed to continue it exactly.

    ``epoch`` counts completed epochs (it is the 0-based index of the epoch in
    progress) and ``batch`` the batches of that epoch already applied.
    ``loss_sum``/``loss_count`` accumulate the epoch's batch losses so that the
    epoch's train loss is the same whether or not the run was interrupted.
    """

    epoch: int = 0
    batch: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    best_val: float = math.inf  # meV/Å
    best_epoch: int | None = None  # 1-based epoch of best.pt
    bad_epochs: int = 0  # epochs since the last improvement (early stopping)
    elapsed_s: float = 0.0
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Progress:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def non_finite_tensors(model: torch.nn.Module) -> list[str]:
    """Names of the model's floating-point parameters and buffers holding NaN or inf."""
    return [
        name
        for name, value in model.state_dict().items()
        if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


def check_finite_model(model: torch.nn.Module, path: Path) -> None:
    """Refuse to write a model (or a checkpoint) whose weights are not all finite."""
    bad = non_finite_tensors(model)
    if bad:
        listing = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise TrainError(
            f"refusing to write {path}: the model's {listing} hold non-finite values (NaN or inf); "
            "the file on disk is the last good one"
        )


def kept_note(path: Path, advice: str = "") -> str:
    """What a failed atomic write of ``path`` left behind, for error messages."""
    if path.exists():
        note = f"the previous {path.name} is kept unchanged"
        return f"{note} ({advice})" if advice else note
    return f"no {path.name} was written"


@contextlib.contextmanager
def writing(path: Path, kept: str) -> Iterator[None]:
    """Turn an OSError of a write to ``path`` (disk full, no permission) into a :class:`TrainError`
    naming the file; ``kept`` says what is left as it was (the writes are atomic)."""
    try:
        yield
    except OSError as err:
        raise TrainError(f"cannot write {path}: {err.strerror or err}; {kept}") from err


def save_checkpoint(
    path: Path,
    *,
    request: dict[str, Any],
    dataset_checksum: str,
    progress: Progress,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rng: dict[str, Any],
) -> None:
    """Write the full training state atomically (temporary file, then ``os.replace``).

    A model with non-finite weights is refused and a failed write (disk full)
    raises :class:`TrainError`; either way the previous checkpoint stays as it was.
    """
    check_finite_model(model, path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "request": canonical_json(request),
        "dataset_checksum": dataset_checksum,
        "progress": progress.as_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng,
    }
    with writing(path, kept_note(path, "resume from it once the problem is fixed")):
        write_torch(path, payload)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise TrainError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path} is not a scalepool training checkpoint ({CHECKPOINT_FORMAT})")
    return state


def check_resumable(
    state: dict[str, Any], request: dict[str, Any], dataset_checksum: str, path: Path
) -> None:
    """Refuse to resume a checkpoint made for another request or dataset."""
    if state["dataset_checksum"] != dataset_checksum:
        raise TrainError(
            f"cannot resume {path}: it was trained on a dataset with checksum "
            f"{state['dataset_checksum'][:16]}..., the requested dataset has {dataset_checksum[:16]}...; "
            "use the original dataset or a new output directory"
        )
    old, new = state["request"], canonical_json(request)
    differ = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key))
    if differ:
        details = "; ".join(
            f"{key}: checkpoint {old.get(key)!r} vs requested {new.get(key)!r}" for key in differ
        )
        raise TrainError(
            f"cannot resume {path}: the run was started with different settings ({details}); "
            "repeat the original settings or use a new output directory"
        )


def history_frame(rows: list[dict[str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def write_history(path: Path, rows: list[dict[str, float]]) -> None:
    """Rewrite ``history.csv`` atomically from the rows kept in the checkpoint."""
    with writing(path, kept_note(path)):
        write_text(path, history_frame(rows).to_csv(index=False, float_format="%.10g"))


def non_finite_error(what: str, frames, out, progress, use_energy: bool, paths: dict) -> NonFiniteError:
    """The error of a non-finite training loss or gradient: epoch, batch and frames, which frames
    predict non-finite forces (``out``, the batch's model output, when there is one) and what is
    left on disk (nothing of this batch was applied or written)."""
    frames = [int(f) for f in frames]
    detail = ""
    if out is not None:
        forces = out["forces"].detach().reshape(len(frames), -1, 3)
        finite = torch.isfinite(forces).flatten(1).all(1)
        if use_energy:
            finite &= torch.isfinite(out["energy"].detach().reshape(-1))
        culprits = [f for f, ok in zip(frames, finite.cpu().tolist(), strict=True) if not ok]
        diverged = "a diverging model (lower --lr or set --max-grad-norm)"
        if not culprits:
            detail = f"; every frame's prediction is finite: {diverged}"
        elif len(culprits) < len(frames):
            detail = (
                f"; frame(s) {culprits} give non-finite predicted forces or energies "
                "(overlapping atoms? check the frames' positions)"
            )
        else:
            detail = (
                f"; frame(s) {culprits} give non-finite predicted forces or energies "
                f"(overlapping atoms in them, or {diverged})"
            )
    saved = [
        f"{CHECKPOINT} keeps the last good state"
        if paths[CHECKPOINT].exists()
        else f"no {CHECKPOINT} was written"
    ]
    if paths[BEST].exists():
        saved.append(f"{BEST} is unchanged")
    return NonFiniteError(
        f"{what} at epoch {progress.epoch + 1}, batch {progress.batch + 1} (dataset frames {frames}){detail}; "
        f"training stopped: {' and '.join(saved)}"
    )


@dataclasses.dataclass
class TrainResult:
    """What a :func:`train` call ended with.

    ``stop_reason`` is ``"completed"`` (all epochs done), ``"early_stopping"``
    (``patience`` epochs without a better validation force MAE) or
    ``"time_budget"`` (the ``max_minutes`` safety stop fired: the run is
    incomplete; call ``train`` again to go on).  ``steps`` counts the optimiser
    steps applied over all sessions (the run's compute, independent of the
    machine).
    """

    out_dir: Path
    best_path: Path
    last_path: Path
    history: pd.DataFrame  # columns HISTORY_COLUMNS, one row per completed epoch
    best_epoch: int | None  # 1-based; None before the first validation
    best_val_force_mae: float  # meV/Å, inf before the first validation
    epochs_completed: int
    stop_reason: str
    elapsed_s: float  # training time over all sessions
    resumed: bool
    steps: int = 0  # optimiser steps over all sessions
    steps_per_epoch: int = 0

    @property
    def complete(self) -> bool:
        """False only when the safety stop ended the run (finished and early-stopped runs are complete)."""
        return self.stop_reason != "time_budget"
