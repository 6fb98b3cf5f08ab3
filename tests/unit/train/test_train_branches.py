"""The real short- and long-range branches through train, resume and predict (small and fast)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from standins import make_frames

from scalepool.data import keys as K
from scalepool.models import ForceModel, build_branch, fit_species_statistics, load_model
from scalepool.train import BEST, HISTORY, LAST, TrainError, predict_cache, train

SMALL = {"n_features": 8, "n_interactions": 1, "n_rbf": 6}


@pytest.fixture(scope="module")
def frames():
    return make_frames(n_frames=10, n_atoms=16)


def test_short_and_long_branch_train_resume_and_predict(frames, tmp_path):
    torch.manual_seed(0)
    options = dict(batch_size=2, lr=5e-3, split_fractions=(0.6, 0.2, 0.2), seed=1, progress=False)
    short = train(build_branch("short", cutoff=3.0, **SMALL), frames, tmp_path / "short", epochs=1, **options)
    long = train(build_branch("long", cutoff=3.5, **SMALL), frames, tmp_path / "long", epochs=1, **options)
    for result in (short, long):
        assert result.stop_reason == "completed" and len(result.history) == 1
        assert np.isfinite(result.best_val_force_mae)
        assert isinstance(load_model(result.best_path), ForceModel)
    # the real model file format and config round trip: a second epoch resumes the short run
    more = train(build_branch("short", cutoff=3.0, **SMALL), frames, tmp_path / "short", epochs=2, **options)
    assert more.resumed and list(pd.read_csv(tmp_path / "short" / HISTORY)["epoch"]) == [1, 2]
    with pytest.raises(TrainError, match="different settings"):
        train(build_branch("short", cutoff=3.5, **SMALL), frames, tmp_path / "short", epochs=3, **options)
    # species statistics were fitted on the training block (frames 0-5) before training
    fresh = build_branch("short", cutoff=3.0, **SMALL)
    fit_species_statistics(fresh, frames[np.arange(6)])
    model = load_model(tmp_path / "short" / LAST)
    assert torch.equal(model.species_scale, fresh.species_scale)
    assert torch.allclose(model.species_shift, fresh.species_shift.float())

    path = predict_cache(
        [tmp_path / "short", tmp_path / "long"], frames, tmp_path / "pred.npz", batch_size=5, progress=False
    )
    with np.load(path) as cache:
        assert cache["forces_short"].shape == cache["forces_long"].shape == frames.forces.shape
        assert np.isfinite(cache["forces_long"]).all()
        meta = json.loads(str(cache[K.META]))
        np.testing.assert_array_equal(cache[K.SPLIT], [0] * 6 + [1] * 2 + [2] * 2)
    assert meta["branches"] == ["short", "long"] and meta["anchors"] == {"0": "short", "1": "long"}


def test_branch_names_come_from_config_or_argument(frames, tmp_path):
    options = dict(batch_size=5, split_fractions=(0.6, 0.2, 0.2), progress=False, checkpoint_every=None)
    train(
        build_branch("short", cutoff=3.0, **SMALL),
        frames,
        tmp_path / "a",
        epochs=1,
        branch="short",
        **options,
    )
    train(
        build_branch("short", cutoff=2.5, **SMALL), frames, tmp_path / "b", epochs=1, branch="long", **options
    )
    path = predict_cache([tmp_path / "a", tmp_path / "b"], frames, tmp_path / "p.npz", progress=False)
    with np.load(path) as cache:
        assert json.loads(str(cache[K.META]))["anchors"] == {"0": "short", "1": "long"}
    assert (tmp_path / "a" / BEST).exists()


def test_cli_train_then_predict(frames, tmp_path, capsys):
    from scalepool.cli import _train as cli

    threads = torch.get_num_threads()  # --threads changes the process-wide setting
    try:
        _cli_train_then_predict(frames, tmp_path, capsys, cli)
    finally:
        torch.set_num_threads(threads)


def _cli_train_then_predict(frames, tmp_path, capsys, cli):
    import argparse

    parser = argparse.ArgumentParser(prog="scalepool")
    cli.register(parser.add_subparsers(dest="command", required=True))
    data = frames.save(tmp_path / "data.npz")
    common = [
        "--data",
        str(data),
        "--epochs",
        "1",
        "--split",
        "0.6,0.2,0.2",
        "--no-progress",
        "--threads",
        "1",
    ]
    small = [x for key, value in SMALL.items() for x in ("--model-option", f"{key}={value}")]
    for branch in ("short", "long"):
        args = parser.parse_args(
            ["train", "--branch", branch, "--out", str(tmp_path / branch), "--cutoff", "3.0"] + common + small
        )
        assert args.func(args) == 0
        assert f"{branch}: completed after 1 epoch(s)" in capsys.readouterr().out
    args = parser.parse_args(
        [
            "predict",
            "--run",
            str(tmp_path / "short"),
            "--run",
            str(tmp_path / "long"),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "pred.npz"),
            "--no-progress",
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "short MAE" in printed and "long MAE" in printed and "baseline MAE" in printed
    config = json.loads((tmp_path / "long" / "config.json").read_text())
    assert config["branch"] == "long" and config["request"]["model"]["class"] == "LongRangeBranch"
    assert config["request"]["model"]["n_features"] == 8 and config["dataset"]["path"] == str(data.resolve())
