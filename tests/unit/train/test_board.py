"""``--tensorboard``: the event files hold the history.csv scalars, also after an interrupt and resume.

Read back with TensorBoard's own EventAccumulator (what the TensorBoard UI shows),
compared with history.csv.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from standins import PairModel, install_standin_io, make_frames, run

from scalepool.train import HISTORY, TrainError

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _standin_io():
    with pytest.MonkeyPatch.context() as patch:
        install_standin_io(patch)
        yield


@pytest.fixture(scope="module")
def frames():
    return make_frames()


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_board_is_history(run_dir, with_energy=True):
    history = pd.read_csv(run_dir / HISTORY)
    board = scalars(run_dir)
    columns = ["train_loss", "val_force_mae_meV_A", "lr", "elapsed_s"]
    assert sorted(board) == sorted(columns + (["val_energy_mae_meV_atom"] if with_energy else []))
    for tag, points in board.items():
        steps, values = zip(*points, strict=True)
        assert list(steps) == history["epoch"].tolist(), tag  # each epoch once, in order
        # TensorBoard stores float32; history.csv keeps 10 significant digits
        np.testing.assert_allclose(values, history[tag].to_numpy(), rtol=2e-7, atol=0, err_msg=tag)


def test_event_file_holds_the_history(frames, tmp_path):
    run(tmp_path, frames, tensorboard=True)
    assert_board_is_history(tmp_path)
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_resumed_and_replaced_runs_show_only_the_current_history(frames, tmp_path):
    model = PairModel(seed=0)
    model.interrupt_at = 13  # batch 4 of epoch 2: epoch 1 is on the board
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, frames, model=model, tensorboard=True)
    assert [step for step, _ in scalars(tmp_path)["train_loss"]] == [1]
    run(tmp_path, frames, tensorboard=True)
    assert_board_is_history(tmp_path)  # epoch 1 not twice
    # a shorter run with another learning rate replaces it: its two epochs only, its values
    run(tmp_path, frames, tensorboard=True, overwrite=True, lr=0.01, epochs=2)
    assert len(pd.read_csv(tmp_path / HISTORY)) == 2
    assert_board_is_history(tmp_path)
    # no energies: the NaN column is left out
    no_energy = make_frames(energy=False)
    run(tmp_path / "no_energy", no_energy, tensorboard=True)
    assert_board_is_history(tmp_path / "no_energy", with_energy=False)


def test_missing_tensorboard_is_a_clear_error(frames, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(TrainError, match=r"--tensorboard needs the tensorboard package.*pip install"):
        run(tmp_path / "run", frames, tensorboard=True)
    assert not (tmp_path / "run").exists()  # refused before anything was written
