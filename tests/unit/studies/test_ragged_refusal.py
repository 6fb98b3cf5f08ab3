"""The cache studies index one fixed composition: a ragged cache is refused, naming the file."""

import numpy as np
import pytest

from scalepool.data import PredictionCache, PredictionCacheError
from scalepool.studies import run_study


def test_cache_study_refuses_a_ragged_cache_naming_the_file(tmp_path):
    rng = np.random.default_rng(0)
    counts = np.array([4, 7, 3, 5, 6])
    total = int(counts.sum())
    cache = PredictionCache(
        forces_ref=rng.normal(size=(total, 3)),
        branches={"short": rng.normal(size=(total, 3)), "long": rng.normal(size=(total, 3))},
        numbers=rng.choice([1, 8, 11, 17], size=total),
        positions=rng.uniform(0, 9, size=(total, 3)),
        cell=np.zeros((len(counts), 3, 3)),
        split=np.array([0, 0, 1, 2, 2]),
        meta={"frame_index": [10, 11, 12, 13, 14]},
        atom_counts=counts,
    )
    path = cache.save(tmp_path / "ragged.npz")
    with pytest.raises(PredictionCacheError, match=r"ragged\.npz: a ragged prediction cache.*scalepool table"):
        run_study("oracle_table", path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
