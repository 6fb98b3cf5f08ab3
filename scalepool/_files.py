"""The one atomic writer: every file scalepool writes goes through :func:`write_atomic`.

A write goes to a temporary file beside the target, is flushed to disk, given
the permissions a plain ``open`` would give, and renamed over the target, so an
interrupted run never leaves a half-written file (a reader sees the old file or
the new one, never a mix).  The helpers below serialise JSON, CSV, ``.npz`` and
``torch.save`` payloads through it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_paths",
    "canonical_json",
    "jsonable",
    "write_atomic",
    "write_csv",
    "write_json",
    "write_npz",
    "write_text",
    "write_torch",
]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, data: bytes | Callable[[IO[bytes]], Any]) -> Path:
    """Write ``data`` (bytes, or ``writer(handle)``) to ``path`` atomically; returns ``path``.

    The parent folder is created.  On any error (disk full, Ctrl-C) the
    temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; match a plain open()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def jsonable(value: Any) -> Any:
    """``json.dumps`` fallback: numpy scalars and arrays, paths."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def canonical_json(obj: Any) -> Any:
    """``obj`` after a JSON round trip (tuples become lists, keys sorted), for comparisons."""
    return json.loads(json.dumps(obj, sort_keys=True, default=jsonable))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any, sort_keys: bool = False) -> Path:
    """Indented JSON (NaN written as ``NaN``; numpy values and paths converted)."""
    return write_text(path, json.dumps(obj, indent=1, sort_keys=sort_keys, default=jsonable) + "\n")


def write_csv(path: str | os.PathLike, table, index: bool = False) -> Path:
    """A pandas DataFrame as CSV."""
    return write_text(path, table.to_csv(index=index))


def write_npz(path: str | os.PathLike, arrays: dict[str, Any], compressed: bool = True) -> Path:
    """A ``.npz`` archive of ``arrays`` (``path`` keeps its name; numpy adds no suffix)."""
    import numpy as np

    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return write_atomic(path, buffer.getvalue())


def write_torch(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save(obj)``."""
    import torch

    return write_atomic(path, lambda handle: torch.save(obj, handle))


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Temporary paths beside ``paths`` for writers that take a file name (MDAnalysis, ASE);
    renamed onto ``paths`` only when the block succeeds, removed otherwise."""
    targets = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        for path in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
            os.close(fd)
            temps.append(Path(tmp))
        yield temps
        for tmp, path in zip(temps, targets, strict=True):
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise
