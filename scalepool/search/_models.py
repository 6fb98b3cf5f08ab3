"""Expensive optuna searches over model scales, pruned on the validation loss of each epoch.

Each trial builds a branch with its suggested constructor arguments (short or
long cutoff, number of coarse nodes, ...) and trains it with
:func:`scalepool.train.train` one epoch at a time: a training run resumes
exactly from its checkpoint, so ``train(..., epochs=e)`` after epoch ``e - 1``
runs one more epoch, whose validation force MAE is reported to the pruner
(``trial.report``) before the next.  Run folders are named by the trial's
parameters, so a trial that a killed worker left behind and that is queued
again resumes its training instead of starting over.

Search spaces are ``name=kind:low:high[:log]`` strings (``cutoff=float:3:6``,
``n_interactions=int:1:3``) or ``name=cat:a,b,c``; :data:`DEFAULT_SPACES` gives
one per branch.  For MuSE, ``coarse_nodes`` (``ions``, ``oxygen``, ``heavy``)
chooses the species that seed the coarse nodes, and so their number (in the
1,467-atom testbed: 18 for the ions, about 500 for all heavy atoms).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

import optuna

DEFAULT_SPACES = {
    "short": ("cutoff=float:3.0:6.0",),
    "long": ("cutoff=float:6.0:12.0",),
    "muse": ("coarse_cutoff=float:6.0:14.0", "coarse_nodes=cat:ions,heavy"),
}
#: Trial user attribute: the host whose disk holds the trial's run folder.
HOST_ATTR = "host"
#: ``coarse_nodes`` choices: the species that seed MuSE's coarse nodes (so their number:
#: one per ion, or one per heavy atom), passed on as ``anchor_species``.
COARSE_NODES = {"ions": [11, 17], "oxygen": [8], "heavy": [8, 11, 17]}


def parse_space(specs) -> dict[str, tuple]:
    """``{"cutoff": ("float", 3.0, 6.0, False), "kind": ("cat", ["a", "b"])}`` from spec strings."""
    space = {}
    for spec in specs:
        name, sep, rest = str(spec).partition("=")
        parts = rest.split(":")
        if not sep or not name or parts[0] not in ("float", "int", "cat"):
            raise ValueError(
                f"bad search space {spec!r}: expected name=float|int:low:high[:log] or name=cat:a,b"
            )
        if parts[0] == "cat":
            space[name] = ("cat", [_value(v) for v in ":".join(parts[1:]).split(",")])
            continue
        if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "log"):
            raise ValueError(f"bad search space {spec!r}: expected name={parts[0]}:low:high[:log]")
        cast = float if parts[0] == "float" else int
        low, high = cast(parts[1]), cast(parts[2])
        if not low < high:
            raise ValueError(f"bad search space {spec!r}: low must be below high")
        space[name] = (parts[0], low, high, len(parts) == 4)
    return space


def _value(text: str):
    """A JSON number, boolean or null, else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def suggest(trial: optuna.Trial, space: dict[str, tuple]) -> dict:
    params = {}
    for name, (kind, *args) in space.items():
        if kind == "cat":
            params[name] = trial.suggest_categorical(name, args[0])
        elif kind == "int":
            params[name] = trial.suggest_int(name, args[0], args[1], log=args[2])
        else:
            params[name] = trial.suggest_float(name, args[0], args[1], log=args[2])
    return params


def build_any_branch(branch: str, **params):
    """:func:`scalepool.models.build_branch`, with ``coarse_nodes`` translated to
    ``anchor_species`` (:data:`COARSE_NODES`)."""
    from .. import models

    if "coarse_nodes" in params:
        params["anchor_species"] = COARSE_NODES[params.pop("coarse_nodes")]
    return models.build_branch(branch, **params)


