"""Model predictions: batched force inference, validation scores and the prediction cache.

:func:`predict_cache` runs trained models over a dataset and saves a
:class:`scalepool.data.PredictionCache` (its docstring holds the one schema
table; a ragged dataset gives a ragged cache).  Rows are the dataset frames of
the three split blocks, train then val then test: time blocks in time order
(frames in the gaps between blocks, ``split_gap > 0``, are left out), or the
frames a random split recorded in the runs' ``config.json``;
``meta["frame_index"]`` gives the dataset frame of every row.
"""

from __future__ import annotations

import datetime
import os
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import FrameSet, PredictionCache
from ..data import keys as K
from ..models import AtomsBatch
from ..provenance import git_commit, library_versions
from ..units import EV_TO_MEV
from . import _model_io
from ._common import BEST, TrainError, resolve_device, resolve_dtype
from ._precision import autocast, check_precision
from ._run_config import read_run_config
from ._state import kept_note, writing


def boundary_groups(frames: FrameSet, indices) -> list[np.ndarray]:
    """``indices`` split into runs the models can batch: one list for the fixed layout,
    else the periodic frames and the open frames apart (each in the given order)."""
    idx = np.atleast_1d(np.asarray(indices))
    if not frames.ragged:
        return [idx]
    periodic = frames.pbc[idx].all(axis=1)
    return [part for part in (idx[periodic], idx[~periodic]) if len(part)]


def forward_frames(model, frames: FrameSet, indices, device, dtype):
    """``(out, labels, n_atoms)`` of one training batch, for the loss.

    Fixed layout: ``out = model(batch)``, ``labels`` the :class:`AtomsBatch`, ``n_atoms``
    the int atoms per frame.  Ragged: open and periodic frames run as separate model
    calls (:func:`boundary_groups`) whose ``forces`` (n_atoms, 3) eV/Å and ``energy``
    (n_frames,) eV are concatenated, with ``labels`` holding the matching reference
    ``forces``, ``energy`` and ``stress`` and ``n_atoms`` a (n_frames,) tensor of atom counts.
    """
    if not frames.ragged:
        batch = AtomsBatch.from_frameset(frames, indices, device, dtype)
        return model(batch), batch, frames.n_atoms
    outs, batches = [], []
    for part in boundary_groups(frames, indices):
        batches.append(AtomsBatch.from_frameset(frames, part, device, dtype))
        outs.append(model(batches[-1]))
    if len(outs) == 1:
        out, labels = outs[0], batches[0]
    else:
        out = {key: torch.cat([o[key] for o in outs]) for key in ("forces", "energy")}

        def joined(name):
            values = [getattr(b, name, None) for b in batches]
            return None if any(v is None for v in values) else torch.cat(values)

        labels = SimpleNamespace(forces=joined("forces"), energy=joined("energy"), stress=joined("stress"),
                                 n_frames=sum(b.n_frames for b in batches))  # fmt: skip
    order = np.concatenate(boundary_groups(frames, indices))
    n_atoms = torch.as_tensor(
        frames.atom_counts[order], device=out["energy"].device, dtype=out["energy"].dtype
    )
    return out, labels, n_atoms


