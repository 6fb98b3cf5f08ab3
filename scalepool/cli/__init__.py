"""Command-line interface: ``scalepool <command> ...``."""

import os

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine
# spinning threads made a training step up to 9x slower.  Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ._main import main  # noqa: E402

__all__ = ["main"]