class ModelSearch:
    """The objective of a model-scale search.

    Parameters
    ----------
    frames : the dataset (a :class:`~scalepool.data.FrameSet`)
    branch : branch name passed to ``build``
    out : folder of the trial runs (``trials/<params hash>``) and the best run
    space : parsed search space (:func:`parse_space`)
    epochs : epochs per trial (the pruner sees one value per epoch)
    build : ``build(branch, **params) -> ForceModel``; default
        :func:`scalepool.models.build_branch`
    fixed : constructor arguments every trial shares
    train_options : further keyword arguments of :func:`scalepool.train.train`
        (``split_fractions``, ``lr``, ``batch_size``, ``patience``, ``device``...)
    max_minutes : time budget of one trial's training
    """

    def __init__(
        self,
        frames,
        branch: str,
        out,
        space: dict[str, tuple],
        epochs: int = 10,
        build: Callable | None = None,
        fixed: dict | None = None,
        train_options: dict | None = None,
        max_minutes: float | None = None,
        seed: int = 0,
        data_path=None,
    ):
        self.frames, self.branch, self.out, self.space = frames, branch, Path(out), space
        self.epochs, self.build, self.fixed = int(epochs), build or build_any_branch, dict(fixed or {})
        self.train_options = {"patience": None, "scheduler": "plateau", **(train_options or {})}
        if self.train_options["scheduler"] != "plateau":
            raise ValueError(
                "epoch-by-epoch pruning needs the 'plateau' scheduler (a cosine run fixes its length)"
            )
        self.max_minutes, self.seed, self.data_path = max_minutes, int(seed), data_path

    def run_dir(self, params: dict) -> Path:
        key = json.dumps({"branch": self.branch, **self.fixed, **params, "seed": self.seed}, sort_keys=True)
        return self.out / "trials" / hashlib.sha256(key.encode()).hexdigest()[:12]

    def make_model(self, params: dict):
        import torch

        torch.manual_seed(self.seed)
        return self.build(self.branch, **self.fixed, **params)

    def __call__(self, trial: optuna.Trial) -> float:
        from ..train import NonFiniteError, train

        params = suggest(trial, self.space)
        run_dir = self.run_dir(params)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr(HOST_ATTR, socket.gethostname())
        model = self.make_model(params)
        start, reported = time.perf_counter(), 0
        result = None
        for epoch in range(1, self.epochs + 1):
            budget = None
            if self.max_minutes is not None:
                budget = self.max_minutes - (time.perf_counter() - start) / 60.0
                if budget <= 0:
                    break
            try:
                result = train(
                    model, self.frames, run_dir, epochs=epoch, max_minutes=budget, seed=self.seed,
                    branch=self.branch, data_path=self.data_path, progress=False, **self.train_options,
                )  # fmt: skip
            except (
                NonFiniteError
            ) as err:  # a diverging trial is a bad point of the space, not a failed search
                raise optuna.TrialPruned(f"diverged: {err}") from err
            for row in result.history.itertuples(index=False):
                if row.epoch > reported:
                    trial.report(float(row.val_force_mae_meV_A), int(row.epoch))
                    reported = int(row.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {reported}")
            if result.stop_reason in ("early_stopping", "time_budget") or reported >= self.epochs:
                break
        if result is None or result.best_epoch is None:
            raise optuna.TrialPruned("no epoch finished within the trial's time budget")
        trial.set_user_attr("best_epoch", int(result.best_epoch))
        return float(result.best_val_force_mae)

    def save_best(self, study: optuna.Study) -> dict:
        """Copy the best trial's run to ``out/best`` and score its model on the test split."""
        from ..models import load_model
        from ..train import evaluate_forces

        best = study.best_trial
        source = Path(best.user_attrs["run_dir"])
        if not (source / "best.pt").is_file():
            host = best.user_attrs.get(HOST_ATTR, "an unknown host")
            here = socket.gethostname()
            where = "this host" if host == here else f"host {host} (this is {here})"
            raise FileNotFoundError(
                f"the best trial ({best.number} of study '{study.study_name}') ran on {where}, but its run "
                f"folder {source} is not here (no best.pt); a shared filesystem is required: give every "
                "worker of a model search the same --out on storage all hosts mount"
            )
        target = self.out / "best"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoint.pt", "*.part"))
        split = self.frames.split_indices(
            self.train_options.get("split_fractions", (0.8, 0.1, 0.1)), self.train_options.get("split_gap", 0)
        )
        model = load_model(target / "best.pt")
        scores = evaluate_forces(
            model, self.frames, split["test"], device=self.train_options.get("device", "cpu")
        )
        return {
            "branch": self.branch,
            "params": {**self.fixed, **best.params},
            "best_trial": best.number,
            "val_force_mae_meV_A": best.value,
            "test_force_mae_meV_A": scores["force_mae_meV_A"],
            "run_dir": str(target),
        }


def search_models(
    data,
    branch: str,
    storage,
    out,
    study_name: str | None = None,
    space=None,
    n_trials: int | None = 20,
    timeout: float | None = None,
    epochs: int = 10,
    seed: int = 0,
    worker: int | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    build: Callable | None = None,
    fixed: dict | None = None,
    train_options: dict | None = None,
    max_minutes: float | None = None,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
) -> dict:
    """Run (or resume) a model-scale search; writes ``best.json``, ``trials.csv``,
    ``importances.csv`` and the best run under ``out``.

    ``data`` is a dataset path or a FrameSet; ``space`` a list of spec strings
    (default :data:`DEFAULT_SPACES[branch]`); the pruner defaults to a median
    pruner that waits for 2 finished trials and 1 epoch.  A study created on
    another dataset is refused (:class:`StudyDataMismatch`).  ``heartbeat_interval``
    and ``grace_period`` (s) set RDB heartbeats (:func:`open_storage`).  Workers on
    several hosts need a shared ``out``: the worker that ends the search copies the
    best trial's run, wherever it ran (a clear error names that host otherwise).
    """
    from .._files import write_json
    from ..data import FrameSet
    from ._optimize import optimize
    from ._run import _has_heartbeat, export_study, make_sampler, quiet_optuna
    from ._storage import bind_study_data, finished, open_results, open_storage

    quiet_optuna()
    data_path = None
    if isinstance(data, (str, os.PathLike)):
        data_path, data = Path(data), FrameSet.load(data)
    specs = space if space is not None else DEFAULT_SPACES.get(branch)
    if not specs:
        raise ValueError(f"no default search space for branch {branch!r}; pass --space name=float:low:high")
    search = ModelSearch(data, branch, out, parse_space(specs), epochs, build, fixed, train_options,
                         max_minutes, seed, data_path)  # fmt: skip
    pruner = pruner or optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    opened = open_storage(storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    study = open_results(opened, study_name or f"models-{branch}", pruner=pruner)
    bind_study_data(study, data.checksum(), f"dataset {data_path}" if data_path else "a dataset")
    study.sampler = make_sampler(seed, study, worker)
    start = time.perf_counter()
    ran = optimize(study, search, n_trials, timeout, storage=storage,
                   heartbeat=_has_heartbeat(storage, heartbeat_interval))  # fmt: skip
    record = search.save_best(study)
    record.update(n_finished=finished(study), n_this_call=ran, seconds_this_call=time.perf_counter() - start,
                  study_name=study.study_name, space=list(specs), epochs=epochs, seed=seed)  # fmt: skip
    export_study(study, out)
    write_json(Path(out) / "best.json", record)
    return record
