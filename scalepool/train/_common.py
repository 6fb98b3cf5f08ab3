"""Shared helpers of training and prediction: run-folder file names, devices, dtypes."""

from __future__ import annotations

import torch

#: File names inside a run directory.
CHECKPOINT = "checkpoint.pt"  # full training state, for resuming
BEST = "best.pt"  # best validation model (scalepool.models.save_model format)
LAST = "last.pt"  # latest model (same format)
HISTORY = "history.csv"  # one row per completed epoch
CONFIG = "config.json"  # parameters, dataset, seed, versions, git commit

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class TrainError(ValueError):
    """A training or prediction request cannot be honoured; the message says why."""


class NonFiniteError(TrainError):
    """A loss, gradient or prediction became NaN or inf; nothing of that step was kept."""


def resolve_device(device: str | torch.device) -> torch.device:
    """Validate a device request: ``"cpu"``, ``"cuda"`` or ``"cuda:<i>"``.

    Raises :class:`TrainError` when CUDA is asked for but not usable here.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise TrainError(f"invalid device {device!r}: {err}") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainError(
                f"device {device!r} requested but CUDA is not available on this machine; use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TrainError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif dev.type != "cpu":
        raise TrainError(f"device must be 'cpu' or 'cuda[:i]', got {device!r}")
    return dev


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``torch.float32`` or ``torch.float64`` from a dtype or its name."""
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPES.values():
            return dtype
    elif str(dtype) in _DTYPES:
        return _DTYPES[str(dtype)]
    raise TrainError(f"dtype must be float32 or float64, got {dtype!r}")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
