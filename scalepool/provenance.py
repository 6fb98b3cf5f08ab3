"""Where a result came from: the code version, library versions, file checksums.

Every run folder, prediction cache, dataset stage and study records these, so a
number can be traced to the commit and the input bytes that produced it.  A
results folder (:class:`ResultsDir`) is closed by ``provenance.json``
(parameters, seeds, input checksums, versions, commit, and the SHA-256 of every
output), written last and removed first, so a folder whose provenance matches
the request (:func:`is_complete`) holds a finished result and a folder without
one holds an interrupted run that must be redone.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from ._files import jsonable, write_csv, write_json

__all__ = [
    "PROVENANCE",
    "ResultsDir",
    "is_complete",
    "read_provenance",
    "CODE_PATHS",
    "code_version",
    "describe_input",
    "file_sha256",
    "git_commit",
    "library_versions",
    "provenance",
    "utc_now",
]

#: Paths (relative to the repository root) whose changes can change a result; figures,
#: README and data that a run writes do not make the code ``+dirty``.
CODE_PATHS = ("scalepool", "studies", "benchmarks", "pyproject.toml", "Makefile")

#: Distributions whose versions shape results.
_LIBRARIES = ("scalepool", "numpy", "scipy", "torch", "pandas", "optuna", "matplotlib", "openmm", "torch-pme")
_CHUNK = 1 << 20
_REPOSITORY = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=_REPOSITORY, capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()


def git_commit() -> str | None:
    """Commit of the scalepool source tree, ``+dirty`` when its code (:data:`CODE_PATHS`)
    differs from that commit, untracked files included; ``None`` outside a git checkout."""
    try:
        commit = _git("rev-parse", "HEAD")
        # untracked files count: a new module changes what the package does
        dirty = _git("status", "--porcelain", "--untracked-files=all", "--", *CODE_PATHS)
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None


def code_version() -> str:
    """What a stage key records of the code: the commit, or the package version outside git.

    A dirty tree gets a hash of its diff and untracked code files, so two different
    uncommitted edits never share a key.
    """
    commit = git_commit()
    if commit is None:
        from . import __version__

        return f"scalepool-{__version__}"
    if not commit.endswith("+dirty"):
        return commit
    digest = hashlib.sha256(_git("diff", "HEAD", "--", *CODE_PATHS).encode())
    for name in sorted(_git("ls-files", "--others", "--exclude-standard", "--", *CODE_PATHS).split()):
        digest.update(name.encode())
        digest.update(file_sha256(_REPOSITORY / name).encode())
    return f"{commit}:{digest.hexdigest()[:12]}"


def library_versions() -> dict[str, str]:
    """Python and the installed versions of the libraries that shape results."""
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


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
    inputs : input files (prediction caches, datasets), each described by :func:`describe_input`
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


PROVENANCE = "provenance.json"


def _canonical_text(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=jsonable)


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

    def csv(self, name: str, table, index: bool = False) -> Path:
        """Write a pandas DataFrame ``table`` as ``name``."""
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
    if parameters is not None and _canonical_text(record.get("parameters")) != _canonical_text(
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