def predict_forces(
    model: torch.nn.Module,
    frames: FrameSet,
    indices=None,
    *,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
    progress: bool = False,
    desc: str = "predict",
    check_finite: bool = True,
    precision: str = "float32",
) -> dict[str, np.ndarray]:
    """Forces and energies of the frames ``indices`` (all when ``None``), in eval mode.

    Returns ``{"forces": (n, N, 3) float32 eV/Å, "energy": (n,) float64 eV}``; for a
    ragged dataset ``forces`` is (n_atoms of those frames, 3), frames back to back in
    the order of ``indices`` (``frames.atom_index(indices)`` gives their rows), and
    ``offsets`` (n + 1,) bounds each frame's rows.
    The model is moved to ``device``/``dtype`` and its train/eval mode restored.
    ``check_finite``: raise :class:`TrainError` naming the frames (indices into
    ``frames``) of the first batch whose predicted forces hold NaN or inf.
    ``precision``: ``"float32"`` (no autocast), ``"bf16-mixed"`` or ``"fp16-mixed"`` (CUDA):
    each forward under ``torch.autocast``; energies and forces still come back float32.
    """
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    check_precision(precision, dev, dt)
    idx = np.arange(frames.n_frames) if indices is None else np.atleast_1d(np.asarray(indices))
    if batch_size < 1:
        raise TrainError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.to(device=dev, dtype=dt)
    model.eval()
    counts = frames.atom_counts[idx]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    forces = np.empty((int(offsets[-1]), 3), dtype=np.float32)
    energy = np.empty(len(idx), dtype=np.float64)
    try:
        for lo in tqdm(
            range(0, len(idx), batch_size), disable=not progress, desc=desc, unit="batch", dynamic_ncols=True
        ):
            rows = np.arange(lo, min(lo + batch_size, len(idx)))  # positions in idx
            periodic = frames.pbc[idx[rows]].all(axis=1)
            for part in [rows] if not frames.ragged else [rows[periodic], rows[~periodic]]:
                if len(part) == 0:
                    continue
                batch = AtomsBatch.from_frameset(frames, idx[part], dev, dt)
                with torch.enable_grad(), autocast(precision, dev):  # forces are energy gradients
                    out = model(batch)
                predicted = out["forces"].detach().cpu().numpy()
                bounds = np.concatenate([[0], np.cumsum(counts[part])])
                for k, row in enumerate(part):
                    forces[offsets[row] : offsets[row + 1]] = predicted[bounds[k] : bounds[k + 1]]
                energy[part] = out["energy"].detach().cpu().double().numpy()
            if check_finite:
                finite = np.array([np.isfinite(forces[offsets[r] : offsets[r + 1]]).all() for r in rows])
                if not finite.all():
                    bad = [int(i) for i in idx[rows][~finite]]
                    raise TrainError(
                        f"the model predicts non-finite forces (NaN or inf) for frame(s) {bad} "
                        "(overlapping atoms in the frame, or a model with non-finite weights?)"
                    )
    finally:
        model.train(was_training)
    if frames.ragged:
        return {"forces": forces, "energy": energy, "offsets": offsets}
    return {"forces": forces.reshape(len(idx), frames.n_atoms, 3), "energy": energy}


def evaluate_forces(model, frames: FrameSet, indices, **kwargs) -> dict[str, float]:
    """Force MAE (meV/Å, over components) and energy MAE (meV/atom, NaN without energies).

    ``kwargs`` go to :func:`predict_forces`.
    """
    idx = np.atleast_1d(np.asarray(indices))
    pred = predict_forces(model, frames, idx, **kwargs)
    ref = frames.forces_flat[frames.atom_index(idx)] if frames.ragged else frames.forces[idx]
    force_mae = float(np.abs(pred["forces"].astype(np.float64) - ref).mean() * EV_TO_MEV)
    energy_mae = float("nan")
    if frames.energy is not None and frames.ragged:
        error = np.abs(pred["energy"] - frames.energy[idx]) / frames.atom_counts[idx]
        energy_mae = float(error.mean() * EV_TO_MEV)
    elif frames.energy is not None:
        energy_mae = float(np.abs(pred["energy"] - frames.energy[idx]).mean() / frames.n_atoms * EV_TO_MEV)
    return {"force_mae_meV_A": force_mae, "energy_mae_meV_atom": energy_mae}


def _split_of(configs: list[tuple[Path, dict[str, Any]]], split_fractions, split_gap):
    """The one split every run was trained with, checked against an explicit request."""
    seen = {}
    for run, config in configs:
        seen.setdefault((tuple(config["split"]["fractions"]), int(config["split"]["gap"])), []).append(
            str(run)
        )
    if len(seen) > 1:
        listing = "; ".join(f"fractions {f} gap {g}: {runs}" for (f, g), runs in seen.items())
        raise TrainError(
            f"the runs were trained with different splits ({listing}); their predictions cannot share one cache"
        )
    fractions, gap = next(iter(seen))
    if split_fractions is not None and tuple(float(f) for f in split_fractions) != tuple(fractions):
        raise TrainError(
            f"split_fractions {tuple(split_fractions)} differ from the runs' training split {fractions}"
        )
    if split_gap is not None and int(split_gap) != gap:
        raise TrainError(f"split_gap {split_gap} differs from the runs' training split gap {gap}")
    return fractions, gap


