"""``--config FILE.yaml`` for ``scalepool train``, ``search`` and ``reproduce``: every run's saved
``config.yaml`` repeats it, and unknown keys are refused naming the key and the file."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml

from scalepool.cli import main
from scalepool.testing._systems import random_frames

SMALL = ["--model-option", "n_features=4", "--model-option", "n_interactions=1", "--model-option", "n_rbf=4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    frames = random_frames(n_atoms=12, box=8.0, n_frames=8, seed=0, triclinic=False)
    return frames.save(tmp_path_factory.mktemp("data") / "frames.npz")


def _weights(path) -> dict[str, torch.Tensor]:
    from scalepool.models import load_model

    return load_model(path).state_dict()


def test_saved_train_config_repeats_the_run_bit_for_bit(data, tmp_path, monkeypatch, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    argv = ["train", "--branch", "short", "--data", str(data), "--out", str(first), "--epochs", "2",
            "--batch-size", "2", "--lr", "0.01", "--split", "0.5,0.25,0.25", "--seed", "3", "--no-progress",
            "--threads", "1", *SMALL]  # fmt: skip
    assert main(argv) == 0
    saved = yaml.safe_load((first / "config.yaml").read_text())
    assert saved["lr"] == "0.01" and saved["model-option"] == ["n_features=4", "n_interactions=1", "n_rbf=4"]
    assert saved["data"] == str(data.resolve()) and saved["no-progress"] is True
    assert "patience" not in saved  # defaults are not options of the run
    monkeypatch.chdir(tmp_path)  # paths in the file are absolute: the rerun works from anywhere
    assert main(["train", "--config", str(first / "config.yaml"), "--out", str(second)]) == 0
    history = [pd.read_csv(run / "history.csv").drop(columns="elapsed_s") for run in (first, second)]
    assert len(history[0]) == 2
    pd.testing.assert_frame_equal(history[0], history[1], check_exact=True)
    for name in ("best.pt", "last.pt"):
        a, b = _weights(first / name), _weights(second / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert yaml.safe_load((second / "config.yaml").read_text()) == {**saved, "out": str(second)}


def test_command_line_flags_win_over_the_config_file(tmp_path):
    from scalepool.cli._main import build_parser

    config = tmp_path / "c.yaml"
    config.write_text("lr: 0.5\nbatch-size: 4\nno-progress: true\nbranch: long\n")
    args = build_parser().parse_args(
        ["train", "--data", "d.npz", "--out", "o", "--config", str(config), "--lr", "0.1"]
    )
    assert (args.lr, args.batch_size, args.no_progress, args.branch) == (0.1, 4, True, "long")


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--branch", "short", "--data", "d.npz", "--out", "o"],
        ["search", "settings", "--pred", "p.npz", "--storage", "s.db"],
        ["search", "models", "--data", "d.npz", "--storage", "s.db"],
        ["reproduce", "--out", "o"],
    ],
)
def test_unknown_config_keys_are_refused_naming_key_and_file(command, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("seed: 1\nlearning-rate: 0.1\n")
    with pytest.raises(SystemExit) as stop:
        main([*command, "--config", str(config)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"config file {config}: unknown key(s) 'learning-rate'" in err and "seed" in err


def test_missing_config_file_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--config", str(tmp_path / "nope.yaml")])
    assert f"config file not found: {tmp_path / 'nope.yaml'}" in capsys.readouterr().err


def test_search_config_repeats_the_search(tmp_path, capsys):
    from scalepool.scales import synthetic_cache

    pred = synthetic_cache(n_frames=10, n_atoms=60, n_ions=4, seed=0).save(tmp_path / "pred.npz")
    config = tmp_path / "search.yaml"
    config.write_text(f"pred: {pred}\nstorage: {tmp_path / 's.db'}\nn-trials: 6\nspace: pool\nseed: 2\n")
    assert main(["search", "settings", "--config", str(config), "--out", str(tmp_path / "out")]) == 0
    first = capsys.readouterr().out
    assert "study scales-pool: 6 finished trials (6 now" in first
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert saved["n-trials"] == "6" and saved["storage"] == str(tmp_path / "s.db")
    assert (
        main(["search", "settings", "--config", str(tmp_path / "out" / "config.yaml"), "--n-trials", "8"])
        == 0
    )
    assert "study scales-pool: 8 finished trials (2 now" in capsys.readouterr().out  # the same study, resumed
