"""Scale pools: refinement, its history, and differentiable scale updates."""

from __future__ import annotations

import dataclasses

import matplotlib
import numpy as np
import pytest
import torch

from scalepool.scales import (
    FunctionGenerator,
    RefinementHistory,
    RoutingProblem,
    ScalePool,
    SoftPoolRouter,
    fit_pool_scales,
    interpolate,
    propose,
    refine_pool,
    synthetic_cache,
)

matplotlib.use("Agg")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def four_scales():
    """References built from s in {0, .25, .5, 1} per atom, 0.002 eV/Å noise."""
    return synthetic_cache(n_frames=20, n_atoms=150, noise=0.002, rule="random", seed=0)


def test_pool_is_immutable_sorted_and_validated():
    pool = ScalePool((1.0, 0.5, 0.0, 0.5 + 1e-12))
    assert pool.scales == (0.0, 0.5, 1.0) and len(pool) == 3 and 0.5 in pool
    bigger = pool.with_scales(0.25)
    assert bigger.scales == (0.0, 0.25, 0.5, 1.0) and pool.scales == (0.0, 0.5, 1.0)
    assert bigger.without(0.5).scales == (0.0, 0.25, 1.0)
    assert bigger.label() == "{0, 0.25, 0.5, 1}"
    with pytest.raises(dataclasses.FrozenInstanceError):
        pool.scales = (0.0,)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got \[0.0, 1.5\]"):
        ScalePool((0.0, 1.5))


def test_midpoint_and_quantile_proposals():
    pool = ScalePool((0.0, 0.5, 1.0))
    assert propose(pool) == [0.25, 0.75]
    assert propose(ScalePool((0.0, 1 / 512, 1.0)), min_spacing=1 / 512) == [pytest.approx(0.5 + 1 / 1024)]
    oracle = np.r_[np.zeros(10), np.full(30, 0.3), np.ones(10)]
    assert propose(pool, ("quantiles",), oracle, n_quantiles=2) == [pytest.approx(0.30078125)]
    with pytest.raises(ValueError, match="unknown proposal kind"):
        propose(pool, ("random",))


def test_refinement_recovers_the_true_scales(four_scales):
    pool, history = refine_pool(four_scales, split="val", tol=0.01)
    assert pool.scales == (0.0, 0.25, 0.5, 1.0)
    assert [r.inserted for r in history.rounds[:3]] == [[], [0.5], [0.25]]
    assert history.rounds[2].usage == [
        int(u) for u in np.bincount(RoutingProblem(four_scales, "val").hard_oracle(pool)[0], minlength=4)
    ]
    assert "< tol=0.01" in history.stop_reason
    # every insertion paid at least tol; the last round's candidates did not
    for record in history.rounds:
        gains = dict(map(tuple, record.candidate_gains))
        assert all(gains[s] >= 0.01 for s in record.inserted)
    assert max(g for _, g in history.rounds[-1].candidate_gains) < 0.01


def test_pool_loss_is_monotone_and_between_the_oracles():
    noisy = synthetic_cache(n_frames=20, n_atoms=150, noise=0.03, rule="random", seed=3)
    pool, history = refine_pool(noisy, split="val", tol=1e-4, max_size=9)
    losses = np.array(history.losses)
    assert np.all(np.diff(losses) <= 1e-15)
    assert losses[0] == pytest.approx(history.bounds["hard_anchors"])
    assert np.all(losses >= history.bounds["continuous"] - 1e-15)
    assert np.all(losses <= history.bounds["hard_anchors"] + 1e-15)
    assert len(pool) <= 9 and "max_size=9" in history.stop_reason
    assert history.bounds["continuous"] < losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("true_s", [0.5, 0.3])
