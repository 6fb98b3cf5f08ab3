"""Learned routers: train-only fitting (no leakage), features, recovered gain."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from scalepool.data import PredictionCache
from scalepool.data import keys as K
from scalepool.scales import (
    ContinuousRouter,
    HardRouter,
    LeakageError,
    RoutingProblem,
    ScalePool,
    atom_features,
    synthetic_cache,
)

POOL = ScalePool((0.0, 0.25, 0.5, 1.0))
FAST = {"steps": 120, "hidden": 16}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache():
    """Best scale set by the nearest-ion distance: learnable from features."""
    return synthetic_cache(n_frames=25, n_atoms=150, noise=0.01, rule="distance", seed=0)


def _garbage_outside_train(cache: PredictionCache) -> PredictionCache:
    """Every val/test array (labels, branch forces, positions) replaced by garbage."""
    rng = np.random.default_rng(123)
    other = cache.split != K.SPLIT_CODES["train"]

    def spoil(array):
        array = np.array(array, dtype=np.float64, copy=True)
        array[other] = rng.normal(scale=1e3, size=array[other].shape)
        return array

    return dataclasses.replace(
        cache,
        forces_ref=spoil(cache.forces_ref),
        branches={k: spoil(v) for k, v in cache.branches.items()},
        positions=np.abs(spoil(cache.positions)),
        meta=dict(cache.meta),
    )


@pytest.mark.parametrize("router", [lambda: HardRouter(POOL, **FAST), lambda: ContinuousRouter(**FAST)])
def test_fitting_cannot_see_val_or_test_frames(cache, router):
    clean = router().fit(cache.select("train"))
    spoiled = router().fit(_garbage_outside_train(cache).select("train"))
    state, other = clean.state_dict(), spoiled.state_dict()
    assert state.keys() == other.keys() and len(state) > 2
    for name in state:
        torch.testing.assert_close(state[name], other[name], rtol=0, atol=0)
    # only a train view is accepted, and it must carry labels
    with pytest.raises(LeakageError, match=r"train split only; got frames of split\(s\) \['val', 'test'\]"):
        router().fit(cache)
    with pytest.raises(LeakageError, match=r"\['test'\]"):
        router().fit(cache.select("test"))
    # relabelling val/test frames as train does not get past the guard
    relabelled = cache.select("test")
    relabelled = dataclasses.replace(relabelled, split=np.zeros_like(relabelled.split), meta=dict(relabelled.meta))
    with pytest.raises(LeakageError, match="outside the train block"):
        router().fit(relabelled)
    with pytest.raises(ValueError, match="needs the train frames' forces_ref"):
        router().fit(cache.select("train", labels=False))
    with pytest.raises(RuntimeError, match="not fitted"):
        router().predict_scales(cache)


def test_predictions_ignore_labels(cache):
    router = HardRouter(POOL, **FAST).fit(cache.select("train"))
    with_labels = router.predict_scales(cache.select("test"))
    without = router.predict_scales(cache.select("test", labels=False))
    np.testing.assert_array_equal(with_labels, without)
    assert set(np.unique(without)) <= set(POOL.scales)
    atom_scales = router.predict_atom_scales(cache.select("test", labels=False))
    assert atom_scales.shape == (cache.frames("test").size, cache.n_atoms)


def test_features_are_label_free_and_named(cache):
    features, names = atom_features(cache.select("test", labels=False))
    assert features.shape == (cache.frames("test").size, cache.n_atoms, len(names))
    assert names[:4] == ["nearest_ion_A", "ions_within_3.5A", "ions_within_5A", "ions_within_7A"]
    assert names[-1] == "branch_disagreement_eV_A" and "species_11" in names
    counts = features[..., 1:4]
    assert np.all(np.diff(counts, axis=-1) >= 0)  # more ions within larger radii
    assert np.all(features[..., 0] <= 12.0) and np.all(features[..., 4:-1].sum(-1) == 1)
    f0, f1 = cache.anchor_forces()
    test = cache.frames("test")
    np.testing.assert_allclose(features[..., -1], np.linalg.norm(f1[test] - f0[test].astype(float), axis=-1))


def test_routers_recover_most_of_the_oracle_gain(cache):
    problem = RoutingProblem(cache, "test")
    baseline = min(problem.routed_loss(np.full(problem.n_samples, s)) for s in (0.0, 1.0))
    oracle = problem.routed_loss(problem.continuous_oracle())
    test_inputs = cache.select("test", labels=False)
    recovered = {}
    for name, router in {
        "hard": HardRouter(POOL, steps=300),
        "continuous": ContinuousRouter(steps=300),
    }.items():
        router.fit(cache.select("train"))
        loss = problem.routed_loss(router.predict_scales(test_inputs))
        recovered[name] = (baseline - loss) / (baseline - oracle)
        assert router.train_losses[-1] < router.train_losses[0]
    print(f"fraction of the continuous-oracle gain recovered on test: {recovered}")
    assert recovered["hard"] > 0.7 and recovered["continuous"] > 0.6


@pytest.mark.parametrize("granularity", ["frame", "ion"])
def test_routers_work_at_coarser_granularity(granularity):
    cache = synthetic_cache(n_frames=20, n_atoms=90, granularity=granularity, rule="distance", seed=2)
    router = ContinuousRouter(granularity=granularity, **FAST).fit(cache.select("train"))
    scales = router.predict_scales(cache.select("test", labels=False))
    n_samples = cache.frames("test").size * (1 if granularity == "frame" else 6)
    assert scales.shape == (n_samples,) and np.all((scales >= 0) & (scales <= 1))
