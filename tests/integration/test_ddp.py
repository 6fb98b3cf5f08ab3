"""Data-parallel training with real processes: ``torchrun --nproc_per_node=2`` on CPU (gloo).

Two ranks must compute what one process computes with the same global batch:
the batch size 5 over 18 training frames gives batches of 5, 5, 5 and 3 frames,
so the ranks' shards are unequal (3 + 2, then 2 + 1) and only the loss weighting
of :mod:`scalepool.train._distributed` makes the rank average the batch mean.
A 2-rank run killed mid-epoch (one rank SIGKILLed; torchrun stops the other)
and started again resumes from rank 0's checkpoint and ends bitwise equal to
an uninterrupted 2-rank run.  The stand-in model keeps each run a few seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from standins import FRACTIONS, PairModel, install_standin_io, make_frames, standin_load

from scalepool.testing import TOLERANCES, random_frames
from scalepool.train import CHECKPOINT, HISTORY, LAST, read_run_config, train

TESTS = Path(__file__).resolve().parents[1]

#: The smallest settings of the training tests (tests/standins.run), in float64 so that two
#: groupings of the same sums agree to round-off; batch 5 makes unequal shards.
SETTINGS = {
    "epochs": 3,
    "batch_size": 5,
    "lr": 0.05,
    "split_fractions": FRACTIONS,
    "checkpoint_every": 2,
    "seed": 3,
    "patience": None,
    "dtype": "float64",
    "progress": False,
}

WORKER = """
import json, os, sys
sys.path.insert(0, {tests!r})
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)
from standins import PairModel, install_standin_io
from scalepool.data import FrameSet
from scalepool.train import train
install_standin_io()
data, out, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
delay, pids = options.pop("delay", 0.0), options.pop("pids", None)
if pids:
    with open(os.path.join(pids, "rank" + os.environ["RANK"]), "w") as handle:
        handle.write(str(os.getpid()))
model = PairModel(seed=0)
model.delay = delay
train(model, FrameSet.load(data), out, data_path=data, **options)
"""


def torchrun(tmp_path: Path, data: Path, out: Path, **options) -> subprocess.Popen:
    """Start ``torchrun --standalone --nproc_per_node=2`` on the worker script (2 CPU ranks)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(TESTS), root=str(TESTS.parent)))
    settings = {**SETTINGS, "split_fractions": list(FRACTIONS), **options}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), str(data), str(out), json.dumps(settings)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, output[-15000:]
    return output


@pytest.fixture(scope="module")
def frames():
    return make_frames()


@pytest.fixture(scope="module")
def data(frames, tmp_path_factory):
    return frames.save(tmp_path_factory.mktemp("data") / "data.npz")


@pytest.fixture(scope="module")
def two_ranks(data, tmp_path_factory):
    """An uninterrupted 2-rank run."""
    tmp = tmp_path_factory.mktemp("two_ranks")
    finish(torchrun(tmp, data, tmp / "run"))
    return tmp / "run"


def history(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / HISTORY).drop(columns="elapsed_s")


def weights(run: Path) -> np.ndarray:
    return standin_load(run / LAST).coupling.detach().numpy()


@pytest.mark.slow
def test_two_ranks_match_one_process_with_the_same_global_batch(frames, two_ranks, tmp_path):
    with pytest.MonkeyPatch.context() as patch:
        install_standin_io(patch)
        one = train(PairModel(seed=0), frames, tmp_path / "one", **SETTINGS)
    tol = TOLERANCES[torch.float64]
    two = history(two_ranks)
    assert list(two["epoch"]) == [1, 2, 3]
    np.testing.assert_allclose(two.to_numpy(float), history(one.out_dir).to_numpy(float), **tol)
    np.testing.assert_allclose(weights(two_ranks), weights(one.out_dir), **tol)
    # the model learned, so equal curves are not two flat lines
    assert two["val_force_mae_meV_A"].iloc[-1] < 0.7 * two["val_force_mae_meV_A"].iloc[0]
    # both ranks stepped on every batch: 4 optimiser steps per epoch, recorded by rank 0
    session = read_run_config(two_ranks)["sessions"][0]
    assert (session["world_size"], session["backend"]) == (2, "gloo")
    assert torch.load(two_ranks / CHECKPOINT, weights_only=True)["progress"]["epoch"] == 3
    assert read_run_config(one.out_dir)["sessions"][0]["world_size"] == 1


def _progress(path: Path):
    try:
        return torch.load(path, weights_only=True)["progress"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return None


@pytest.mark.slow
def test_killed_rank_resumes_bitwise_equal_to_an_uninterrupted_run(data, two_ranks, tmp_path):
    out, pids = tmp_path / "killed", tmp_path / "pids"
    pids.mkdir()
    proc = torchrun(tmp_path, data, out, delay=0.15, pids=str(pids))
    deadline, killed = time.monotonic() + 90, None
    while time.monotonic() < deadline and proc.poll() is None:
        state = _progress(out / CHECKPOINT)
        if state is not None and state["epoch"] >= 1 and state["batch"] > 0 and (pids / "rank1").exists():
            killed = int((pids / "rank1").read_text())
            os.kill(killed, signal.SIGKILL)  # rank 1 dies; torchrun then stops rank 0
            break
        time.sleep(0.02)
    output, _ = proc.communicate(timeout=60)
    assert killed is not None, output[-15000:]
    assert proc.returncode != 0, output[-15000:]
    state = _progress(out / CHECKPOINT)
    assert 1 <= state["epoch"] < 3 and state["batch"] > 0, state  # killed mid-epoch, after epoch 1
    assert len(pd.read_csv(out / HISTORY)) == state["epoch"]

    finish(torchrun(tmp_path, data, out))  # the same command again resumes
    pd.testing.assert_frame_equal(history(out), history(two_ranks), check_exact=True)
    np.testing.assert_array_equal(weights(out), weights(two_ranks))
    sessions = read_run_config(out)["sessions"]
    assert len(sessions) == 2 and sessions[1]["resumed_at_epoch"] == state["epoch"]
    assert sessions[1]["resumed_at_batch"] == state["batch"]


@pytest.mark.slow
def test_torchrun_scalepool_train_command(tmp_path):
    """The documented command: torchrun --no-python scalepool train, a tiny real branch, TensorBoard on."""
    data = random_frames(n_atoms=8, box=7.0, n_frames=10, seed=0, triclinic=False).save(tmp_path / "d.npz")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--no-python",
        str(Path(sys.executable).parent / "scalepool"), "train", "--branch", "short", "--data", str(data),
        "--out", str(tmp_path / "run"), "--epochs", "2", "--batch-size", "2", "--split", "0.6,0.2,0.2",
        "--no-progress", "--tensorboard", "--model-option", "n_features=8", "--model-option", "n_interactions=1",
        "--model-option", "n_rbf=4",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-15000:]
    assert done.stdout.count("short: completed after 2 epoch(s)") == 1, done.stdout  # rank 0 reports
    assert list(pd.read_csv(tmp_path / "run" / HISTORY)["epoch"]) == [1, 2]
    assert read_run_config(tmp_path / "run")["sessions"][0]["world_size"] == 2
    assert len(list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0 only
