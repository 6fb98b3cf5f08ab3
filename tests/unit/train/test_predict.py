"""Prediction cache (the .npz contract read by the scale layer) and the train/predict CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from standins import FRACTIONS, PairModel, install_standin_io, make_frames, run, standin_load

from scalepool.cli import _train as cli
from scalepool.data import PredictionCache
from scalepool.data import keys as K
from scalepool.metrics import cache_errors
from scalepool.train import BEST, TrainError, predict_cache, predict_forces


@pytest.fixture(autouse=True, scope="module")
def _standin_io():
    with pytest.MonkeyPatch.context() as patch:
        install_standin_io(patch)
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A dataset and two one-epoch runs, "short" (cutoff 2.5 Å) and "long" (3.5 Å)."""
    root = tmp_path_factory.mktemp("predict")
    frames = make_frames(n_frames=20)
    data = frames.save(root / "data.npz")
    runs = []
    for branch, cutoff in (("short", 2.5), ("long", 3.5)):
        run(root / branch, frames, model=PairModel(cutoff=cutoff), epochs=1, branch=branch, data_path=data)
        runs.append(root / branch)
    return frames, data, runs, root


def test_cache_contract(setup, tmp_path):
    frames, data, runs, _ = setup
    path = predict_cache(runs, frames, tmp_path / "pred.npz", batch_size=3, data_path=data, progress=False)
    with np.load(path, allow_pickle=False) as cache:
        arrays = {key: cache[key] for key in cache.files}
    assert set(arrays) == {
        "forces_ref",
        "forces_short",
        "forces_long",
        "numbers",
        "cell",
        "positions",
        "split",
        "meta",
    }
    F, N = frames.n_frames, frames.n_atoms
    for key in ("forces_ref", "forces_short", "forces_long", "positions"):
        assert arrays[key].shape == (F, N, 3), key
    assert arrays["forces_short"].dtype == np.float32
    np.testing.assert_array_equal(arrays["forces_ref"], frames.forces)
    np.testing.assert_array_equal(arrays["positions"], frames.positions)
    np.testing.assert_array_equal(arrays["cell"], frames.cell)
    np.testing.assert_array_equal(arrays["numbers"], frames.numbers)
    expected = np.zeros(F, int)
    for name, idx in frames.split_indices(FRACTIONS).items():
        expected[idx] = K.SPLIT_CODES[name]
    np.testing.assert_array_equal(arrays["split"], expected)
    assert list(arrays["split"][:12]) == [0] * 12 and list(arrays["split"][-4:]) == [2] * 4
    # the cached forces are those of each run's best model
    short = predict_forces(standin_load(runs[0] / BEST), frames)["forces"]
    np.testing.assert_allclose(arrays["forces_short"], short, rtol=1e-5, atol=1e-6)
    assert not np.allclose(arrays["forces_short"], arrays["forces_long"])
    meta = json.loads(str(arrays["meta"]))
    assert meta["branches"] == ["short", "long"] and meta["anchors"] == {"0": "short", "1": "long"}
    assert meta["dataset_checksum"] == frames.checksum() and meta["split_fractions"] == list(FRACTIONS)
    assert meta["runs"] == [str(r.resolve()) for r in runs] and meta["dataset_path"] == str(data.resolve())
    assert meta["frame_index"] == list(range(F))
    assert not list(tmp_path.glob(".*part*"))  # atomic write left no temporary file
    loaded = PredictionCache.load(path)  # the one reader every consumer goes through
    assert loaded.anchors == ("short", "long") and sorted(loaded.branches) == ["long", "short"]


def test_cache_errors_table(setup, tmp_path):
    frames, _, runs, _ = setup
    path = predict_cache(runs, frames, tmp_path / "pred.npz", progress=False)
    table = cache_errors(path)
    assert list(table.columns) == [
        "short MAE",
        "short RMSE",
        "long MAE",
        "long RMSE",
        "baseline MAE",
        "n_atoms",
    ]
    cache = PredictionCache.load(path)
    test = cache.split == 2
    by_hand = np.abs(cache.branches["long"][test] - cache.forces_ref[test]).mean() * 1e3
    assert table.loc["overall", "long MAE"] == pytest.approx(by_hand, rel=1e-6)
    assert table.loc["overall", "n_atoms"] == test.sum() * frames.n_atoms
    # the trained long branch (cutoff of the reference potential) beats the constant baseline
    assert table.loc["overall", "long MAE"] < table.loc["overall", "baseline MAE"]
    close = cache_errors(cache, "val", nearest_ion=np.full((4, frames.n_atoms), 5.0))
    assert (
        close.loc["near-ion", "n_atoms"] == 4 * frames.n_atoms and close.loc["far-from-ions", "n_atoms"] == 0
    )
    with pytest.raises(ValueError, match="split must be one of"):
        cache_errors(cache, "dev")