def predict_cache(
    runs: list[str | os.PathLike],
    frames: FrameSet,
    out_path: str | os.PathLike,
    split_fractions: tuple[float, float, float] | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
    *,
    split_gap: int | None = None,
    model_file: str = BEST,
    dtype: str | torch.dtype | None = None,
    data_path: str | os.PathLike | None = None,
    check_dataset: bool = True,
    progress: bool = True,
    new_data: bool = False,
    precision: str = "float32",
) -> Path:
    """Predict every frame with each run's model and write the prediction cache.

    Parameters
    ----------
    runs : run directories of :func:`train`; each gives ``forces_<branch>``
        (branch from its ``config.json``), in this order (anchors "0", "1";
        one run is both anchors)
    frames : the dataset the runs were trained on
    out_path : ``.npz`` file, written atomically
    split_fractions, split_gap : ``None`` takes the runs' training split (they
        must agree); an explicit value must equal it
    device, batch_size, dtype : inference settings (dtype default: the run's
        training dtype)
    model_file : model inside each run directory (``best.pt`` or ``last.pt``)
    data_path : dataset file, recorded in ``meta``
    check_dataset : refuse ``frames`` whose checksum differs from the runs'
        training dataset (the split would not mean the same frames)
    new_data : ``frames`` is a new dataset (none of it was trained on): no
        checksum check, no training split; every frame is a test row
        (``meta["new_dataset"]`` is True, ``split_fractions`` None)
    precision : forward precision of the predictions (:func:`predict_forces`); recorded in
        ``meta["precision"]`` when not float32

    Returns the path written.  The schema is in the module docstring.
    """
    if not runs:
        raise TrainError("predict_cache needs at least one run directory")
    dev = resolve_device(device)
    check_precision(precision, dev)
    configs = [(Path(run), read_run_config(run)) for run in runs]
    resolved = [run.resolve() for run, _ in configs]
    repeated = sorted({str(r) for r in resolved if resolved.count(r) > 1})
    if repeated:
        raise TrainError(f"run(s) {repeated} given more than once; a null pair needs two runs (two seeds)")
    branches = cache_branch_names([config["branch"] for _, config in configs])
    if "ref" in branches:
        raise TrainError("a run's branch is named 'ref', which collides with forces_ref")
    checksum = frames.checksum()
    for run, config in configs:
        if check_dataset and not new_data and config["dataset"]["checksum"] != checksum:
            raise TrainError(
                f"run {run} was trained on dataset {config['dataset'].get('path')} with checksum "
                f"{config['dataset']['checksum'][:16]}..., but these frames have {checksum[:16]}...; "
                "pass the training dataset (or check_dataset=False)"
            )
        if not (run / model_file).exists():
            raise FileNotFoundError(f"run {run} has no {model_file}; has it finished an epoch?")
    if new_data:  # no training split applies: every frame is a test row
        fractions, gap, modes = None, 0, {"time"}
        if split_fractions is not None or split_gap is not None:
            raise TrainError(
                "new_data: every frame is a test row; split_fractions and split_gap do not apply"
            )
    else:
        fractions, gap = _split_of(configs, split_fractions, split_gap)
        modes = {config["split"].get("mode", "time") for _, config in configs}
    if len(modes) != 1:
        raise TrainError(f"the runs were trained with different split modes {sorted(modes)}")
    (mode,) = modes

    if new_data:
        n = frames.n_frames
        blocks = {"train": np.arange(0), "val": np.arange(0), "test": np.arange(n)}
    elif mode == "time":
        blocks = frames.split_indices(fractions, gap)
    else:  # a random split: the frames each run recorded (they must agree)
        blocks = _recorded_blocks(configs, frames.n_frames)
    keep, split = cache_rows(blocks)  # time order; gap frames left out
    forces = {}
    for name, (run, config) in zip(branches, configs, strict=True):
        model = _load_run_model(run / model_file, dev, name)
        run_dtype = dtype if dtype is not None else config["request"].get("dtype", "float32")
        try:
            pred = predict_forces(
                model,
                frames,
                keep,
                batch_size=batch_size,
                device=dev,
                dtype=run_dtype,
                progress=progress,
                desc=f"predict {config['branch']}",
                precision=precision,
            )
        except TrainError as err:
            raise TrainError(
                f"run {run} (branch '{name}', {model_file}): {err}; no cache was written to {out_path}"
            ) from err
        forces[name] = pred["forces"]
    meta = {
        "runs": [str(run.resolve()) for run, _ in configs],
        # cache name -> the branch its run trained (``short_2`` -> ``short``)
        "run_branches": {name: config["branch"] for name, (_, config) in zip(branches, configs, strict=True)},
        "model_file": model_file,
        "frame_index": keep.tolist(),
        "split_mode": mode,
        "dataset_checksum": checksum,
        "dataset_path": None if data_path is None else str(Path(data_path).resolve()),
        "split_fractions": None if fractions is None else list(fractions),
        "new_dataset": bool(new_data),
        "split_gap": gap,
        "split_codes": K.SPLIT_CODES,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": library_versions(),
        "git_commit": git_commit(),
    }
    if precision != "float32":
        meta["precision"] = precision
    if mode == "time":  # dataset frames [start, stop) of each block: routers refuse a "train" row outside it
        meta["split_blocks"] = {
            name: [int(idx[0]), int(idx[-1]) + 1] for name, idx in blocks.items() if len(idx)
        }
    else:  # the recorded frames of each block: routers refuse a "train" row outside them
        meta["split_frames"] = {name: idx.tolist() for name, idx in blocks.items()}
    # s = 0 and s = 1; a single run is both ends of a degenerate scale
    anchors = (branches[0], branches[min(1, len(branches) - 1)])
    cache = cache_from_forces(frames, keep, split, forces, anchors, meta)
    with writing(Path(out_path), kept_note(Path(out_path))):
        return cache.save(out_path)