def test_one_global_scale_does_not_grow_the_pool(true_s):
    cache = synthetic_cache(n_frames=20, n_atoms=150, noise=0.002, true_scales=(true_s,), seed=1)
    pool, history = refine_pool(cache, tol=0.05)
    assert len(pool) == 3 and {0.0, 1.0} <= set(pool.scales)  # one scale besides the anchors
    assert abs(pool.scales[1] - true_s) <= 0.05
    if true_s == 0.3:  # 0.5 was inserted first, then made useless by 0.25 and pruned
        assert [r.pruned for r in history.rounds] == [[], [], [0.5], []]
    # optimum-quantile proposals land on the global scale directly (per frame,
    # where each sample's optimum is sharp; per atom they would fit the noise)
    pool, _ = refine_pool(cache, tol=0.05, proposals=("midpoints", "quantiles"), granularity="frame")
    assert len(pool) == 3 and pool.scales[1] == pytest.approx(true_s, abs=1 / 256)


def test_refinement_of_a_nonlinear_generator_scores_by_evaluation(four_scales):
    f0, f1 = (f.astype(float) for f in four_scales.anchor_forces())
    live = FunctionGenerator(four_scales, lambda s, frames: interpolate(f0[frames], f1[frames], s))
    pool, history = refine_pool(live, tol=0.01)
    reference, ref_history = refine_pool(four_scales, tol=0.01)
    assert pool == reference
    np.testing.assert_allclose(history.losses, ref_history.losses, rtol=1e-10)
    assert "continuous" not in history.bounds


def test_history_json_roundtrip_and_plot(four_scales, tmp_path):
    _, history = refine_pool(four_scales, tol=0.01)
    path = history.save(tmp_path / "h.json")
    loaded = RefinementHistory.load(path)
    assert loaded == history and loaded.final_pool.scales == (0.0, 0.25, 0.5, 1.0)
    from scalepool.plots import draw_refinement_history

    ax = draw_refinement_history(loaded)
    assert len(ax.collections) == sum(len(r.pool) + len(r.pruned) for r in history.rounds)
    assert "upper bound" in ax.figure.axes[1].get_legend().get_texts()[0].get_text()


def test_differentiable_updates_move_scales_to_the_true_ones():
    cache = synthetic_cache(
        n_frames=20, n_atoms=150, noise=0.002, true_scales=(0, 0.3, 0.7, 1), rule="random"
    )
    start = [0.0, 0.2, 0.6, 1.0]
    pool, trace = fit_pool_scales(cache, start, split="val", steps=150)
    truth = np.array([0.0, 0.3, 0.7, 1.0])
    assert len(pool) == 4
    np.testing.assert_allclose(pool.as_array(), truth, atol=0.02)
    assert np.abs(pool.as_array() - truth).sum() < 0.2 * np.abs(np.array(start) - truth).sum()
    problem = RoutingProblem(cache, "val")
    assert problem.hard_oracle(pool)[2] < 0.5 * problem.hard_oracle(start)[2]
    assert trace["temperature"][0] > trace["temperature"][-1]
    # frozen scales stay where they are
    frozen, trace = fit_pool_scales(problem, start, learnable=False)
    assert frozen.scales == tuple(start) and trace["loss"] == []


def test_soft_router_flag_merge_and_clamp():
    learnable = SoftPoolRouter([0.0, 0.4, 0.41, 1.0], learnable=True)
    frozen = SoftPoolRouter([0.0, 0.4, 1.0], learnable=False)
    assert [n for n, _ in learnable.named_parameters()] == ["free"]
    assert list(frozen.parameters()) == [] and "free" in dict(frozen.named_buffers())
    assert learnable.merge_close_(0.02) and learnable.pool().scales == (0.0, 0.405, 1.0)
    with torch.no_grad():
        learnable.free.fill_(1.3)
    learnable.clamp_()
    assert learnable.pool().scales == (0.0, 1.0)  # clamped onto the anchor: one scale
    assert learnable.merge_close_(0.01) and learnable.free.numel() == 0
    # soft routing weights sum to one and favour the lower loss
    losses = torch.tensor([[3.0, 0.0], [0.0, 3.0], [1.0, 1.0]], dtype=torch.float64)
    weights = frozen.weights(losses, torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(weights.sum(0), torch.ones(2, dtype=torch.float64))
    assert weights[1, 0] > 0.99 and weights[0, 1] > 0.99
