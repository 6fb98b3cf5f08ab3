"""The prediction cache in the ragged layout: flat (T, 3) forces, per-frame counts, cells and pbc."""

import numpy as np
import pytest

from scalepool.data import PredictionCache, PredictionCacheError, RaggedLayoutError
from scalepool.scales import synthetic_cache

COUNTS = np.array([4, 7, 3, 5, 6])


def ragged_cache(seed=0, counts=COUNTS) -> PredictionCache:
    """Frames of different sizes and species, periodic (frames 1 and 3) beside open ones."""
    rng = np.random.default_rng(seed)
    total = int(counts.sum())
    cell = np.zeros((len(counts), 3, 3))
    cell[1] = np.diag([9.0, 10.0, 11.0])
    cell[3] = [[10.0, 0.0, 0.0], [2.0, 9.0, 0.0], [0.0, 1.0, 12.0]]
    return PredictionCache(
        forces_ref=rng.normal(size=(total, 3)),
        branches={"short": rng.normal(size=(total, 3)), "long": rng.normal(size=(total, 3))},
        numbers=rng.choice([1, 8, 11, 17], size=total),
        positions=rng.uniform(0, 9, size=(total, 3)),
        cell=cell,
        split=np.array([0, 0, 1, 2, 2]),
        meta={"frame_index": [10, 11, 12, 13, 14]},
        atom_counts=counts,
    )


def frame_rows(counts, frame):
    """Rows of frame ``frame`` in the flat arrays, from a running sum (independent of the cache)."""
    start = sum(int(c) for c in counts[:frame])
    return np.arange(start, start + int(counts[frame]))


def test_roundtrip_keeps_the_ragged_layout(tmp_path):
    cache = ragged_cache()
    path = cache.save(tmp_path / "ragged.npz")
    with np.load(path) as data:
        assert data["n_atoms"].tolist() == COUNTS.tolist()
        assert data["forces_short"].shape == (COUNTS.sum(), 3)
        np.testing.assert_array_equal(data["pbc"].all(axis=1), [False, True, False, True, False])
    back = PredictionCache.load(path)
    assert back.ragged and back.n_frames == 5 and back.n_atoms_total == COUNTS.sum()
    for name in ("short", "long"):
        np.testing.assert_array_equal(back.branches[name], cache.branches[name])
    np.testing.assert_array_equal(back.forces_ref, cache.forces_ref)
    np.testing.assert_array_equal(back.numbers, cache.numbers)
    np.testing.assert_array_equal(back.cell, cache.cell)


def test_accessors_match_a_loop_over_frames():
    cache = ragged_cache()
    np.testing.assert_array_equal(cache.counts, COUNTS)
    np.testing.assert_array_equal(cache.atom_frame, np.concatenate([[f] * c for f, c in enumerate(COUNTS)]))
    picked = [3, 0, 4]
    expected = np.concatenate([frame_rows(COUNTS, f) for f in picked])
    np.testing.assert_array_equal(cache.atom_index(picked), expected)
    f0, f1 = cache.anchor_forces(picked)
    np.testing.assert_array_equal(f0, cache.branches["short"][expected])
    np.testing.assert_array_equal(f1, cache.branches["long"][expected])
    for f in range(5):
        positions, numbers, cell = cache.frame_geometry(f)
        np.testing.assert_array_equal(positions, cache.positions[frame_rows(COUNTS, f)])
        np.testing.assert_array_equal(numbers, cache.numbers[frame_rows(COUNTS, f)])
        assert (cell is None) == (f not in (1, 3))

    test = cache.select("test")
    assert test.ragged and test.counts.tolist() == [5, 6] and test.meta["frame_index"] == [13, 14]
    rows = np.concatenate([frame_rows(COUNTS, 3), frame_rows(COUNTS, 4)])
    np.testing.assert_array_equal(test.forces_ref, cache.forces_ref[rows])
    np.testing.assert_array_equal(test.cell, cache.cell[[3, 4]])
    np.testing.assert_array_equal(test.pbc, cache.pbc[[3, 4]])
    blind = cache.select("val", labels=False)
    assert blind.ragged and blind.forces_ref is None and blind.counts.tolist() == [3]


def test_fixed_cache_is_unchanged_by_the_ragged_layout(tmp_path):
    cache = synthetic_cache(n_frames=6, n_atoms=12, n_ions=2)
    assert not cache.ragged and cache.n_atoms == 12
    path = cache.save(tmp_path / "fixed.npz")
    with np.load(path) as data:
        assert "n_atoms" not in data.files and "pbc" not in data.files
    back = PredictionCache.load(path)
    assert not back.ragged and back.forces_ref.shape == (6, 12, 3)
    # the uniform accessors read the fixed arrays in flat order
    np.testing.assert_array_equal(back.counts, np.full(6, 12))
    np.testing.assert_array_equal(back.numbers_flat, np.tile(back.numbers, 6))
    np.testing.assert_array_equal(back.take(back.forces_ref, [4, 1]), back.forces_ref[[4, 1]])
    np.testing.assert_array_equal(back.positions_flat[12:24], back.positions[1])


def test_bad_ragged_caches_name_the_array_and_frame():
    good = ragged_cache()
    fields = dict(forces_ref=good.forces_ref, branches=good.branches, numbers=good.numbers,
                  positions=good.positions, cell=good.cell, split=good.split)  # fmt: skip
    with pytest.raises(
        PredictionCacheError, match=r"ragged positions must have shape \(T, 3\) = \(30, 3\).* got \(25, 3\)"
    ):
        PredictionCache(**fields, atom_counts=COUNTS + 1)
    with pytest.raises(PredictionCacheError, match=r"frame 2 has 0 atoms"):
        PredictionCache(**fields, atom_counts=np.array([4, 7, 0, 8, 6]))
    pbc = good.pbc.copy()
    pbc[1, 2] = False
    with pytest.raises(PredictionCacheError, match=r"frame 1 is periodic along some axes only"):
        PredictionCache(**fields, atom_counts=COUNTS, pbc=pbc)
    bad = dict(fields, branches={"short": good.branches["short"][:-1], "long": good.branches["long"]})
    with pytest.raises(
        PredictionCacheError, match=r"branch 'short' forces have shape \(24, 3\), expected \(25, 3\)"
    ):
        PredictionCache(**bad, atom_counts=COUNTS)
    with pytest.raises(RaggedLayoutError, match=r"use counts"):
        _ = good.n_atoms
    with pytest.raises(PredictionCacheError, match=r"pbc applies to the ragged layout only"):
        PredictionCache(**fields, pbc=good.pbc)

