"""Training loop: checkpoints, exact resume after SIGKILL or Ctrl-C, early stopping, time budget.

The tests train a small stand-in model defined here (a learnable pair
potential with the ForceModel interface) on synthetic data made by the same
potential with other parameters, so they run in seconds and do not depend on
the real branches; ``test_real_branch_*`` covers those.
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
from standins import (  # noqa: F401  (the resume script imports these from here)
    EPOCHS,
    FRACTIONS,
    SPECIES,
    PairModel,
    install_standin_io,
    make_frames,
    run,
    standin_fit,
    standin_load,
    standin_save,
)
from torch import nn

from scalepool.train import (
    BEST,
    CHECKPOINT,
    CONFIG,
    HISTORY,
    HISTORY_COLUMNS,
    LAST,
    TrainError,
    read_run_config,
    resolve_device,
    train,
)
from scalepool.train._settings import epoch_batches

TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True, scope="module")
def _standin_io():
    with pytest.MonkeyPatch.context() as patch:
        install_standin_io(patch)
        yield


def numeric_history(out) -> pd.DataFrame:
    return pd.read_csv(Path(out) / HISTORY).drop(columns="elapsed_s")


def assert_same_run(a, b, rtol=1e-6):
    ha, hb = numeric_history(a), numeric_history(b)
    assert list(ha["epoch"]) == list(hb["epoch"]) == list(range(1, len(ha) + 1))
    np.testing.assert_allclose(ha.to_numpy(dtype=float), hb.to_numpy(dtype=float), rtol=rtol, equal_nan=True)
    wa = standin_load(Path(a) / LAST).coupling.detach().numpy()
    wb = standin_load(Path(b) / LAST).coupling.detach().numpy()
    np.testing.assert_allclose(wa, wb, rtol=rtol)


@pytest.fixture(scope="module")
def frames():
    return make_frames()


@pytest.fixture(scope="module")
def reference(frames, tmp_path_factory):
    """An uninterrupted in-process run to compare interrupted ones with."""
    out = tmp_path_factory.mktemp("reference")
    return run(out, frames), out


# ------------------------------------------------------------------ basic run
def test_run_writes_files_history_and_config(reference, frames):
    result, out = reference
    for name in (CHECKPOINT, BEST, LAST, HISTORY, CONFIG):
        assert (out / name).exists(), name
    history = pd.read_csv(out / HISTORY)
    assert list(history.columns) == HISTORY_COLUMNS
    assert list(history["epoch"]) == [1, 2, 3]
    assert result.stop_reason == "completed" and result.epochs_completed == 3 and not result.resumed
    # the run's compute in optimiser steps: 18 training frames in batches of 2, 3 epochs
    assert result.complete and result.steps_per_epoch == 9 and result.steps == 27
    assert (history["elapsed_s"].diff().dropna() > 0).all()
    # the model learned: validation error falls and beats the per-component mean |F|
    val = history["val_force_mae_meV_A"].to_numpy()
    assert val[-1] < val[0]
    mean_abs = np.abs(frames.forces[frames.split_indices(FRACTIONS)["val"]]).mean() * 1e3
    assert result.best_val_force_mae < 0.5 * mean_abs
    assert result.best_val_force_mae == pytest.approx(val.min())
    assert np.isfinite(history["val_energy_mae_meV_atom"]).all()
    config = read_run_config(out)
    assert config["dataset"]["checksum"] == frames.checksum()
    assert config["seed"] == 3 and config["branch"] == "pairmodel"
    assert config["request"]["model"]["class"] == "PairModel"
    assert config["split"]["fractions"] == list(FRACTIONS) and config["split"]["train"] == [0, 18]
    assert set(config["sessions"][0]["versions"]) >= {"python", "torch", "numpy", "scalepool"}
    assert "git_commit" in config["sessions"][0]
    assert (
        config["result"]["stop_reason"] == "completed" and config["result"]["best_epoch"] == result.best_epoch
    )
    # best.pt holds the best validation model
    best = standin_load(out / BEST)
    from scalepool.train import evaluate_forces

    score = evaluate_forces(best, frames, frames.split_indices(FRACTIONS)["val"])["force_mae_meV_A"]
    assert score == pytest.approx(result.best_val_force_mae, rel=1e-5)


def test_same_seed_same_run_and_batch_order(reference, frames, tmp_path):
    run(tmp_path, frames)
    assert_same_run(reference[1], tmp_path, rtol=0)
    train_idx = np.arange(18)
    a, b = epoch_batches(train_idx, 3, 0, 2), epoch_batches(train_idx, 3, 1, 2)
    assert sorted(np.concatenate(a)) == list(train_idx) and len(a) == 9
    assert not np.array_equal(np.concatenate(a), np.concatenate(b))
    np.testing.assert_array_equal(np.concatenate(a), np.concatenate(epoch_batches(train_idx, 3, 0, 2)))


# ------------------------------------------------------------------ resume
SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)
import test_train as t
from scalepool.data import FrameSet
t.install_standin_io()
data, out, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
model = t.PairModel(seed=0)
model.delay = delay
t.run(out, FrameSet.load(data), model=model, data_path=data)
"""


