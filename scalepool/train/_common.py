"""Shared helpers of training and prediction: devices, dtypes, atomic files, provenance."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def chmod_default(path: str | os.PathLike) -> None:
    """Give a file made by ``mkstemp`` (mode 0600) the permissions a plain ``open`` would."""
    os.chmod(path, 0o666 & ~_umask())


def _atomic_write(path: Path, write) -> Path:
    """Call ``write(handle)`` on a temporary file next to ``path``, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        chmod_default(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``."""
    return _atomic_write(Path(path), lambda handle: torch.save(obj, handle))


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return _atomic_write(Path(path), lambda handle: handle.write(text.encode()))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def canonical_json(obj: Any) -> Any:
    """``obj`` after a JSON round trip (tuples become lists), for comparisons."""
    return json.loads(json.dumps(obj, sort_keys=True))


#: Tracked paths whose changes can change a result; figures, README and data written by a
#: run (``reproduce --figures-dir figures``) do not make the code ``+dirty``.
CODE_PATHS = ("scalepool", "studies", "benchmarks", "pyproject.toml", "Makefile")


def git_commit() -> str | None:
    """Commit of the scalepool source tree (``+dirty`` if its code, :data:`CODE_PATHS`,
    is modified), or ``None`` outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape a training run."""
    import numpy

    import scalepool

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scalepool": scalepool.__version__,
    }
