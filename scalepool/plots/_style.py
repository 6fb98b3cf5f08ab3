"""The shared figure style and saving (PNG and PDF, non-interactive Agg backend)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from ..models import BRANCHES  # noqa: E402
from ..units import CONTACT_PAIR_DISTANCE  # noqa: E402

STYLE = Path(__file__).resolve().parent / "scalepool.mplstyle"
FORMATS = ("png", "pdf")
#: Colours of the recurring curves: anchors, mixtures, oracles (upper bounds), routers.
COLORS = {
    **{name: branch.color for name, branch in BRANCHES.items()},
    "mixture": "#009E73",
    "oracle": "0.35",
    "router": "#E69F00",
    "baseline": "0.6",
}
CLOSE_CONTACT_LABEL = f"ions in a contact pair (counter-ion ≤ {CONTACT_PAIR_DISTANCE:g} Å)"


@contextlib.contextmanager
def use_style():
    """Apply ``scalepool.mplstyle`` inside the block."""
    with plt.style.context(str(STYLE)):
        yield


def save(fig, out: str | os.PathLike, name: str) -> list[Path]:
    """Write ``<out>/<name>.png`` and ``.pdf`` and close the figure."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = out / f"{name}.{fmt}"
        fig.savefig(path, metadata={"CreationDate": None} if fmt == "pdf" else None)
        paths.append(path)
    plt.close(fig)
    return paths


def color(name: str, index: int = 0) -> str:
    """The colour of a branch or curve kind, else the style's ``index``-th colour."""
    return COLORS.get(name, f"C{index % 8}")