def cache_rows(blocks: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The rows of a prediction cache: dataset frame indices (train, then val, then test) and
    their split codes (``keys.SPLIT_CODES``), both (F,) int64."""
    names = ("train", "val", "test")
    keep = np.concatenate([blocks[name] for name in names]).astype(np.int64)
    split = np.concatenate([np.full(len(blocks[name]), K.SPLIT_CODES[name]) for name in names])
    return keep, split.astype(np.int64)


def cache_from_forces(
    frames: FrameSet, keep: np.ndarray, split: np.ndarray, forces: dict[str, np.ndarray], anchors, meta: dict
) -> PredictionCache:
    """A :class:`PredictionCache` of ``frames[keep]`` with predicted ``forces`` (name -> eV/Å, as
    :func:`predict_forces` returns them: (F, N, 3) fixed, flat (T, 3) ragged); ``split`` (F,)."""
    if frames.ragged:  # flat (T, 3) rows of the kept frames, in the order of keep (as predict_forces)
        atoms = frames.atom_index(keep)
        return PredictionCache(
            forces_ref=frames.forces_flat[atoms], branches=forces, numbers=frames.numbers_flat[atoms],
            positions=frames.positions_flat[atoms], cell=frames.cells[keep], split=split,
            anchors=anchors, meta=meta, atom_counts=frames.atom_counts[keep], pbc=frames.pbc[keep],
        )  # fmt: skip
    return PredictionCache(
        forces_ref=frames.forces[keep],
        branches=forces,
        numbers=frames.numbers,
        positions=frames.positions[keep],
        cell=None if frames.cell is None else frames.cell[keep],
        split=split,
        anchors=anchors,
        meta=meta,
    )


def _recorded_blocks(configs: list[tuple[Path, dict[str, Any]]], n_frames: int) -> dict[str, np.ndarray]:
    """The train/val/test frames recorded by runs trained with a random split (all must agree)."""
    blocks = None
    for run, config in configs:
        indices = config["split"].get("indices")
        if indices is None:
            raise TrainError(
                f"run {run} was trained with a random split but its config.json records no frames"
            )
        mine = {name: np.asarray(indices[name], dtype=np.int64) for name in ("train", "val", "test")}
        if blocks is None:
            blocks, first = mine, run
        elif any(not np.array_equal(blocks[name], mine[name]) for name in blocks):
            raise TrainError(
                f"runs {first} and {run} were trained on different random splits (seeds?); their predictions "
                "cannot share one cache"
            )
    top = max(int(idx.max()) for idx in blocks.values() if len(idx))
    if top >= n_frames:
        raise TrainError(f"the recorded split names frame {top}, but the dataset has {n_frames} frames")
    return blocks


def _load_run_model(path: Path, device: torch.device, branch: str) -> torch.nn.Module:
    """A run's model file, with one clear error for a missing, corrupt or foreign file."""
    try:
        return _model_io.load_model(path, map_location=device)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - torch.load, a crafted config, a state dict that does not fit
        if isinstance(err, pickle.UnpicklingError):  # weights_only refused it: not plain tensors and values
            problem = f"not a model file torch.load(weights_only=True) can read ({_load_problem(err)})"
        else:
            problem = f"{type(err).__name__}: {_load_problem(err)}"
        raise TrainError(f"cannot load model file {path} (branch '{branch}'): {problem}") from err


#: Lines of torch's weights-only refusal that say nothing about the file itself
_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _load_problem(err: Exception) -> str:
    """The informative part of a load error, on one line (torch's advice to load untrusted files
    with ``weights_only=False`` is left out: a model file holds tensors and plain values only)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(_TORCH_BOILERPLATE)]
    text = " ".join(lines).replace("WeightsUnpickler error: ", "") or "unreadable"
    return text if len(text) <= 400 else text[:397] + "..."


def cache_branch_names(branches: list[str]) -> list[str]:
    """Cache names of runs of these branches, in order: a branch's first run keeps its
    name, later runs of the same branch get ``_2``, ``_3``... (a null pair is
    ``short`` and ``short_2``: two seeds of one scale routed as if they were two)."""
    names, seen = [], {}
    for branch in branches:
        seen[branch] = seen.get(branch, 0) + 1
        names.append(branch if seen[branch] == 1 else f"{branch}_{seen[branch]}")
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise TrainError(f"run names {clash} clash after numbering repeated branches {branches}")
    return names
