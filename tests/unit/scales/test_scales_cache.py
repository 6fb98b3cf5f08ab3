"""Prediction cache contract, generators and atom-ion geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scalepool.data import PredictionCache, PredictionCacheError, nearest_ion_distance_frames
from scalepool.data import keys as K
from scalepool.scales import (
    CachedGenerator,
    FunctionGenerator,
    RoutingProblem,
    interpolate,
    nearest_ion,
    synthetic_cache,
)


@pytest.fixture(scope="module")
def cache():
    return synthetic_cache(n_frames=10, n_atoms=45, n_ions=4, seed=2)


def _arrays(cache):
    return cache.to_arrays()


def _write(path, arrays):
    np.savez(path, **arrays)
    return path


def test_roundtrip_keeps_arrays_and_meta(cache, tmp_path):
    path = cache.save(tmp_path / "pred.npz")
    with np.load(path) as data:
        assert set(data.files) == {
            "forces_ref",
            "forces_short",
            "forces_long",
            "numbers",
            "cell",
            "positions",
            "split",
            "meta",
        }
        meta = json.loads(str(data["meta"]))
    assert meta["branches"] == ["short", "long"] and meta["anchors"] == {"0": "short", "1": "long"}
    loaded = PredictionCache.load(path)
    np.testing.assert_array_equal(loaded.forces_ref, cache.forces_ref)
    np.testing.assert_array_equal(loaded.branches["long"], cache.branches["long"])
    np.testing.assert_array_equal(loaded.split, cache.split)
    assert loaded.anchors == ("short", "long")
    assert loaded.meta["seed"] == 2 and "branches" not in loaded.meta


def test_extra_branches_and_meta_are_carried(cache, tmp_path):
    arrays = _arrays(cache)
    arrays["forces_mid"] = arrays["forces_short"]
    meta = {"branches": ["long", "mid", "short"], "anchors": {"0": "mid", "1": "long"}, "runs": ["a", "b"]}
    arrays["meta"] = np.array(json.dumps(meta))
    loaded = PredictionCache.load(_write(tmp_path / "x.npz", arrays))
    assert loaded.anchors == ("mid", "long") and loaded.meta["runs"] == ["a", "b"]
    np.testing.assert_array_equal(loaded.anchor_forces()[0], cache.branches["short"])


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda a: a.pop("split"), r"lacks required array\(s\) \['split'\]"),
        (
            lambda a: a.update(meta=np.array('{"branches": ["short", "long"]}')),
            "with 'branches' and 'anchors'",
        ),
        (lambda a: a.update(meta=np.array("not json")), "meta is not valid JSON"),
        (
            lambda a: a.update(
                meta=np.array('{"branches": ["short"], "anchors": {"0": "short", "1": "long"}}')
            ),
            r"meta lists branches \['short'\] but the file holds forces for \['long', 'short'\]",
        ),
        (
            lambda a: a.update(meta=np.array('{"branches": ["short", "long"], "anchors": {"0": "short"}}')),
            "must map '0' and '1'",
        ),
        (
            lambda a: a.update(
                meta=np.array('{"branches": ["short", "long"], "anchors": {"0": "short", "1": "medium"}}')
            ),
            r"anchors \('short', 'medium'\) must name two branches",
        ),
        (
            lambda a: a["forces_ref"].__setitem__((1, 2, 0), np.nan),
            r"forces_ref holds 1 non-finite value\(s\); first at index \[1, 2, 0\]",
        ),
        (
            lambda a: a.update(forces_long=a["forces_long"][:, :-1]),
            r"branch 'long' forces have shape \(10, 44, 3\), expected \(10, 45, 3\)",
        ),
        (lambda a: a.update(split=np.full(10, 5)), r"split holds unknown code\(s\) \[5\]"),
        (lambda a: a.update(split=np.zeros(9, int)), r"split must be integers of shape \(10,\)"),
    ],
)
def test_load_errors_say_what_is_wrong(cache, tmp_path, edit, message):
    arrays = {k: np.array(v, copy=True) for k, v in _arrays(cache).items()}
    edit(arrays)
    path = _write(tmp_path / "bad.npz", arrays)
    with pytest.raises(PredictionCacheError, match=message) as info:
        PredictionCache.load(path)
    if "lacks" not in message and "JSON" not in message and "meta" not in message:
        assert str(path) in str(info.value)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="prediction cache not found"):
        PredictionCache.load(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(PredictionCacheError, match="not a readable .npz"):
        PredictionCache.load(tmp_path / "junk.npz")


def test_views_select_frames_and_strip_labels(cache):
    train = cache.select("train")
    assert set(train.split.tolist()) == {K.SPLIT_CODES["train"]}
    np.testing.assert_array_equal(train.meta["frame_index"], cache.frames("train"))
    test = cache.select("test", labels=False)
    assert test.forces_ref is None and not test.has_labels
    np.testing.assert_array_equal(test.positions, cache.positions[cache.frames("test")])
    with pytest.raises(PredictionCacheError, match="cannot be saved"):
        test.to_arrays()
    with pytest.raises(ValueError, match="split must be one of"):
        cache.frames("holdout")
    with pytest.raises(PredictionCacheError, match="no frames in split 'val'"):
        train.select("val")


def test_function_generator_is_the_live_model_hook(cache):
    f0, f1 = (f.astype(float) for f in cache.anchor_forces())
    calls = []

    def forces_fn(scales, frames):
        calls.append((scales.shape, frames.tolist()))
        return interpolate(f0[frames], f1[frames], scales)

    live = FunctionGenerator(cache, forces_fn)
    cached = CachedGenerator(cache)
    frames = cache.frames("val")
    np.testing.assert_allclose(live.forces_at(0.3, frames), cached.forces_at(0.3, frames))
    assert calls[-1] == ((frames.size, cache.n_atoms), frames.tolist())
    s = np.random.default_rng(0).uniform(size=(frames.size, cache.n_atoms))
    np.testing.assert_allclose(live.forces_at(s, frames), cached.forces_at(s, frames))
    # the non-linear path scores scales like the linear one, without closed forms
    slow, fast = RoutingProblem(live, "val"), RoutingProblem(cached, "val")
    np.testing.assert_allclose(slow.sample_losses([0, 0.4, 1]), fast.sample_losses([0, 0.4, 1]), rtol=1e-10)
    with pytest.raises(NotImplementedError, match="needs a linear generator"):
        slow.continuous_oracle()
    bad = FunctionGenerator(cache, lambda s, f: np.zeros((1, 1, 3)))
    with pytest.raises(ValueError, match="forces_fn returned shape"):
        bad.forces_at(0.5)


def test_geometry_agrees_with_the_data_descriptors():
    """Dense scale-layer distances equal scalepool.data's certified minimum image."""
    cache = synthetic_cache(n_frames=3, n_atoms=120, n_ions=6, seed=4)
    ours = nearest_ion(cache.positions, cache.numbers, cache.cell)[1]
    np.testing.assert_allclose(
        ours, nearest_ion_distance_frames(cache.positions, cache.numbers, cache.cell), atol=1e-10
    )
    skewed = np.broadcast_to(np.array([[22.0, 0, 0], [5.0, 21.0, 0], [-4.0, 3.0, 23.0]]), (3, 3, 3))
    ours = nearest_ion(cache.positions, cache.numbers, skewed)[1]
    np.testing.assert_allclose(
        ours, nearest_ion_distance_frames(cache.positions, cache.numbers, skewed), atol=1e-10
    )
    # an ion's nearest ion is another ion, or itself for routing domains
    index, distance = nearest_ion(cache.positions, cache.numbers, cache.cell, exclude_self=False)
    np.testing.assert_array_equal(index[:, :6], np.broadcast_to(np.arange(6), (3, 6)))
    assert np.all(distance[:, :6] == 0)
