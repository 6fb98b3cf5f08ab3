"""``config.json`` of a run: what was asked, on which data, with which code; read back by prediction."""

from __future__ import annotations

import datetime
import json
import math
import os
from pathlib import Path
from typing import Any

from .._files import canonical_json, write_json
from ..provenance import git_commit, library_versions
from ._common import BEST, CONFIG, HISTORY, LAST, TrainError
from ._state import kept_note, writing


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a run directory, with a clear error when it is not one."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory not found: {run}")
    path = run / CONFIG
    if not path.exists():
        raise TrainError(f"{run} is not a training run: it has no {CONFIG}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TrainError(f"{path} is not valid JSON: {err}") from err
    for key in ("branch", "request", "dataset", "split"):
        if key not in config:
            raise TrainError(f"{path} lacks '{key}'; was it written by scalepool train?")
    return config


def write_run_config(
    path: Path,
    *,
    resumed,
    request,
    frames,
    checksum,
    split,
    data_path,
    epochs,
    max_minutes,
    device,
    checkpoint_every,
    state,
    launch: dict[str, Any] | None = None,
) -> None:
    """Write (fresh run) or update (resumed run: one more session) ``config.json``.

    ``request`` holds the settings a resume must repeat, ``split`` the
    ``{"train", "val", "test"}`` index arrays (stored as [start, stop) blocks), ``launch`` the
    session's ``{"world_size", "backend"}`` (data-parallel ranks; default one process).
    """
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    session = {
        "started": now,
        "resumed_at_epoch": state.epoch if resumed else None,
        "resumed_at_batch": state.batch if resumed else None,
        "epochs": epochs,
        "max_minutes": max_minutes,
        "device": str(device),
        "checkpoint_every": checkpoint_every,
        "world_size": (launch or {}).get("world_size", 1),
        "backend": (launch or {}).get("backend"),
        "versions": library_versions(),
        "git_commit": git_commit(),
    }
    old = {}
    if resumed and path.exists():
        old = json.loads(path.read_text())
    config = {
        "created": old.get("created", now),
        "branch": request["branch"],
        "seed": request["seed"],
        "request": request,
        "dataset": {
            "path": None if data_path is None else str(Path(data_path).resolve()),
            "checksum": checksum,
            "n_frames": frames.n_frames,
            "n_atoms": frames.n_atoms_total if frames.ragged else frames.n_atoms,
            "ragged": frames.ragged,
            "species": frames.species(),
            # species of the training block: evaluate refuses data with others
            "train_species": frames[split["train"]].species(),
            "has_energy": frames.energy is not None,
            "meta": frames.meta,
        },
        "split": {
            "fractions": request["split_fractions"],
            "gap": request["split_gap"],
            **{name: [int(idx[0]), int(idx[-1]) + 1] for name, idx in split.items()},
            "mode": request.get("split_mode", "time"),
            **({"indices": {name: idx.tolist() for name, idx in split.items()}}
               if request.get("split_mode", "time") != "time" else {}),  # fmt: skip
        },
        "sessions": old.get("sessions", []) + [session],
        "result": old.get("result"),
    }
    with writing(path, kept_note(path)):
        write_json(path, config, sort_keys=True)


def record_result(path: Path, result) -> None:
    """Store how the session ended (a :class:`TrainResult`) under ``"result"``."""
    config = json.loads(path.read_text())
    config["result"] = {
        "stop_reason": result.stop_reason,
        "epochs_completed": result.epochs_completed,
        "best_epoch": result.best_epoch,
        "best_val_force_mae_meV_A": None
        if math.isinf(result.best_val_force_mae)
        else result.best_val_force_mae,
        "elapsed_s": result.elapsed_s,
    }
    with writing(path, kept_note(path)):
        write_json(path, config, sort_keys=True)


def is_own_attempt(paths: dict, request: dict, checksum: str) -> bool:
    """Whether run files without a checkpoint are those of this very request killed before its
    first checkpoint: no epoch in ``history.csv`` and, when ``config.json`` was written, the
    same request and dataset and no result.  Such an attempt is started again; anything else
    is another run, which training refuses to overwrite.

    paths : ``{file name: path}`` of the run folder (``HISTORY``, ``CONFIG``, ``BEST``, ``LAST``)
    """
    try:
        history = paths[HISTORY]
        epochs_done = len(history.read_text().splitlines()) - 1 if history.exists() else 0
        if not paths[CONFIG].exists():  # killed between history.csv and config.json
            return epochs_done <= 0 and not paths[BEST].exists() and not paths[LAST].exists()
        config = json.loads(paths[CONFIG].read_text())
        return (
            config.get("request") == canonical_json(request)
            and config["dataset"]["checksum"] == checksum
            and config.get("result") is None
            and epochs_done <= 0
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False
