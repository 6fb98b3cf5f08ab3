"""The backbones study: MuSE/long gains are paired per seed; the study reads one dataset (--data)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from scalepool.studies import STUDIES
from scalepool.studies._registry import build_parser


def test_gains_are_paired_per_seed():
    from scalepool.studies._backbone_study import gains

    rows = []
    for seed, (alone, muse, long) in enumerate([(100.0, 90.0, 110.0), (200.0, 150.0, 200.0)]):
        for variant, mae in (("alone", alone), ("muse", muse), ("long", long)):
            rows.append({"backbone": "mace", "variant": variant, "seed": seed, "overall_mae": mae})
    table = gains(pd.DataFrame(rows)).set_index("backbone")
    muse = np.array([10.0, 25.0])  # % of each seed's own 'alone' MAE
    long = np.array([-10.0, 0.0])
    assert table.loc["mace", "muse_gain_pct"] == pytest.approx(muse.mean())
    assert table.loc["mace", "muse_gain_pct_std"] == pytest.approx(muse.std(ddof=1))
    assert table.loc["mace", "long_gain_pct"] == pytest.approx(long.mean())
    assert table.loc["mace", "n_seeds"] == 2


def test_the_study_takes_a_dataset_not_caches():
    study = STUDIES["backbones"]
    assert study.inputs == "data" and study.default_seeds == (0, 1, 2)
    args = build_parser(study).parse_args(["--data", "x.npz", "--out", "o", "--backbones", "mace", "painn"])
    assert args.backbones == ["mace", "painn"] and not hasattr(args, "pred")
    with pytest.raises(SystemExit):
        build_parser(study).parse_args(["--pred", "x.npz", "--out", "o"])


# ------------------------------------------------- the scale layer (MuSE(X) as generator, null pair)
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def scale_study(tmp_path_factory):
    """The study at tiny settings on 16-atom periodic frames (H, O, Na, Cl; pair-model labels)."""
    from standins import make_frames

    from scalepool.data import FrameSet
    from scalepool.studies import run_study

    folder = tmp_path_factory.mktemp("backbones")
    data = make_frames(n_frames=20, n_atoms=16, seed=3).save(folder / "frames.npz")
    frames = FrameSet.load(data)
    out, _ = run_study(
        "backbones", data, folder / "study", seeds=SEEDS, quick=True, backbones=["painn"], steps=2,
        test_frames=0, router_steps=20,
    )  # fmt: skip
    return frames, out


def _brute_force_mae(frames, out, variant_seeds, test_idx):
    """Per-atom MAE (meV/Å, over the 3 components) of each saved model on the test frames,
    evaluated frame by frame in eval mode: ``(n_models, n_test * N)``."""
    from scalepool.models import AtomsBatch, load_model

    errors = []
    for variant, seed in variant_seeds:
        model = load_model(out / "models" / f"painn_{variant}_s{seed}.pt").eval()
        per_frame = []
        for index in test_idx:
            batch = AtomsBatch.from_frameset(frames, [int(index)])
            forces = model(batch)["forces"].detach().double().numpy()
            per_frame.append(np.abs(forces - frames.forces[index]).mean(axis=1))
        errors.append(1e3 * np.concatenate(per_frame))
    return np.array(errors)


def _row(table, generator, row, metric="overall_mae"):
    hit = table[(table.generator == generator) & (table.row == row) & (table.metric == metric)]
    assert len(hit) == 1, f"{generator}/{row}/{metric}: {len(hit)} rows"
    return hit.iloc[0]


@pytest.mark.slow
def test_scale_table_has_generators_and_null_rows(scale_study):
    from scalepool.scales import CONTINUOUS_ROUTER, HARD_ORACLE, HARD_ROUTER

    frames, out = scale_study
    for name in ("runs.csv", "summary.csv", "gains.csv", "scale_table.csv", "scale_verdicts.csv"):
        assert (out / name).exists(), name
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 3 * len(SEEDS) and list(runs.columns[:5]) == [
        "backbone", "variant", "seed", "steps", "overall_mae"
    ]  # fmt: skip
    assert sorted(p.name for p in (out / "models").iterdir()) == sorted(
        f"painn_{v}_s{s}.pt" for v in ("alone", "long", "muse") for s in SEEDS
    )
    assert sorted(p.name for p in (out / "caches").iterdir()) == ["painn_s0_s1.npz", "painn_s1_s2.npz"]
    table = pd.read_csv(out / "scale_table.csv", keep_default_na=False, na_values=[""])
    assert set(table.generator) == {"muse", "long", "null"}
    assert set(table.columns) >= {"backbone", "generator", "row", "metric", "unit", "mean", "std", "n"}
    assert (table.n == len(SEEDS) - 1).all()
    for generator in ("muse", "long", "null"):
        for row in ("best global s", HARD_ORACLE, HARD_ROUTER, CONTINUOUS_ROUTER):
            assert np.isfinite(_row(table, generator, row)["mean"])
    assert np.isfinite(_row(table, "muse", HARD_ORACLE, "excess_over_null")["mean"])
    verdicts = pd.read_csv(out / "scale_verdicts.csv")
    assert list(verdicts.generator) == ["muse", "long"]
    assert set(verdicts.beats_null_beyond_std) <= {"yes", "no"}


@pytest.mark.slow
def test_oracle_row_is_the_per_atom_minimum_over_the_anchors(scale_study, tolerances):
    """Hard oracle (atom granularity, MAE) = per-atom min over the two anchors, mean over atoms,
    recomputed here from the saved models; mean and std over the two seed pairs."""
    from scalepool.scales import HARD_ORACLE

    frames, out = scale_study
    tol = tolerances[torch.float32]
    test_idx = frames.split_indices((0.7, 0.15, 0.15))["test"]
    table = pd.read_csv(out / "scale_table.csv", keep_default_na=False, na_values=[""])
    pairs = list(zip(SEEDS[:-1], SEEDS[1:], strict=True))
    for generator, partner in (("muse", lambda k, k2: ("muse", k)), ("null", lambda k, k2: ("alone", k2))):
        oracle, alone = [], []
        for k, k2 in pairs:
            errors = _brute_force_mae(frames, out, [("alone", k), partner(k, k2)], test_idx)
            oracle.append(errors.min(axis=0).mean())
            alone.append(errors[0].mean())
        row = _row(table, generator, HARD_ORACLE)
        np.testing.assert_allclose(row["mean"], np.mean(oracle), rtol=tol["rtol"])
        # the std of two values is their difference: round-off of each mean, not of the difference
        np.testing.assert_allclose(row["std"], np.std(oracle, ddof=1), atol=tol["rtol"] * np.mean(oracle))
        single = _row(table, generator, "short only (s=0)")
        np.testing.assert_allclose(single["mean"], np.mean(alone), rtol=tol["rtol"])
        assert row["mean"] < single["mean"]  # two different predictors: the oracle gains


@pytest.mark.slow
def test_cache_holds_the_saved_models_predictions(scale_study):
    from scalepool.data import PredictionCache

    frames, out = scale_study
    cache = PredictionCache.load(out / "caches" / "painn_s1_s2.npz")
    assert cache.anchors == ("short", "muse") and set(cache.branches) == {"short", "muse", "short_2", "long"}
    assert cache.meta["seed_pair"] == [1, 2] and cache.meta["split_fractions"] == [0.7, 0.15, 0.15]
    test_idx = frames.split_indices((0.7, 0.15, 0.15))["test"]
    test = cache.select("test")
    np.testing.assert_array_equal(test.meta["frame_index"][-len(test_idx) :], test_idx)
    for name, (variant, seed) in {"short_2": ("alone", 2), "long": ("long", 1)}.items():
        errors = _brute_force_mae(frames, out, [(variant, seed)], test_idx)[0]
        cached = 1e3 * np.abs(test.branches[name].astype(float) - frames.forces[test_idx]).mean(axis=2)
        np.testing.assert_allclose(cached.ravel(), errors, rtol=1e-4, atol=1e-3)


def test_scale_layer_needs_two_seeds(tmp_path):
    from scalepool.studies._backbone_study import run

    frames = _tiny_frames()
    data = frames.save(tmp_path / "frames.npz")
    with pytest.raises(ValueError, match="at least two model seeds"):
        run(data, tmp_path / "out", seeds=(0,), backbones=("painn",), steps=1, size="small")
    assert not (tmp_path / "out" / "models").exists()


def _tiny_frames():
    from standins import make_frames

    return make_frames(n_frames=10, n_atoms=8, seed=3)
