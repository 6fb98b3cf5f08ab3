"""Provenance of a result: code version, parameters, seeds, inputs, library versions, time.

Every study writes one ``provenance.json`` beside its tables (see
:mod:`._results`); it is written last, so its presence marks a finished,
valid result that a resumed pipeline may skip.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import socket
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from ..train._common import git_commit  # one definition for runs, caches and studies

#: Distributions whose versions shape results.
_LIBRARIES = ("scalepool", "numpy", "scipy", "torch", "pandas", "optuna", "matplotlib", "openmm")
_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Python and the installed versions of the libraries in :data:`_LIBRARIES`."""
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def describe_input(path: str | os.PathLike) -> dict[str, Any]:
    """Path, size and SHA-256 of an input file; for a prediction cache or a dataset
    also its frames, atoms, branches and the dataset checksum recorded in ``meta``."""
    path = Path(path)
    info: dict[str, Any] = {
        "path": str(path.resolve()),
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
    }
    if path.suffix == ".npz":
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as data:
                if "meta" in data.files:
                    meta = json.loads(str(data["meta"]))
                    for key in ("dataset_checksum", "branches", "anchors", "generator", "seed"):
                        if key in meta:
                            info[key] = meta[key]
                if "positions" in data.files:
                    shape = data["positions"].shape
                    info["n_frames"], info["n_atoms"] = int(shape[0]), int(shape[1])
        except (OSError, ValueError, json.JSONDecodeError):
            pass
    return info


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def provenance(
    study: str,
    parameters: dict[str, Any],
    seeds: list[int] | tuple[int, ...] = (),
    inputs: list[str | os.PathLike] = (),
) -> dict[str, Any]:
    """The provenance record of one study run (JSON-serialisable).

    Parameters
    ----------
    study : study name
    parameters : every setting that shapes the result (JSON-serialisable)
    seeds : the seeds the result averages over
    inputs : input files (prediction caches, datasets); each is described by
        :func:`describe_input`
    """
    return {
        "study": study,
        "parameters": json.loads(json.dumps(parameters, default=str)),
        "seeds": [int(s) for s in seeds],
        "inputs": [describe_input(p) for p in inputs],
        "git_commit": git_commit(),
        "versions": library_versions(),
        "created": utc_now(),
        "host": socket.gethostname(),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else [],
    }
