"""Results folders: tables and JSON written atomically, closed by ``provenance.json``.

A study writes everything through one :class:`ResultsDir`.  ``provenance.json``
(parameters, seeds, input checksums, versions, commit, and the SHA-256 of every
output) is written last and removed first, so a folder with a provenance that
matches the request (:func:`is_complete`) holds a finished result and a folder
without one holds an interrupted run that must be redone.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from ._provenance import file_sha256, provenance

PROVENANCE = "provenance.json"


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Indented JSON (NaN written as ``NaN``, numpy scalars as numbers), atomically."""
    return write_atomic(path, (json.dumps(obj, indent=1, default=_jsonable) + "\n").encode())


def write_csv(path: str | os.PathLike, table: pd.DataFrame, index: bool = False) -> Path:
    return write_atomic(path, table.to_csv(index=index).encode())


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=_jsonable)


class ResultsDir:
    """The output folder of one study run.

    Parameters
    ----------
    path : the results folder (created)
    study : study name, recorded in the provenance
    parameters : settings that shape the result (compared by :func:`is_complete`)
    seeds : seeds the results average over
    inputs : input files (their SHA-256 is recorded)
    """

    def __init__(self, path, study: str, parameters: dict, seeds=(), inputs=()):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / PROVENANCE).unlink(missing_ok=True)
        self.study, self.parameters = study, dict(parameters)
        self.seeds, self.inputs = list(seeds), [Path(p) for p in inputs]
        self.outputs: list[str] = []
        self.notes: dict[str, Any] = {}
        self.start = time.perf_counter()

    def file(self, name: str) -> Path:
        """Path of an output ``name`` inside the folder, recorded as an output."""
        if name not in self.outputs:
            self.outputs.append(name)
        return self.path / name

    def csv(self, name: str, table: pd.DataFrame, index: bool = False) -> Path:
        return write_csv(self.file(name), table, index=index)

    def json(self, name: str, obj: Any) -> Path:
        return write_json(self.file(name), obj)

    def finish(self, **notes) -> Path:
        """Write ``provenance.json`` (with ``notes`` such as a status or a summary)."""
        record = provenance(self.study, self.parameters, self.seeds, self.inputs)
        record["elapsed_s"] = round(time.perf_counter() - self.start, 3)
        record["outputs"] = {
            name: file_sha256(self.path / name) for name in self.outputs if (self.path / name).exists()
        }
        record.update(self.notes)
        record.update(notes)
        return write_json(self.path / PROVENANCE, record)


def read_provenance(path: str | os.PathLike) -> dict[str, Any] | None:
    """The provenance of a results folder, or ``None`` when missing or unreadable."""
    file = Path(path) / PROVENANCE
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_complete(path, parameters: dict | None = None, inputs=None) -> bool:
    """Whether ``path`` holds a finished result for this request.

    True when ``provenance.json`` exists, every recorded output exists with its
    recorded SHA-256, and (when given) the parameters and the inputs' SHA-256
    equal the recorded ones.
    """
    record = read_provenance(path)
    if record is None:
        return False
    for name, digest in record.get("outputs", {}).items():
        file = Path(path) / name
        if not file.exists() or file_sha256(file) != digest:
            return False
    if parameters is not None and _canonical(record.get("parameters")) != _canonical(
        json.loads(json.dumps(parameters, default=str))
    ):
        return False
    if inputs is not None:
        recorded = [item.get("sha256") for item in record.get("inputs", [])]
        try:
            current = [file_sha256(p) for p in inputs]
        except OSError:
            return False
        if recorded != current:
            return False
    return True
