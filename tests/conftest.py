"""Shared test setup: every test starts from the same seeds; tolerances keyed by dtype."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

#: Absolute and relative tolerances for comparisons that should hold to
#: round-off (energies in eV, forces in eV/Å) in each floating-point dtype.
TOLERANCES = {
    torch.float32: {"atol": 2e-4, "rtol": 1e-4},
    torch.float64: {"atol": 1e-9, "rtol": 1e-9},
}


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed Python, numpy and torch before each test (tests do not depend on order)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    """The test machine has two cores shared with other jobs: do not oversubscribe."""
    previous = torch.get_num_threads()
    torch.set_num_threads(min(2, previous))
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tolerances():
    """``tolerances[dtype]`` -> ``{"atol": ..., "rtol": ...}``."""
    return TOLERANCES
