"""RefinementHistory: every round of a pool refinement, for tables and figures."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ..units import EV_TO_MEV


@dataclasses.dataclass
class RoundRecord:
    """One refinement round.

    Attributes
    ----------
    round : 0 for the initial pool
    pool : scales after the round (sorted)
    loss : oracle-routed mean loss per force component after the round (eV/Å
        for MAE, (eV/Å)^2 for MSE), on the refinement split: an upper bound
    usage : samples routed to each pool member (aligned with ``pool``)
    candidate_gains : ``[[scale, relative gain], ...]``, the gain of inserting
        each candidate alone into the pool the round started from
    inserted, pruned : scales added and removed in this round
    """

    round: int
    pool: list[float]
    loss: float
    usage: list[int]
    candidate_gains: list[list[float]] = dataclasses.field(default_factory=list)
    inserted: list[float] = dataclasses.field(default_factory=list)
    pruned: list[float] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class RefinementHistory:
    """Rounds of :func:`refine_pool` and the settings that produced them.

    ``bounds`` holds reference losses on the same split: ``"hard_anchors"``
    (oracle routing over {0, 1}) and, for linear generators,
    ``"continuous"`` (continuous oracle); all are upper bounds (they read the
    split's labels).
    """

    rounds: list[RoundRecord]
    loss: str
    split: str | None
    granularity: str
    tol: float
    stop_reason: str = ""
    bounds: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def losses(self) -> list[float]:
        return [r.loss for r in self.rounds]

    @property
    def final_pool(self):
        from ._pool import ScalePool

        return ScalePool(self.rounds[-1].pool)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RefinementHistory:
        data = dict(data)
        data["rounds"] = [RoundRecord(**r) for r in data["rounds"]]
        return cls(**data)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> RefinementHistory:
        return cls.from_dict(json.loads(Path(path).read_text()))

    # ------------------------------------------------------------------ figure
    def plot(self, ax=None, loss_ax: bool = True):
        """Pool members per round (marker area ~ usage share; inserted ones in
        colour) and, on a twin axis, the oracle-routed loss (upper bound).

        Returns the scale axis.
        """
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        for record in self.rounds:
            total = max(sum(record.usage), 1)
            for scale, used in zip(record.pool, record.usage, strict=True):
                new = scale in record.inserted
                ax.scatter(
                    record.round,
                    scale,
                    s=10 + 200 * used / total,
                    color="C3" if new else "C0",
                    alpha=0.8,
                    edgecolor="k",
                    linewidth=0.3,
                    zorder=3,
                )
            for scale in record.pruned:
                ax.scatter(record.round, scale, marker="x", color="0.5", zorder=2)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("refinement round")
        ax.set_ylabel("scale s")
        ax.set_ylim(-0.05, 1.05)
        if loss_ax:
            twin = ax.twinx()
            factor, unit = (EV_TO_MEV, "meV/Å") if self.loss == "mae" else (EV_TO_MEV**2, "(meV/Å)$^2$")
            rounds = [r.round for r in self.rounds]
            twin.plot(
                rounds,
                [factor * v for v in self.losses],
                "-o",
                color="C2",
                ms=3,
                label="pool oracle (upper bound)",
            )
            names = {"hard_anchors": "hard {0,1} oracle", "continuous": "continuous oracle"}
            for i, (name, value) in enumerate(sorted(self.bounds.items())):
                twin.axhline(
                    factor * value,
                    ls="--",
                    color=f"C{4 + i}",
                    lw=0.8,
                    label=f"{names.get(name, name)} (upper bound)",
                )
            twin.set_ylabel(f"{self.loss.upper()} on {self.split} ({unit})")
            twin.legend(loc="upper center", fontsize="x-small", framealpha=0.9)
        return ax
