"""Scale pools and their loss-guided refinement.

A :class:`ScalePool` is an immutable sorted set of scales in [0, 1].
:func:`refine_pool` grows a pool from the anchors {0, 1}: each round proposes
candidates (midpoints of neighbours; optionally quantiles of the continuous
oracle's scales), inserts greedily the candidate with the largest reduction
of the oracle-routed loss on the refinement split while its relative gain
(loss reduction given the scales inserted before it, divided by the loss at
the start of the round) is at least ``tol``, then prunes non-anchor scales that no sample uses.  It stops
when a round inserts nothing, at ``max_size`` or after ``max_rounds``.

Design choices:

- the anchors 0 and 1 are never pruned: they are the branches themselves and
  the baseline every table compares against;
- a round may insert several scales (0.25 and 0.75 in one round), each only
  if its own marginal gain, given those inserted before it, passes ``tol``;
- pruning cannot raise the oracle loss (an unused scale is nobody's best), so
  the recorded loss never increases from one round to the next.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._files import write_json
from ._oracle import hard_route
from ._problem import RoutingProblem

ANCHORS = (0.0, 1.0)
PROPOSALS = ("midpoints", "quantiles")
_SAME = 1e-9  # scales closer than this are one scale


@dataclasses.dataclass(frozen=True)
class ScalePool:
    """An immutable, sorted set of scales in [0, 1]; methods return new pools."""

    scales: tuple[float, ...] = ANCHORS

    def __post_init__(self) -> None:
        values = np.sort(np.asarray([float(s) for s in self.scales], dtype=np.float64))
        if values.size == 0:
            raise ValueError("a scale pool needs at least one scale")
        if not np.isfinite(values).all() or values[0] < 0.0 or values[-1] > 1.0:
            raise ValueError(f"pool scales must lie in [0, 1], got {values.tolist()}")
        keep = np.concatenate([[True], np.diff(values) > _SAME])
        object.__setattr__(self, "scales", tuple(float(s) for s in values[keep]))

    def __len__(self) -> int:
        return len(self.scales)

    def __iter__(self):
        return iter(self.scales)

    def __contains__(self, scale: float) -> bool:
        return bool(np.any(np.abs(np.asarray(self.scales) - float(scale)) <= _SAME))

    def as_array(self) -> np.ndarray:
        """``(K,)`` float64."""
        return np.asarray(self.scales, dtype=np.float64)

    def with_scales(self, *scales: float) -> ScalePool:
        return ScalePool(self.scales + tuple(float(s) for s in scales))

    def without(self, *scales: float) -> ScalePool:
        drop = np.asarray(scales, dtype=np.float64)
        return ScalePool(tuple(s for s in self.scales if not np.any(np.abs(drop - s) <= _SAME)))

    def label(self) -> str:
        """``"{0, 0.125, 0.25, 1}"``."""
        return "{" + ", ".join(f"{s:.6g}" for s in self.scales) + "}"


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
    def final_pool(self) -> ScalePool:
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
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> RefinementHistory:
        return cls.from_dict(json.loads(Path(path).read_text()))


def propose(
    pool: ScalePool,
    proposals: tuple[str, ...] = ("midpoints",),
    oracle_scales: np.ndarray | None = None,
    min_spacing: float = 1.0 / 512,
    n_quantiles: int = 4,
) -> list[float]:
    """Candidate scales not yet in ``pool``.

    ``"midpoints"``: the midpoint of each pair of neighbours at least
    ``2 min_spacing`` apart.  ``"quantiles"``: the ``(j + 1/2) / n_quantiles``
    quantiles of ``oracle_scales: (n_samples,)`` (the continuous oracle's
    per-sample scales) strictly inside (0, 1), rounded to ``min_spacing``.
    """
    unknown = set(proposals) - set(PROPOSALS)
    if unknown:
        raise ValueError(f"unknown proposal kind(s) {sorted(unknown)}; choose from {PROPOSALS}")
    values = pool.as_array()
    candidates = []
    if "midpoints" in proposals:
        gaps = np.diff(values)
        candidates += (values[:-1] + gaps / 2)[gaps >= 2 * min_spacing].tolist()
    if "quantiles" in proposals and oracle_scales is not None:
        inside = oracle_scales[(oracle_scales > 0) & (oracle_scales < 1)]
        if inside.size:
            q = np.quantile(inside, (np.arange(n_quantiles) + 0.5) / n_quantiles)
            candidates += (np.round(q / min_spacing) * min_spacing).tolist()
    return sorted({c for c in candidates if 0.0 < c < 1.0 and c not in pool})


def refine_pool(
    source,
    split: str | None = "val",
    loss: str = "mae",
    tol: float = 1e-3,
    max_size: int = 16,
    proposals: tuple[str, ...] | str = ("midpoints",),
    granularity: str = "atom",
    initial: ScalePool | None = None,
    max_rounds: int = 12,
    min_spacing: float = 1.0 / 512,
    prune: bool = True,
) -> tuple[ScalePool, RefinementHistory]:
    """Grow a scale pool where the oracle-routed loss says it pays.

    Parameters
    ----------
    source : :class:`RoutingProblem`, or a PredictionCache / ScaleGenerator
        (then ``split``, ``granularity`` and ``loss`` build the problem)
    tol : minimum relative gain of an insertion (loss reduction / loss at the start of the round)
    max_size : the pool never grows beyond this many scales
    proposals : ``"midpoints"`` and/or ``"quantiles"`` (linear generators only)
    initial : starting pool, the anchors {0, 1} by default

    Returns
    -------
    (pool, history): the refined pool (a new object) and every round.  Losses
    are oracle-routed on the refinement split: upper bounds, not deployable.
    """
    problem = (
        source if isinstance(source, RoutingProblem) else RoutingProblem(source, split, granularity, loss)
    )
    proposals = (proposals,) if isinstance(proposals, str) else tuple(proposals)
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    pool = initial if initial is not None else ScalePool(ANCHORS)
    if len(pool) > max_size:
        raise ValueError(f"the initial pool has {len(pool)} scales, more than max_size={max_size}")
    protected = [s for s in ANCHORS if s in pool]
    oracle_scales = problem.continuous_oracle() if problem.a is not None else None
    bounds = {"hard_anchors": problem.hard_oracle(ANCHORS)[2]}
    if oracle_scales is not None:
        bounds["continuous"] = problem.routed_loss(oracle_scales)

    losses = problem.sample_losses(pool.as_array())  # (K, G)

    def record(round_index, gains=(), inserted=(), pruned=()):
        choice = hard_route(losses)
        usage = np.bincount(choice, minlength=len(pool)).tolist()
        best = losses.min(axis=0)
        return RoundRecord(
            round_index,
            list(pool.scales),
            problem.mean(best),
            usage,
            [[float(c), float(g)] for c, g in gains],
            [float(s) for s in inserted],
            [float(s) for s in pruned],
        )

    rounds = [record(0)]
    stop = f"max_rounds={max_rounds} reached"
    for round_index in range(1, max_rounds + 1):
        if len(pool) >= max_size:
            stop = f"pool reached max_size={max_size}"
            break
        candidates = propose(pool, proposals, oracle_scales, min_spacing)
        if not candidates:
            stop = "no candidate left (min_spacing)"
            break
        cand_losses = problem.sample_losses(candidates)  # (C, G)
        best = losses.min(axis=0)
        total = best.sum()
        solo = (total - np.minimum(best[None], cand_losses).sum(axis=1)) / max(total, 1e-300)
        inserted, remaining = [], list(range(len(candidates)))
        while remaining and len(pool) + len(inserted) < max_size:
            gains = best.sum() - np.minimum(best[None], cand_losses[remaining]).sum(axis=1)
            pick = int(np.argmax(gains))
            if gains[pick] <= 0 or gains[pick] / max(total, 1e-300) < tol:
                break
            index = remaining.pop(pick)
            inserted.append(candidates[index])
            best = np.minimum(best, cand_losses[index])
        gains_list = list(zip(candidates, solo, strict=True))
        if not inserted:
            rounds.append(record(round_index, gains_list))
            stop = f"best relative gain {solo.max():.3g} < tol={tol:g}"
            break
        new_pool = pool.with_scales(*inserted)
        losses = problem.sample_losses(new_pool.as_array())
        pool = new_pool
        pruned = []
        if prune:
            usage = np.bincount(hard_route(losses), minlength=len(pool))
            pruned = [s for s, u in zip(pool.scales, usage, strict=True) if u == 0 and s not in protected]
            if pruned:
                keep = [i for i, s in enumerate(pool.scales) if s not in pruned]
                pool, losses = pool.without(*pruned), losses[keep]
        rounds.append(record(round_index, gains_list, inserted, pruned))
    history = RefinementHistory(
        rounds, problem.loss, problem.split, problem.granularity, float(tol), stop, bounds
    )
    return pool, history