def _script(data, out, delay):
    code = SCRIPT.format(tests=str(TESTS), root=str(TESTS.parents[1]))
    return subprocess.Popen(
        [sys.executable, "-c", code, str(data), str(out), str(delay)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _progress(path):
    try:
        return torch.load(path, weights_only=True)["progress"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return None


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(reference, frames, tmp_path):
    data = frames.save(tmp_path / "data.npz")
    killed_dir = tmp_path / "killed"
    proc = _script(data, killed_dir, 0.1)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        state = _progress(killed_dir / CHECKPOINT)
        if state is not None and state["epoch"] >= 1 and state["batch"] > 0:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    state = _progress(killed_dir / CHECKPOINT)
    assert 1 <= state["epoch"] < EPOCHS and 0 < state["batch"] < 9  # killed mid-epoch, after epoch 1
    assert len(pd.read_csv(killed_dir / HISTORY)) == state["epoch"]

    result = run(killed_dir, frames, data_path=data)  # resumes: same settings, same data
    assert result.resumed and result.stop_reason == "completed"
    assert_same_run(reference[1], killed_dir)
    assert result.best_epoch == reference[0].best_epoch
    assert result.best_val_force_mae == pytest.approx(reference[0].best_val_force_mae, rel=1e-6)
    config = read_run_config(killed_dir)
    assert len(config["sessions"]) == 2
    assert config["sessions"][1]["resumed_at_epoch"] == state["epoch"]
    assert config["sessions"][1]["resumed_at_batch"] == state["batch"]
    assert config["dataset"]["path"] == str(data.resolve())


@pytest.mark.parametrize(
    ("hook", "at", "position"),
    [("interrupt_at", 13, (1, 3)), ("interrupt_eval_at", 4, (1, 9))],
    ids=["mid-epoch", "during-validation"],
)
def test_keyboard_interrupt_checkpoints_and_resumes_exactly(reference, frames, tmp_path, hook, at, position):
    # 9 training batches and 3 validation batches per epoch: step 13 is batch 4 of
    # epoch 2, validation call 4 the first of epoch 2's validation
    model = PairModel(seed=0)
    setattr(model, hook, at)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, frames, model=model)
    state = _progress(tmp_path / CHECKPOINT)
    assert (state["epoch"], state["batch"]) == position
    assert len(pd.read_csv(tmp_path / HISTORY)) == 1
    result = run(tmp_path, frames)
    assert result.resumed and result.stop_reason == "completed"
    assert_same_run(reference[1], tmp_path, rtol=1e-6)


def test_time_budget_stops_cleanly_and_resume_completes(reference, frames, tmp_path):
    """max_minutes is a safety stop: when it fires the run is incomplete, and the next call finishes it."""
    result = run(tmp_path, frames, max_minutes=1e-6)
    assert result.stop_reason == "time_budget" and result.epochs_completed == 0
    assert not result.complete and result.steps == 1
    assert result.best_epoch is None and (tmp_path / BEST).exists() and (tmp_path / LAST).exists()
    assert _progress(tmp_path / CHECKPOINT)["batch"] == 1
    assert len(pd.read_csv(tmp_path / HISTORY)) == 0
    result = run(tmp_path, frames)
    assert result.resumed and result.stop_reason == "completed" and len(result.history) == EPOCHS
    assert result.complete and result.steps == reference[0].steps == 27
    assert_same_run(reference[1], tmp_path, rtol=1e-6)
    # a finished run called again does nothing; more epochs continue it
    again = run(tmp_path, frames)
    assert again.stop_reason == "completed" and len(again.history) == EPOCHS
    longer = run(tmp_path, frames, epochs=EPOCHS + 1)
    assert list(longer.history["epoch"]) == [1, 2, 3, 4] and longer.steps == 36
    assert list(pd.read_csv(tmp_path / HISTORY)["epoch"]) == [1, 2, 3, 4]


def test_resume_refuses_other_settings_or_data(reference, frames):
    _, out = reference
    with pytest.raises(TrainError, match=r"different settings \(lr: checkpoint 0.05 vs requested 0.01\)"):
        run(out, frames, lr=0.01)
    with pytest.raises(TrainError, match="different settings.*model"):
        run(out, frames, model=PairModel(seed=0, cutoff=2.5))
    other = make_frames(seed=8)
    with pytest.raises(TrainError, match="dataset with checksum"):
        run(out, other)
    with pytest.raises(TrainError, match="already holds a training run"):
        run(out, frames, resume=False)


def test_resume_true_without_checkpoint_and_bad_arguments(frames, tmp_path):
    with pytest.raises(TrainError, match="does not exist"):
        run(tmp_path / "a", frames, resume=True)
    with pytest.raises(TrainError, match="loss must be one of"):
        run(tmp_path / "b", frames, loss="l1")
    with pytest.raises(TrainError, match="epochs must be an integer >= 1"):
        run(tmp_path / "c", frames, epochs=0)
    with pytest.raises(TrainError, match="frames must be a FrameSet"):
        train(PairModel(), frames.positions, tmp_path / "d", epochs=1)
    with pytest.raises(TrainError, match="has no 'cutoff'"):
        train(nn.Linear(2, 2), frames, tmp_path / "e", epochs=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"lr": -1.0}, "lr must be positive"),
        ({"patience": 0}, "patience must be >= 1 or None"),
        ({"scheduler": "step"}, "scheduler must be one of"),
        ({"dtype": "float16"}, "dtype must be float32 or float64"),
        ({"max_minutes": 0}, "max_minutes must be positive"),
        ({"split_fractions": (0.5, 0.5)}, "split_fractions must be 3 numbers"),
        ({"branch": "short range"}, "branch name must be an identifier"),
    ],
)
def test_settings_validation(frames, tmp_path, kwargs, message):
    with pytest.raises(TrainError, match=message):
        run(tmp_path, frames, **kwargs)
    assert not (tmp_path / CHECKPOINT).exists()


def test_device_validation():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(TrainError, match="must be 'cpu' or 'cuda"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(TrainError, match="CUDA is not available"):
            resolve_device("cuda")


def test_early_stopping(frames, tmp_path):
    # gain 0: the model predicts zero forces whatever its weights, so validation never improves
    result = run(tmp_path, frames, model=PairModel(gain=0.0), epochs=10, patience=2)
    assert result.stop_reason == "early_stopping" and result.complete  # not the safety stop
    assert result.epochs_completed == 3 and result.best_epoch == 1 and result.steps == 27
    assert json.loads((tmp_path / CONFIG).read_text())["result"]["stop_reason"] == "early_stopping"


@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_other_losses_and_no_energy(loss, tmp_path):
    frames = make_frames(n_frames=12, energy=False)
    result = run(tmp_path, frames, loss=loss, epochs=2, scheduler="cosine", dtype="float64")
    history = result.history
    assert len(history) == 2 and history["val_energy_mae_meV_atom"].isna().all()
    assert history["lr"].iloc[-1] < 0.05  # cosine schedule decays
    assert history["val_force_mae_meV_A"].iloc[-1] < history["val_force_mae_meV_A"].iloc[0]
