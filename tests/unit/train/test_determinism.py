"""Determinism of training: the same seed, data, settings and one thread give the same run, bit for bit.

``scalepool reproduce`` promises that a rerun at the same commit on one machine
(one torch thread) gives identical results.  Training is where that could break:
the batch order, the model's initialisation, hidden use of the global RNGs,
thread scheduling, or wall-clock logic (a time budget deciding when to stop or
validate).  These tests train a real but tiny branch twice and compare the
validation columns of ``history.csv`` and the weights exactly (no tolerance).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from scalepool.models import build_branch, load_model
from scalepool.testing import random_frames
from scalepool.train import HISTORY, LAST, train

#: the validation columns of history.csv (elapsed_s is wall time and differs by design)
VALIDATION = ["epoch", "val_force_mae_meV_A", "val_energy_mae_meV_atom", "lr", "train_loss"]
WIDTH = {"n_features": 8, "n_interactions": 1, "n_rbf": 4}
SETTINGS = {
    "epochs": 3,
    "batch_size": 2,
    "lr": 5e-3,
    "split_fractions": (0.5, 0.25, 0.25),
    "checkpoint_every": 2,
    "patience": None,
    "progress": False,
}


@pytest.fixture
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def frames():
    return random_frames(n_atoms=16, box=10.0, n_frames=12, seed=0, triclinic=False)


def _train(frames, out: Path, seed: int = 0, scramble: bool = False, **kwargs):
    torch.manual_seed(seed)  # the model's initialisation is the caller's (as in reproduce)
    model = build_branch("short", **WIDTH)
    if scramble:  # training must not read the global RNGs the caller left behind
        random.seed(12345)
        np.random.seed(12345)
        torch.manual_seed(12345)
        torch.rand(17)
    return train(model, frames, out, **{**SETTINGS, "seed": seed, **kwargs})


def _columns(out: Path) -> dict[str, list[str]]:
    """The validation columns of history.csv as written (text, so 'identical' means every digit)."""
    table = pd.read_csv(Path(out) / HISTORY, dtype=str)
    return {name: table[name].tolist() for name in VALIDATION}


def _bits(result) -> np.ndarray:
    return result.history[VALIDATION].to_numpy(dtype=np.float64).view(np.int64)


def _weights(out: Path) -> list[np.ndarray]:
    return [p.detach().numpy().copy() for p in load_model(Path(out) / LAST).state_dict().values()]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb, strict=True):
        assert np.array_equal(x, y)


def test_same_seed_twice_gives_identical_history_and_weights(frames, tmp_path, one_thread):
    a = _train(frames, tmp_path / "a")
    b = _train(frames, tmp_path / "b", scramble=True)
    assert a.stop_reason == b.stop_reason == "completed" and a.epochs_completed == 3
    assert a.steps == b.steps == 3 * 3  # 6 training frames, batches of 2
    assert _columns(tmp_path / "a") == _columns(tmp_path / "b")
    assert np.array_equal(_bits(a), _bits(b))  # full precision, not only the 10 digits of the CSV
    _assert_same_weights(tmp_path / "a", tmp_path / "b")
    # the test can see a difference: another seed gives another run
    _train(frames, tmp_path / "c", seed=1)
    assert _columns(tmp_path / "c")["val_force_mae_meV_A"] != _columns(tmp_path / "a")["val_force_mae_meV_A"]


def test_safety_stop_changes_nothing_but_when_the_run_ends(frames, tmp_path, one_thread):
    """A wall-clock limit that does not fire leaves the run untouched; one that fires stops it
    (incomplete), and the resumed run ends identical to an uninterrupted one."""
    reference = _train(frames, tmp_path / "ref")
    generous = _train(frames, tmp_path / "generous", max_minutes=60.0)
    assert generous.complete and generous.stop_reason == "completed"
    assert _columns(tmp_path / "generous") == _columns(tmp_path / "ref")

    stopped = _train(frames, tmp_path / "stopped", max_minutes=1e-7)
    assert not stopped.complete and stopped.stop_reason == "time_budget" and stopped.steps == 1
    resumed = _train(frames, tmp_path / "stopped")
    assert resumed.complete and resumed.resumed and resumed.steps == reference.steps
    assert _columns(tmp_path / "stopped") == _columns(tmp_path / "ref")
    assert np.array_equal(_bits(resumed), _bits(reference))
    _assert_same_weights(tmp_path / "stopped", tmp_path / "ref")


SCRIPT = """
import sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
import test_determinism as t
t._train(t.random_frames(n_atoms=16, box=10.0, n_frames=12, seed=0, triclinic=False), t.Path(sys.argv[2]))
"""


def test_another_process_gives_the_same_history(frames, tmp_path, one_thread):
    """A fresh interpreter (another hash seed, fresh thread pools, fresh allocator) trains the same run."""
    _train(frames, tmp_path / "here")
    env = {**os.environ, "PYTHONHASHSEED": "4321", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(Path(__file__).parent), str(tmp_path / "there")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _columns(tmp_path / "there") == _columns(tmp_path / "here")
    _assert_same_weights(tmp_path / "there", tmp_path / "here")
    # the seed is recorded, so the rerun is reproducible from config.json alone
    assert json.loads((tmp_path / "there" / "config.json").read_text())["seed"] == 0
