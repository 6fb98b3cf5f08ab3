"""MuSE on PaiNN through the same cases as MACE and SO3krates: the physics suite with an active
hierarchy, untrained MuSE equal to its backbone, pooled vectors reaching the energy, and the
long branch on PaiNN (PaiNN alone: tests/unit/models/test_physics_suite.py)."""

from __future__ import annotations

import pytest
from backbone_suites import LongBranchSuite, MuSESuite, assert_files_load_in_a_fresh_interpreter

SMALL = dict(n_features=8, n_interactions=1)


class TestPaiNNMuSE(MuSESuite):
    NAME, OPTIONS = "painn", SMALL


class TestPaiNNLongBranch(LongBranchSuite):
    NAME, OPTIONS = "painn", SMALL


@pytest.mark.slow
def test_model_files_load_in_a_fresh_interpreter(tmp_path):
    assert_files_load_in_a_fresh_interpreter("painn", SMALL, tmp_path)
