"""Optuna searches: storage kinds, resumable studies, SIGKILL recovery, parallel workers, pruning."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from scalepool.cli import _studies
from scalepool.data import PredictionCache
from scalepool.scales import synthetic_cache
from scalepool.search import (
    ModelSearch,
    ScaleSearch,
    open_results,
    open_storage,
    parse_space,
    recover_dead_trials,
    search_models,
    search_scales,
    storage_kind,
)
from scalepool.search._storage import WORKER_ATTR

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    cache = synthetic_cache(n_frames=10, n_atoms=60, n_ions=4, seed=0, true_scales=(0.0, 0.25, 0.5, 1.0))
    return cache.save(tmp_path_factory.mktemp("cache") / "pred.npz")


def _oracle_mae(cache: PredictionCache, split: str, pool=None) -> float:
    """Per-atom oracle MAE (meV/Å) of ``split`` by exhaustive search, independent of the package:
    over ``pool``, or for ``None`` over [0, 1] (the convex piecewise-linear loss of an atom is
    smallest at 0, 1 or a clipped breakpoint a_k / d_k)."""
    index = cache.frames(split)
    f0, f1 = (cache.branches[name][index].astype(np.float64) for name in cache.anchors)
    a = (cache.forces_ref[index].astype(np.float64) - f0).reshape(-1, 3)
    d = (f1 - f0).reshape(-1, 3)
    if pool is None:
        breaks = np.clip(np.divide(a, d, out=np.zeros_like(a), where=d != 0), 0, 1)
        scales = np.concatenate([breaks, np.broadcast_to([0.0, 1.0], (len(a), 2))], axis=1)
    else:
        scales = np.broadcast_to(np.asarray(pool, float), (len(a), len(pool)))
    loss = np.abs(scales[:, :, None] * d[:, None, :] - a[:, None, :]).sum(-1)
    return 1e3 * loss.min(axis=1).sum() / a.size


def _worker(args: list[str]) -> list[str]:
    code = "import sys; from scalepool.cli._studies import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, *args]


def _load(storage, name):
    return optuna.load_study(study_name=name, storage=open_storage(storage))


def test_storage_kinds(tmp_path):
    assert storage_kind(tmp_path / "s.db") == ("sqlite", f"sqlite:///{tmp_path / 's.db'}")
    assert storage_kind(tmp_path / "s.log")[0] == "journal"
    assert storage_kind("journal:///tmp/x.log") == ("journal", "/tmp/x.log")
    assert storage_kind("postgresql://host/db") == ("rdb", "postgresql://host/db")
    with pytest.raises(ValueError, match="storage kind"):
        storage_kind(tmp_path / "study.txt")


def test_parse_space():
    space = parse_space(["cutoff=float:3:6", "n=int:4:64:log", "kind=cat:ions,heavy,2"])
    assert space == {
        "cutoff": ("float", 3.0, 6.0, False),
        "n": ("int", 4, 64, True),
        "kind": ("cat", ["ions", "heavy", 2]),
    }
    for bad in ("cutoff=float:6:3", "cutoff", "x=float:1", "x=float:1:2:lin"):
        with pytest.raises(ValueError, match="bad search space"):
            parse_space([bad])


@pytest.mark.parametrize("suffix", [".db", ".log"])
def test_scale_search_resumes_and_is_seeded(cache_path, tmp_path, suffix):
    storage = tmp_path / f"study{suffix}"
    first = search_scales(cache_path, storage, space="pool", n_trials=15, seed=3, out=tmp_path / "out")
    assert first["n_finished"] == 15 and first["n_this_call"] == 15
    cache = PredictionCache.load(cache_path)
    assert first["test_pool_oracle"] == pytest.approx(_oracle_mae(cache, "test", first["pool"]), rel=1e-5)
    assert first["test_anchor_oracle"] == pytest.approx(_oracle_mae(cache, "test", (0.0, 1.0)), rel=1e-5)
    assert json.loads((tmp_path / "out" / "pool_best.json").read_text())["best_trial"] == first["best_trial"]
    again = search_scales(cache_path, storage, space="pool", n_trials=15, seed=3)
    assert again["n_this_call"] == 0 and again["best_value"] == first["best_value"]
    more = search_scales(cache_path, storage, space="pool", n_trials=20, seed=3)
    assert more["n_finished"] == 20 and more["n_this_call"] == 5
    # a fresh study with the same seed proposes the same trials
    twin = search_scales(cache_path, tmp_path / f"twin{suffix}", space="pool", n_trials=15, seed=3)
    params = [t.params for t in _load(storage, "scales-pool").trials[:15]]
    assert params == [t.params for t in _load(tmp_path / f"twin{suffix}", "scales-pool").trials]
    assert twin["best_value"] == first["best_value"]


def test_refine_and_router_spaces(cache_path, tmp_path):
    from scalepool.data import PredictionCache

    cache = PredictionCache.load(cache_path)
    refine = ScaleSearch(cache, "refine")
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(refine, n_trials=6)
    record = refine.evaluate(study.best_params)
    assert record["upper_bound"]
    # the re-run reproduces the best trial's objective: oracle-routed val MAE plus the size penalty
    penalty = 0.1 * (len(record["pool"]) - 2)
    assert record["val_objective"] == pytest.approx(study.best_value, rel=1e-9)
    assert record["val_objective"] == pytest.approx(
        _oracle_mae(cache, "val", record["pool"]) + penalty, rel=1e-5
    )
    assert record["test_pool_oracle"] == pytest.approx(_oracle_mae(cache, "test", record["pool"]), rel=1e-5)
    router = ScaleSearch(cache, "router", max_router_steps=50)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(router, n_trials=2)
    record = router.evaluate(study.best_params)
    assert not record["upper_bound"] and record["val_objective"] == pytest.approx(study.best_value, rel=1e-6)
    assert record["test_continuous_oracle"] == pytest.approx(_oracle_mae(cache, "test"), rel=1e-5)
    with pytest.raises(ValueError, match="space must be one of"):
        ScaleSearch(cache, "nope")


def _count(storage, name, states):
    return len(_load(storage, name).get_trials(deepcopy=False, states=states))


def test_sigkill_then_resume_loses_no_finished_trial(cache_path, tmp_path):
    storage = tmp_path / "study.db"
    args = ["search", "settings", "--pred", str(cache_path), "--storage", str(storage), "--space", "router",
            "--n-trials", "5", "--seed", "1", "--threads", "1"]  # fmt: skip
    process = subprocess.Popen(_worker(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    finished_states = (TrialState.COMPLETE,)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if storage.exists():
            try:
                if _count(storage, "scales-router", finished_states) >= 2:
                    break
            except (KeyError, Exception):  # the study may not exist yet
                continue
        assert process.poll() is None, process.stderr.read()
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed = _load(storage, "scales-router").trials
    before = {t.number: (t.params, t.value) for t in killed if t.state == TrialState.COMPLETE}
    running = [t.number for t in killed if t.state == TrialState.RUNNING]
    assert len(before) >= 2
    result = subprocess.run(_worker(args), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    study = _load(storage, "scales-router")
    after = {t.number: (t.params, t.value) for t in study.trials if t.state == TrialState.COMPLETE}
    assert all(after[n] == v for n, v in before.items())  # no finished trial lost or changed
    assert len(after) == 5
    assert not study.get_trials(states=(TrialState.RUNNING,))
    failed = [t.number for t in study.get_trials(states=(TrialState.FAIL,))]
    assert failed == running  # the trial the kill interrupted was failed ...
    for number in failed:  # ... and its parameters ran again
        retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == number)
        interrupted = study.trials[number].params  # a kill mid-suggest leaves only some parameters
        assert retry.state == TrialState.COMPLETE
        assert {key: retry.params[key] for key in interrupted} == interrupted


def test_two_workers_share_one_sqlite_study(cache_path, tmp_path):
    storage = tmp_path / "study.db"
    args = ["search", "settings", "--pred", str(cache_path), "--storage", str(storage), "--space", "pool",
            "--n-trials", "40", "--threads", "1"]  # fmt: skip
    workers = [subprocess.Popen(_worker([*args, "--worker", str(i)]), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]  # fmt: skip
    for worker in workers:
        assert worker.wait(timeout=300) == 0, worker.stderr.read()
    study = _load(storage, "scales-pool")
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(len(numbers)))  # no duplicate, no gap
    drawn = [json.dumps(t.params, sort_keys=True) for t in study.trials if t.params["n_inner"]]
    assert len(set(drawn)) == len(drawn)  # no trial ran twice (n_inner=0 has a single point)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) in (40, 41) and set(states) == {TrialState.COMPLETE}
    workers_seen = {t.user_attrs[WORKER_ATTR] for t in study.trials}
    assert len(workers_seen) == 2  # both workers ran trials


def test_recover_dead_trials_requeues_parameters(tmp_path):
    storage = open_storage(tmp_path / "s.db")
    study = open_results(storage, "dead")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.set_user_attr(WORKER_ATTR, f"{os.uname().nodename}:999999999")
    assert recover_dead_trials(study) == [trial.number]
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    assert study.trials[1].system_attrs["fixed_params"] == study.trials[0].params
    assert study.trials[1].user_attrs["retry_of"] == trial.number


class _OddPruner(optuna.pruners.BasePruner):
    """Prunes odd-numbered trials as soon as they report."""

    def prune(self, study, trial) -> bool:
        return trial.number % 2 == 1 and bool(trial.intermediate_values)


def test_model_search_prunes_per_epoch(tmp_path):
    from scalepool.models import build_branch
    from scalepool.testing._systems import random_frames

    frames = random_frames(n_atoms=12, box=8.0, n_frames=8, seed=0, triclinic=False)
    small = {"n_features": 4, "n_interactions": 1, "n_rbf": 4}
    record = search_models(
        frames, "short", tmp_path / "s.db", tmp_path / "out", space=["cutoff=float:2.5:3.5"], n_trials=3, epochs=2,
        pruner=_OddPruner(), fixed=small, train_options={"split_fractions": (0.5, 0.25, 0.25)},
        build=lambda branch, **kw: build_branch(branch, **kw),
    )  # fmt: skip
    study = _load(tmp_path / "s.db", "models-short")
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    assert list(study.trials[0].intermediate_values) == [1, 2]
    assert list(study.trials[1].intermediate_values) == [1]
    assert record["best_trial"] in (0, 2) and record["test_force_mae_meV_A"] > 0
    assert (tmp_path / "out" / "best" / "best.pt").exists() and not (
        tmp_path / "out" / "best" / "checkpoint.pt"
    ).exists()
    assert (tmp_path / "out" / "trials.csv").exists() and json.loads(
        (tmp_path / "out" / "best.json").read_text()
    )
    search = ModelSearch(frames, "short", tmp_path / "x", parse_space(["cutoff=float:2:3"]))
    assert (
        search.run_dir({"cutoff": 2.5}) == search.run_dir({"cutoff": 2.5}) != search.run_dir({"cutoff": 2.6})
    )


def test_cli_search_scales(cache_path, tmp_path, capsys):
    code = _studies.main(["search", "settings", "--pred", str(cache_path), "--storage", str(tmp_path / "c.db"),
                          "--n-trials", "5", "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "study scales-pool: 5 finished trials" in out and "test_pool_oracle" in out
    assert (tmp_path / "o" / "pool_trials.csv").exists()


def test_best_run_on_another_host_needs_a_shared_filesystem(tmp_path):
    """A model search whose best trial ran on another host, whose run folder this host does
    not see, names that host instead of failing in a copy."""
    from scalepool.testing._systems import random_frames

    frames = random_frames(n_atoms=12, box=8.0, n_frames=8, seed=0, triclinic=False)
    search = ModelSearch(frames, "short", tmp_path / "out", parse_space(["cutoff=float:2:3"]))
    study = open_results(open_storage(tmp_path / "s.db"), "models-short")
    params = {"cutoff": 2.5}
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions={"cutoff": optuna.distributions.FloatDistribution(2, 3)}, value=12.0,
        user_attrs={"run_dir": str(search.run_dir(params)), "host": "node-b"},
    ))  # fmt: skip
    with pytest.raises(FileNotFoundError, match="ran on host node-b .*a shared filesystem is required"):
        search.save_best(study)
    assert not (tmp_path / "out" / "best").exists()
