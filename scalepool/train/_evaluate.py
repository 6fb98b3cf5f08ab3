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
from ase.data import chemical_symbols

from ..data import FrameSet, read_frames
from ..metrics import force_errors
from ..models import load_model
from ..units import EV_TO_MEV
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


def recorded_indices(model_path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """The frame indices of each block of a run trained with a random split, else None."""
    record = record_path(Path(model_path))  # a mixed model fitted on a random split records its frames
    if record.exists() and "split_frames" in (data := json.loads(record.read_text())):
        return {name: np.asarray(idx, dtype=np.int64) for name, idx in data["split_frames"].items()}
    config_path = Path(model_path).parent / CONFIG
    if not config_path.exists():
        return None
    indices = read_run_config(config_path.parent)["split"].get("indices")
    return None if indices is None else {name: np.asarray(idx, dtype=np.int64) for name, idx in indices.items()}


def recorded_species(model_path: str | os.PathLike) -> tuple[list[int], str] | None:
    """``(atomic numbers the model was trained on, source)`` from its run's ``config.json``
    (``train_species``, else the dataset's ``species``) or its record, or None when unknown."""
    model_path = Path(model_path)
    record = record_path(model_path)
    if record.exists():
        data = json.loads(record.read_text())
        for key in ("train_species", "species"):
            if key in data:
                return [int(z) for z in data[key]], str(record)
    if (model_path.parent / CONFIG).exists():
        dataset = read_run_config(model_path.parent)["dataset"]
        for key in ("train_species", "species"):
            if key in dataset:
                return [int(z) for z in dataset[key]], str(model_path.parent / CONFIG)
    return None


def check_species(frames: FrameSet, known: list[int], source: str, data_name: str) -> None:
    """ValueError naming the data, the first frame and the species a model never saw."""
    unknown = sorted(set(frames.species()) - set(known))
    if not unknown:
        return
    numbers, off = frames.numbers_flat, frames.offsets
    first = int(np.searchsorted(off, int(np.flatnonzero(np.isin(numbers, unknown))[0]), side="right") - 1)
    names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in unknown)
    raise ValueError(
        f"{data_name}: frame {first} holds species the model never saw in training: {names}; it was trained "
        f"on {[chemical_symbols[z] for z in sorted(known)]} ({source})"
    )


def evaluate_model(
    model_path: str | os.PathLike,
    data: str | os.PathLike | FrameSet,
    split: str = "test",
    split_fractions=None,
    split_gap: int | None = None,
    device: str = "cpu",
    batch_size: int = 1,
    *,
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
    topology: str | os.PathLike | None = None,
    precision: str = "float32",
) -> dict[str, Any]:
    """Force errors of a saved model on one split of a dataset, with where the split came from.

    ``data``: a FrameSet or any file :func:`scalepool.data.read_frames` reads (npz, extxyz,
    traj, db, OUTCAR, vasprun.xml, TRR/H5MD with ``topology`` or ``<stem>.pdb``; the keys
    name the labels of ASE formats).  Returns overall and per-species force MAE (meV/Å, over force
    components), ``ion_mae`` (Na+, Cl-; None without ions), ``energy_mae_per_atom``
    (meV/atom; None without energies), ``n_frames`` and ``n_atoms`` (atoms summed over
    the frames evaluated).  Raises ``ValueError`` without a usable split, or for species
    the model was not trained on (when its run or record lists them).
    ``precision``: forward precision (``float32``, ``bf16-mixed``, ``fp16-mixed`` on CUDA;
    :func:`scalepool.train.predict_forces`), reported as ``precision``.
    """
    model_path = Path(model_path)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not model_path.exists():
        raise FileNotFoundError(f"model file not found: {model_path}")
    if isinstance(data, FrameSet):
        frames, data_name = data, "the data"
    else:
        keys = {"energy_key": energy_key, "forces_key": forces_key, "stress_key": stress_key, "topology": topology}
        keys = {name: value for name, value in keys.items() if value is not None}
        if Path(data).suffix == ".npz" and not keys:
            frames = FrameSet.load(data)
        else:
            frames = read_frames(data, **keys)
        data_name = str(data)
    checksum = frames.checksum()
    known = recorded_species(model_path)
    if known is not None:
        check_species(frames, known[0], known[1], data_name)
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
                f"{checksum[:12]}...): its recorded split does not apply; pass --split-fractions, or --split all"
            )
    blocks = recorded_indices(model_path) if source != "given" and fractions is not None else None
    if split == "all":
        index = np.arange(frames.n_frames)
    elif blocks is not None:  # a random split: its frames as recorded
        index, source = blocks[split], source + " (random split, recorded frames)"
    else:
        index = frames.split_indices(fractions, gap)[split]
    try:
        model = load_model(model_path, map_location=device)
    except (RuntimeError, KeyError, EOFError, OSError) as err:  # torch.load / state-dict errors
        raise ValueError(f"cannot load model file {model_path}: {err}") from err
    dtype = next(model.parameters()).dtype
    pred = predict_forces(
        model, frames, index, batch_size=batch_size, device=device, dtype=dtype, precision=precision
    )
    if frames.ragged:
        atoms = frames.atom_index(index)
        table = force_errors(pred["forces"].astype(np.float64), frames.forces_flat[atoms], frames.numbers_flat[atoms])
    else:
        table = force_errors(pred["forces"].astype(np.float64), frames.forces[index], frames.numbers)
    counts = frames.atom_counts[index]
    energy_mae = None
    if frames.energy is not None:
        energy_mae = float(np.mean(np.abs(pred["energy"] - frames.energy[index]) / counts) * EV_TO_MEV)
    has_ions = int(table.loc["ions", "n_atoms"]) > 0
    return {
        "model": str(model_path.resolve()),
        "model_class": model.config.get("class"),
        "dataset_checksum": checksum,
        "split": split,
        "split_fractions": None if fractions is None else list(fractions),
        "split_gap": gap,
        "split_source": source,
        "frames": [int(index.min()), int(index.max()) + 1],
        "n_frames": int(len(index)),
        "n_atoms": int(counts.sum()),
        "atoms_per_frame": int(frames.n_atoms) if not frames.ragged else None,
        "units": "meV/Å; MAE and RMSE over force components; energy meV/atom",
        "overall_mae": float(table.loc["overall", "mae_meV_A"]),
        "overall_rmse": float(table.loc["overall", "rmse_meV_A"]),
        "ion_mae": float(table.loc["ions", "mae_meV_A"]) if has_ions else None,
        "ion_rmse": float(table.loc["ions", "rmse_meV_A"]) if has_ions else None,
        "species_mae": {
            name: float(table.loc[name, "mae_meV_A"])
            for name in table.index
            if name not in ("overall", "ions")
        },
        "energy_mae_per_atom": energy_mae,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "precision": precision,
    }
