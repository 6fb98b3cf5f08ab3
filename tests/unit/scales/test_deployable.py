"""The deployable mixed model: end-to-end fit on its own forces, ``scalepool mix`` and ``scalepool evaluate``.

Two tiny real branches (PaiNN, 8 features, one interaction; short at 2.5 Å,
long at 3.5 Å with latent-charge Ewald) are trained for two epochs on 20
frames of 16 atoms labelled by the pair potential of ``test_train``, then cached with
``predict_cache``; everything else builds on those runs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from standins import PairModel

from scalepool.cli import main
from scalepool.data import FrameSet, PredictionCache
from scalepool.models import AtomsBatch, MixedForceModel, build_branch, load_model, save_model
from scalepool.scales import LeakageError, fit_mixed_model, fit_router
from scalepool.testing import random_frames
from scalepool.train import BEST, predict_cache, train

FRACTIONS = (0.6, 0.2, 0.2)  # 20 frames: train 0..11, val 12..15, test 16..19


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: the fit is reproducible per seed and thread count, and on a
    busy two-core machine two threads made the double backward ~20x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _frames(n_frames: int = 20, n_atoms: int = 16) -> FrameSet:
    """Random periodic frames (atoms >= 1.2 Å apart) labelled by a pair potential (forces ~1 eV/Å)."""
    frames = random_frames(n_atoms=n_atoms, box=7.0, n_frames=n_frames, seed=7, min_distance=1.2)
    truth = PairModel(seed=123, gain=3.0).double().eval()
    out = truth(AtomsBatch.from_frameset(frames, dtype=torch.float64))
    forces = out["forces"].detach().numpy().reshape(n_frames, n_atoms, 3)
    energy = out["energy"].detach().numpy() - 2.0
    return FrameSet(
        frames.positions, forces, frames.numbers, cell=frames.cell, energy=energy, meta={"test": "pairs"}
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("deployable")
    frames = _frames()
    data = frames.save(root / "data.npz")
    runs = []
    for name, options in (("short", dict(cutoff=2.5)), ("long", dict(cutoff=3.5, method="ewald"))):
        torch.manual_seed(0)
        model = build_branch(name, n_features=8, n_interactions=1, **options)
        train(
            model,
            frames,
            root / name,
            epochs=2,
            split_fractions=FRACTIONS,
            branch=name,
            data_path=data,
            progress=False,
        )
        runs.append(root / name)
    pred = predict_cache(runs, frames, root / "pred.npz", data_path=data, progress=False)
    return frames, data, runs, pred, root


def _mixed(runs) -> MixedForceModel:
    torch.manual_seed(0)
    return MixedForceModel(load_model(runs[0] / BEST), load_model(runs[1] / BEST), hidden=8, layers=1)


def _mae(model, frames: FrameSet, index) -> float:
    """meV/Å over force components, from ``model(batch)["forces"]`` frame by frame."""
    errors = []
    for i in index:
        batch = AtomsBatch.from_frameset(frames, [i])
        errors.append((model(batch)["forces"].detach() - batch.forces).abs().double().numpy())
    return float(np.concatenate(errors).mean() * 1e3)


def test_end_to_end_fit_lowers_own_train_force_mae(setup):
    frames, _, runs, _, _ = setup
    train_index = frames.split_indices(FRACTIONS)["train"]
    fits = []
    for _ in range(2):  # twice: the fit is deterministic for a seed
        model = _mixed(runs)
        before = {k: v.clone() for k, v in model.branch1.state_dict().items()}
        result = fit_mixed_model(
            model, frames, train_index, split_fractions=FRACTIONS, steps=24, frames_per_step=4, lr=1e-2,
            monitor_frames=None, seed=3,
        )  # fmt: skip
        fits.append((result, model))
    result, model = fits[0]
    assert result.steps == 24 and len(result.losses) == 24 and not result.kept_initial
    initial = result.train_mae_initial
    assert result.train_mae_final < initial - 0.2, (initial, result.train_mae_final)
    # the reported errors are those of the model's own forces on the train frames
    assert _mae(model.eval(), frames, train_index) == pytest.approx(result.train_mae_final, rel=1e-5)
    assert _mae(_mixed(runs).eval(), frames, train_index) == pytest.approx(initial, rel=1e-5)
    # branches frozen during the fit, trainable again afterwards; delta was fitted
    for k, v in model.branch1.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert all(p.requires_grad for p in model.branch0.parameters())
    assert float(model.delta_correction.detach().abs().sum()) > 0
    other = fits[1][1]
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert fits[1][0].losses == result.losses


def test_end_to_end_fit_refuses_val_and_test_frames(setup):
    frames, _, runs, pred, _ = setup
    model = _mixed(runs)
    blocks = frames.split_indices(FRACTIONS)
    for split in ("val", "test"):
        mixed_index = np.concatenate([blocks["train"][:2], blocks[split][:1]])
        with pytest.raises(LeakageError, match=split):
            fit_mixed_model(model, frames, mixed_index, split_fractions=FRACTIONS, steps=1)
    # a split the branches were not trained with moves the train block: frame 11 is val there
    with pytest.raises(LeakageError):
        fit_mixed_model(model, frames, blocks["train"], split_fractions=(0.5, 0.25, 0.25), steps=1)
    with pytest.raises(LeakageError):  # the cache warm start is train-only too
        fit_router(model, PredictionCache.load(pred))


@pytest.fixture(scope="module")
def mixed_path(setup):
    """``scalepool mix`` through the CLI entry point: the model file and its record."""
    _, _, runs, pred, root = setup
    out = root / "mixed.pt"
    argv = ["mix", "--pred", str(pred), "--run", str(runs[0]), "--run", str(runs[1]), "--out", str(out)]
    argv += ["--steps", "6", "--router-steps", "30", "--hidden", "8", "--layers", "1"]
    assert main(argv + ["--threads", "1", "--no-progress"]) == 0
    return out


def test_mix_writes_model_and_record(mixed_path, setup):
    frames, _, _, _, _ = setup
    model = load_model(mixed_path)
    assert isinstance(model, MixedForceModel)
    record = json.loads(mixed_path.with_name(mixed_path.name + ".json").read_text())
    assert record["split_fractions"] == list(FRACTIONS) and record["dataset_checksum"] == frames.checksum()
    assert record["fit"]["steps"] == 6 and record["pair"] == ["short", "long"]
    assert set(record["fit"]["monitor_index"]) <= set(range(12))  # train frames only


def test_evaluate_matches_model_forces_by_hand(mixed_path, setup, tmp_path, capsys):
    frames, data, _, _, _ = setup
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(mixed_path), "--data", str(data), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"overall_mae", "ion_mae", "n_frames", "split", "model", "dataset_checksum"} <= set(result)
    assert result["split"] == "test" and result["n_frames"] == 4 and result["frames"] == [16, 20]
    assert result["split_fractions"] == list(FRACTIONS) and result["dataset_checksum"] == frames.checksum()
    assert "test split" in capsys.readouterr().out
    model = load_model(mixed_path).eval()
    test = frames.split_indices(FRACTIONS)["test"]
    batch = AtomsBatch.from_frameset(frames, test)
    error = (model(batch)["forces"].detach().double() - batch.forces.double()).abs().numpy().reshape(4, 16, 3)
    ions = np.isin(frames.numbers, (11, 17))
    assert result["overall_mae"] == pytest.approx(error.mean() * 1e3, rel=1e-6)
    assert result["ion_mae"] == pytest.approx(error[:, ions].mean() * 1e3, rel=1e-6)


def test_evaluate_any_model_file_and_user_errors(mixed_path, setup, tmp_path, capsys):
    frames, data, runs, pred, _ = setup
    out = tmp_path / "branch.json"
    # a branch's best.pt: the split comes from its run's config.json
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(runs[1] / BEST),
                "--data",
                str(data),
                "--split",
                "val",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["split"] == "val" and result["n_frames"] == 4 and result["model_class"] == "LongRangeBranch"
    # no record beside the file: --split-fractions is required, then used
    bare = save_model(load_model(mixed_path), tmp_path / "bare.pt")
    capsys.readouterr()
    assert main(["evaluate", "--model", str(bare), "--data", str(data), "--json", str(out)]) == 2
    assert "--split-fractions" in capsys.readouterr().err
    argv = ["evaluate", "--model", str(bare), "--data", str(data), "--json", str(out)]
    assert main(argv + ["--split-fractions", "0.5", "0.25", "0.25"]) == 0
    assert json.loads(out.read_text())["frames"] == [15, 20]
    # anchors in the wrong order
    argv = [
        "mix",
        "--pred",
        str(pred),
        "--run",
        str(runs[1]),
        "--run",
        str(runs[0]),
        "--out",
        str(tmp_path / "x.pt"),
    ]
    assert main(argv) == 2
    assert "is not anchor 0" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


def test_saved_mixed_model_loads_in_a_fresh_process(mixed_path):
    code = (
        "import sys\n"
        "from scalepool.models import load_model\n"
        "model = load_model(sys.argv[1])\n"
        "assert type(model).__name__ == 'MixedForceModel', type(model)\n"
        "assert not {'scalepool.scales', 'scalepool.cli', 'scalepool.train'} & set(sys.modules), sorted(sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(mixed_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_model_files_without_delta_correction_still_load(setup, tmp_path):
    _, _, runs, _, _ = setup
    model = _mixed(runs)
    state = {k: v for k, v in model.state_dict().items() if k != "delta_correction"}
    path = tmp_path / "old.pt"
    torch.save({"format": "scalepool-model/1", "config": model.config, "state_dict": state}, path)
    loaded = load_model(path)
    assert float(loaded.delta_correction.detach().abs().sum()) == 0.0


def test_a_null_pair_mixes_two_runs_of_one_branch(setup, tmp_path):
    """The null pair's deployable model: two runs of the short branch, routed as if two scales."""
    import dataclasses as dc

    from scalepool.data import PredictionCache
    from scalepool.scales import mix_from_cache

    _, data, runs, pred, _ = setup
    cache = PredictionCache.load(pred)
    # a cache whose second short run is the long run's forces relabelled would be a lie: use a real copy
    twin = dc.replace(cache, branches={**cache.branches, "short_2": cache.branches["short"] + 0.01}, meta={
        **cache.meta, "runs": [*cache.meta["runs"], cache.meta["runs"][0]],
        "run_branches": {**cache.meta.get("run_branches", {}), "short_2": "short"},
    })  # fmt: skip
    path = twin.save(tmp_path / "twin.npz")
    model, record = mix_from_cache(
        path, pair=("short", "short_2"), steps=2, router_steps=5, hidden=4, layers=1
    )
    assert record["pair"] == ["short", "short_2"] and record["runs"][0] == record["runs"][1]
    with pytest.raises(ValueError, match=r"has no branch \['long_2'\]"):
        mix_from_cache(path, pair=("short", "long_2"), steps=1)


def test_deployable_study_rows_are_what_evaluate_gives(setup, tmp_path):
    """The study's mixed-model row equals 'scalepool evaluate' on the saved file, same split."""
    import pandas as pd

    from scalepool.studies import run_study

    _, data, _, pred, _ = setup
    out, _ = run_study("deployable", [pred], tmp_path / "dep", steps=2, router_steps=5, hidden=4)
    table = pd.read_csv(out / "deployable.csv", keep_default_na=False, na_values=[""])
    mixed = table[table.kind == "mixed"].iloc[0]
    saved = next(out.glob("mixed_*.pt"))
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(saved), "--data", str(data), "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert mixed.overall_mae == pytest.approx(result["overall_mae"], rel=1e-9)
    assert mixed.ion_mae == pytest.approx(result["ion_mae"], rel=1e-9)
    branches = table[(table.kind == "branch") & (table.pair == "real")]
    better = branches.overall_mae.min()
    assert mixed.gain_pct_over_better_branch == pytest.approx(100 * (better - mixed.overall_mae) / better)