def test_cache_refusals(setup, tmp_path):
    frames, _, runs, root = setup
    out = tmp_path / "p.npz"
    with pytest.raises(TrainError, match=r"given more than once; a null pair needs two runs"):
        predict_cache([runs[0], runs[0]], frames, out, progress=False)
    with pytest.raises(TrainError, match="differ from the runs' training split"):
        predict_cache(runs, frames, out, split_fractions=(0.8, 0.1, 0.1), progress=False)
    with pytest.raises(TrainError, match="but these frames have"):
        predict_cache(runs, make_frames(n_frames=20, seed=99), out, progress=False)
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        predict_cache([root / "nope"], frames, out, progress=False)
    with pytest.raises(TrainError, match="is not a training run"):
        predict_cache([tmp_path], frames, out, progress=False)
    other = root / "other_split"
    run(other, frames, model=PairModel(), epochs=1, branch="mid", split_fractions=(0.5, 0.25, 0.25))
    with pytest.raises(TrainError, match="different splits"):
        predict_cache([runs[0], other], frames, out, progress=False)
    with pytest.raises(TrainError, match="at least one run"):
        predict_cache([], frames, out)
    assert not out.exists()


def _parse(argv):
    parser = argparse.ArgumentParser(prog="scalepool")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_predict_prints_test_table(setup, tmp_path, capsys):
    _, data, runs, _ = setup
    out = tmp_path / "pred.npz"
    args = _parse(
        [
            "predict",
            "--run",
            str(runs[0]),
            "--run",
            str(runs[1]),
            "--data",
            str(data),
            "--out",
            str(out),
            "--no-progress",
            "--batch-size",
            "2",
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed
    for word in (
        "short MAE",
        "long MAE",
        "baseline MAE",
        "overall",
        "Na",
        "Cl",
        "ions",
        "near-ion",
        "far-from-ions",
    ):
        assert word in printed
    assert list(PredictionCache.load(out).branches) == ["short", "long"]


def test_cli_errors(tmp_path):
    args = _parse(
        [
            "train",
            "--branch",
            "short",
            "--data",
            str(tmp_path / "missing.npz"),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    with pytest.raises(FileNotFoundError, match="dataset file not found"):
        args.func(args)
    if not torch.cuda.is_available():
        args = _parse(["train", "--branch", "long", "--data", "d.npz", "--out", "r", "--device", "cuda"])
        with pytest.raises(TrainError, match="CUDA is not available"):
            args.func(args)
    with pytest.raises(SystemExit):
        _parse(["train", "--branch", "mid", "--data", "d.npz", "--out", "r"])
    with pytest.raises(SystemExit):
        _parse(["train", "--branch", "short", "--data", "d.npz", "--out", "r", "--split", "0.8,0.2"])
    args = _parse(
        [
            "train",
            "--branch",
            "short",
            "--data",
            "d.npz",
            "--out",
            "r",
            "--split",
            "0.7,0.15,0.15",
            "--model-option",
            "n_features=16",
            "--model-option",
            "name=abc",
        ]
    )
    assert args.split_fractions == (0.7, 0.15, 0.15) and args.model_option == [
        ("n_features", 16),
        ("name", "abc"),
    ]
    args = _parse(["predict", "--run", str(tmp_path / "none"), "--data", "d.npz", "--out", "p.npz"])
    with pytest.raises(FileNotFoundError):
        args.func(args)


def test_gap_frames_left_out_and_scales_reader(tmp_path):
    frames = make_frames(n_frames=14)
    run(tmp_path / "gap", frames, model=PairModel(), epochs=1, branch="short", split_gap=2)
    path = predict_cache([tmp_path / "gap"], frames, tmp_path / "p.npz", progress=False)
    cache = PredictionCache.load(path)
    blocks = frames.split_indices(FRACTIONS, gap=2)
    keep = np.concatenate([blocks["train"], blocks["val"], blocks["test"]])
    assert cache.meta["frame_index"] == keep.tolist() and len(keep) == 10
    np.testing.assert_array_equal(cache.forces_ref, frames.forces[keep])
    np.testing.assert_array_equal(cache.positions, frames.positions[keep])
    np.testing.assert_array_equal(cache.split, [0] * 6 + [1] * 2 + [2] * 2)
    assert cache.anchors == ("short", "short") and cache.n_frames == 10


def test_train_flags_come_from_the_settings():
    """Every TrainSettings field is a train flag with the settings' default (stated once)."""
    import dataclasses

    from scalepool.train import TrainSettings

    args = _parse(["train", "--branch", "short", "--data", "d.npz", "--out", "r"])
    for field in dataclasses.fields(TrainSettings):
        assert getattr(args, field.name) == field.default, field.name
    args = _parse(
        [
            "train",
            "--branch",
            "short",
            "--data",
            "d.npz",
            "--out",
            "r",
            "--scheduler",
            "cosine",
            "--lr",
            "0.01",
        ]
    )
    assert args.scheduler == "cosine" and args.lr == 0.01
    with pytest.raises(SystemExit):
        _parse(["train", "--branch", "short", "--data", "d.npz", "--out", "r", "--loss", "l3"])
