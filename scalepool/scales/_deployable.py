"""Building, fitting and saving a deployable :class:`~scalepool.models.MixedForceModel`
from a prediction cache, and the record that says what it was fitted on.

:func:`mix_from_cache` takes two branches of a cache (its anchors by default,
or a null pair such as ``("short", "short_2")``), loads their runs' models,
warm-starts the router on the cache's train split (:func:`fit_router`) and
refines it end to end through the model's own conservative forces on the train
frames of the dataset (:func:`fit_mixed_model`).  :func:`save_mixed` writes the
model with :func:`~scalepool.models.save_model` and ``MODEL.pt.json`` beside it,
from which :func:`scalepool.train.evaluate_model` reads the split.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._files import write_json
from ..data import FrameSet, PredictionCache, read_frames
from ..models import MixedForceModel, load_model, save_model
from ..provenance import git_commit, library_versions
from ..train import BEST, read_run_config, record_path
from ._mixed_fit import fit_mixed_model, fit_router


def pair_runs(cache: PredictionCache, pair: tuple[str, str], runs=None, pred="the cache") -> list[Path]:
    """The run directories of the cache branches ``pair`` (s=0, s=1), checked against what the
    cache records; ``runs`` given by the user must be those."""
    names, recorded = list(cache.branches), cache.meta.get("runs")
    missing = [name for name in pair if name not in names]
    if missing:
        raise ValueError(f"{pred} has no branch {missing}; it holds {names}")
    expected = None
    if recorded and len(recorded) == len(names):
        expected = [Path(recorded[names.index(name)]) for name in pair]
    if runs is None:
        if expected is None:
            raise ValueError(f"{pred} records no run directories; pass --run RUN0 --run RUN1")
        return expected
    runs = [Path(r) for r in runs]
    if len(runs) != 2:
        raise ValueError(f"--run must be given twice (anchor 0 then anchor 1), got {len(runs)}")
    if expected is not None:
        for k, (run, want) in enumerate(zip(runs, expected, strict=True)):
            if run.resolve() != want.resolve():
                raise ValueError(
                    f"--run {run} is not anchor {k} of {pred}: the pair is {pair[0]!r} (s=0, run "
                    f"{expected[0]}) and {pair[1]!r} (s=1, run {expected[1]}); pass those runs in that order"
                )
    return runs


def _random_split_frames(cache: PredictionCache, runs, configs, pred) -> dict[str, list[int]] | None:
    """The frames of each block when the runs were trained with a random split (the cache and
    every run must record the same), else ``None`` (time blocks)."""
    recorded = [config["split"].get("indices") for config in configs]
    if all(r is None for r in recorded) and cache.meta.get("split_frames") is None:
        return None
    sources = [(str(pred), cache.meta.get("split_frames"))] + [
        (str(run), r) for run, r in zip(runs, recorded, strict=True)
    ]
    lists = [(where, None if r is None else {k: list(map(int, r[k])) for k in ("train", "val", "test")})
             for where, r in sources]  # fmt: skip
    for where, r in lists:
        if r is None:
            raise ValueError(
                f"{where} records no random-split frames but {[w for w, x in lists if x is not None][0]} does; "
                "the mixed model needs the runs' and the cache's split to agree"
            )
        if r != lists[0][1]:
            raise ValueError(
                f"{where} and {lists[0][0]} record different random-split frames; the mixed model needs "
                "the runs' and the cache's split to agree"
            )
    return lists[0][1]


def _load(path: Path, device: str):
    try:
        return load_model(path, map_location=device)
    except (RuntimeError, KeyError, EOFError, OSError) as err:  # torch.load / state-dict errors
        raise ValueError(f"cannot load model file {path}: {err}") from err


def mix_from_cache(
    pred: str | os.PathLike,
    *,
    pair: tuple[str, str] | None = None,
    runs=None,
    data: str | os.PathLike | None = None,
    hidden: int = 16,
    layers: int = 2,
    router_steps: int = 300,
    steps: int | None = 200,
    epochs: int | None = None,
    frames_per_step: int = 1,
    lr: float = 1e-3,
    delta_lr: float = 1e-2,
    train_delta: bool = True,
    monitor_frames: int | None = 16,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[MixedForceModel, dict[str, Any]]:
    """A mixed model of the cache branches ``pair`` (default: the anchors), fitted on train only.

    Returns ``(model, record)``; the record (JSON-serialisable) holds the runs,
    dataset checksum, split and the fit's metrics (:class:`MixedFitResult`).
    """
    pred = Path(pred)
    cache = PredictionCache.load(pred)
    pair = tuple(pair or cache.anchors)
    runs = pair_runs(cache, pair, runs, pred)
    configs = [read_run_config(run) for run in runs]
    for k, (run, config) in enumerate(zip(runs, configs, strict=True)):
        branch = cache.meta.get("run_branches", {}).get(pair[k])
        if branch is not None and config["branch"] != branch:
            raise ValueError(f"run {run} trained branch {config['branch']!r}, but {pair[k]!r} is {branch!r}")
        if not (run / BEST).exists():
            raise FileNotFoundError(f"run {run} has no {BEST}")
    data = data or cache.meta.get("dataset_path")
    if data is None:
        raise ValueError(f"{pred} records no dataset path; pass --data")
    # the cache's dataset: a .npz, or any format scalepool reads (default label keys)
    frames = FrameSet.load(data) if Path(data).suffix == ".npz" else read_frames(data)
    checksum = frames.checksum()
    for source, recorded in [(pred, cache.meta.get("dataset_checksum"))] + [
        (run, config["dataset"]["checksum"]) for run, config in zip(runs, configs, strict=True)
    ]:
        if recorded is not None and recorded != checksum:
            raise ValueError(
                f"{data} (checksum {checksum[:12]}...) is not the dataset of {source} ({recorded[:12]}...)"
            )
    splits = {(tuple(c["split"]["fractions"]), int(c["split"]["gap"])) for c in configs}
    if "split_fractions" in cache.meta:
        splits.add((tuple(cache.meta["split_fractions"]), int(cache.meta.get("split_gap", 0))))
    if len(splits) != 1:
        raise ValueError(f"the runs and the cache disagree on the split: {sorted(splits)}")
    fractions, gap = splits.pop()
    split_frames = _random_split_frames(cache, runs, configs, pred)
    if split_frames is None:
        train_index = frames.split_indices(fractions, gap)["train"]
    else:
        train_index = np.asarray(split_frames["train"], dtype=np.int64)
    cached_train = np.asarray(cache.meta.get("frame_index", np.arange(cache.n_frames)))[cache.frames("train")]
    if not np.array_equal(cached_train, train_index):
        raise ValueError(
            f"the cache's train frames differ from the train block of split {fractions} gap {gap}"
            + ("" if split_frames is None else " (random split recorded by the runs)")
        )

    model = MixedForceModel(*(_load(run / BEST, device) for run in runs), hidden=hidden, layers=layers).to(
        device
    )
    warm = None
    if router_steps > 0:
        # the warm start routes between the pair's cached forces, whatever the cache's anchors
        view = dataclasses.replace(cache.select("train"), anchors=pair)  # either layout
        warm = fit_router(model, view, steps=router_steps, seed=seed)
    result = fit_mixed_model(
        model, frames, train_index, split_fractions=fractions, split_gap=gap, split_frames=split_frames,
        steps=steps, epochs=epochs,
        frames_per_step=frames_per_step, lr=lr, delta_lr=delta_lr, train_delta=train_delta,
        monitor_frames=monitor_frames, seed=seed, progress=progress,
    )  # fmt: skip
    record = {
        "kind": "scalepool mixed model",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "pair": list(pair),
        "runs": [str(run.resolve()) for run in runs],
        "prediction_cache": str(pred.resolve()),
        "dataset_path": str(Path(data).resolve()),
        "dataset_checksum": checksum,
        "split_fractions": list(fractions),
        "split_gap": gap,
        **({} if split_frames is None else {"split_mode": "random", "split_frames": split_frames}),
        "settings": {
            "hidden": hidden,
            "layers": layers,
            "router_steps": router_steps,
            "steps": steps,
            "epochs": epochs,
            "frames_per_step": frames_per_step,
            "lr": lr,
            "delta_lr": delta_lr,
            "train_delta": train_delta,
            "seed": seed,
        },  # fmt: skip
        "router_warm_start": warm,
        "fit": result.as_dict(),
        "versions": library_versions(),
        "git_commit": git_commit(),
    }
    return model, record


def save_mixed(model: MixedForceModel, record: dict[str, Any], out: str | os.PathLike) -> Path:
    """Write the model (atomically) and its record ``OUT.json``; returns the model path."""
    path = save_model(model, out)
    write_json(record_path(path), {**record, "model": str(Path(path).resolve())})
    return Path(path)
