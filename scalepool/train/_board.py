"""Optional TensorBoard scalars of a run (``--tensorboard``): the columns of ``history.csv``.

``RUN/tensorboard/`` receives one scalar per :data:`HISTORY_COLUMNS` column
(except ``epoch``, the step) per completed epoch; NaN values (no reference
energies) are left out.  Each session opens a new event file that first
hides the points of earlier files (``purge_step=1``) and then writes every
row of the history kept in the checkpoint, so what TensorBoard shows is
exactly ``history.csv``, also after a crash and resume.  Only rank 0 writes.
"""

from __future__ import annotations

import math
from pathlib import Path

from ._common import TrainError
from ._state import HISTORY_COLUMNS, kept_note, writing

#: Folder of the event files inside a run directory.
TENSORBOARD = "tensorboard"

#: The scalars written, tagged by their history.csv column names.
SCALARS = [column for column in HISTORY_COLUMNS if column != "epoch"]


def check_tensorboard() -> None:
    """Raise :class:`TrainError` when the ``tensorboard`` package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as err:
        raise TrainError(
            "--tensorboard needs the tensorboard package, which is not installed: "
            f"pip install 'scalepool[tensorboard]' (or pip install tensorboard); {err}"
        ) from err


class Board:
    """A SummaryWriter under ``run/tensorboard`` mirroring ``history.csv``.

    history : the rows already completed (dicts with :data:`HISTORY_COLUMNS` keys), written first
    """

    def __init__(self, run: Path, history: list[dict[str, float]]):
        check_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.path = run / TENSORBOARD
        with writing(self.path, kept_note(self.path)):
            # purge_step=1 hides every point of earlier event files (an earlier session, a replaced run)
            self.writer = SummaryWriter(str(self.path), purge_step=1)
            for row in history:
                self._add(row)
            self.writer.flush()

    def _add(self, row: dict[str, float]) -> None:
        for tag in SCALARS:
            value = float(row[tag])
            if math.isfinite(value):
                self.writer.add_scalar(tag, value, global_step=int(row["epoch"]))

    def add(self, row: dict[str, float]) -> None:
        """One completed epoch's history row, flushed to disk."""
        with writing(self.path, kept_note(self.path)):
            self._add(row)
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
