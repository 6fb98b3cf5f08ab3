"""Shared test setup: every test starts from the same seeds, on few threads; one tolerance
table keyed by dtype; ``tests/`` on the import path for the shared stand-ins (``standins.py``).

Layout: ``tests/unit/<package>/`` mirrors ``scalepool/<package>/``; ``tests/integration/``
holds the command-line and ``reproduce`` tests; ``tests/test_layers.py`` checks the
package floors."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # standins.py

from scalepool.testing import TOLERANCES  # noqa: E402  (the one table: round-off tolerances per dtype)


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
