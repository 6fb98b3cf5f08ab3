"""The backbones study: MuSE/long gains are paired per seed; the study reads one dataset (--data)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

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
