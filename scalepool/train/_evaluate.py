"""Force errors of any saved model file on one split of a dataset (``scalepool evaluate``).

The split fractions come from the record saved with the model (``MODEL.pt.json``
of a mixed model, or the run's ``config.json`` beside a ``best.pt``) unless
given; a model fitted on another dataset cannot borrow its recorded split.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..data import FrameSet
from ..metrics import force_errors
from ..models import load_model
from ._common import CONFIG
from ._predict import predict_forces
from ._run_config import read_run_config

SPLITS = ("train", "val", "test", "all")


def record_path(model_path: str | os.PathLike) -> Path:
    """``mixed.pt`` -> ``mixed.pt.json``: the fit record beside a model file."""
    return Path(str(model_path) + ".json")


def recorded_split(model_path: str | os.PathLike) -> tuple[tuple[float, ...], int, str | None, str] | None:
    """``(fractions, gap, dataset checksum, source)`` recorded with a model file, or None."""
    model_path = Path(model_path)
    record = record_path(model_path)
    if record.exists():
        data = json.loads(record.read_text())
        if "split_fractions" in data:
            return (
                tuple(data["split_fractions"]),
                int(data.get("split_gap", 0)),
                data.get("dataset_checksum"),
                str(record),
            )
    if (model_path.parent / CONFIG).exists():
        config = read_run_config(model_path.parent)
        split = config["split"]
        return (
            tuple(split["fractions"]),
            int(split["gap"]),
            config["dataset"]["checksum"],
            str(model_path.parent / CONFIG),
        )
    return None


def evaluate_model(
    model_path: str | os.PathLike,
    data: str | os.PathLike | FrameSet,
    split: str = "test",
    split_fractions=None,
    split_gap: int | None = None,
    device: str = "cpu",
    batch_size: int = 1,
) -> dict[str, Any]:
    """Overall and ion force MAE/RMSE (meV/Å, over force components) of a saved model on one
    split, with where the split came from.  Raises ``ValueError`` without a usable split."""
    model_path = Path(model_path)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not model_path.exists():
        raise FileNotFoundError(f"model file not found: {model_path}")
    frames = data if isinstance(data, FrameSet) else FrameSet.load(data)
    checksum = frames.checksum()
    recorded = recorded_split(model_path)
    if split_fractions is not None:
        fractions, gap, source = tuple(split_fractions), split_gap or 0, "given"
    elif split == "all":
        fractions, gap, source = None, None, "none needed (all frames)"
    elif recorded is None:
        raise ValueError(f"no split is recorded with {model_path}; pass --split-fractions TRAIN VAL TEST")
    else:
        fractions, gap, trained_on, source = recorded
        gap = gap if split_gap is None else split_gap
        if trained_on is not None and trained_on != checksum:
            raise ValueError(
                f"{model_path} was fitted on another dataset (checksum {trained_on[:12]}..., the data has "
                f"{checksum[:12]}...): its recorded split does not apply; pass --split-fractions"
            )
    index = np.arange(frames.n_frames) if split == "all" else frames.split_indices(fractions, gap)[split]
    try:
        model = load_model(model_path, map_location=device)
    except (RuntimeError, KeyError, EOFError, OSError) as err:  # torch.load / state-dict errors
        raise ValueError(f"cannot load model file {model_path}: {err}") from err
    dtype = next(model.parameters()).dtype
    pred = predict_forces(model, frames, index, batch_size=batch_size, device=device, dtype=dtype)
    table = force_errors(pred["forces"].astype(np.float64), frames.forces[index], frames.numbers)
    return {
        "model": str(model_path.resolve()),
        "model_class": model.config.get("class"),
        "dataset_checksum": checksum,
        "split": split,
        "split_fractions": None if fractions is None else list(fractions),
        "split_gap": gap,
        "split_source": source,
        "frames": [int(index[0]), int(index[-1]) + 1],
        "n_frames": int(len(index)),
        "n_atoms": int(frames.n_atoms),
        "units": "meV/Å; MAE and RMSE over force components",
        "overall_mae": float(table.loc["overall", "mae_meV_A"]),
        "overall_rmse": float(table.loc["overall", "rmse_meV_A"]),
        "ion_mae": float(table.loc["ions", "mae_meV_A"]),
        "ion_rmse": float(table.loc["ions", "rmse_meV_A"]),
        "species_mae": {
            name: float(table.loc[name, "mae_meV_A"])
            for name in table.index
            if name not in ("overall", "ions")
        },
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
    }
