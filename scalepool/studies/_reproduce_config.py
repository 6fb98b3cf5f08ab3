"""Settings of ``scalepool reproduce``: the quick demo and the full run.

Every training budget is a number of epochs, so the optimiser steps of a run
(epochs x training frames / batch size) are the same on any machine, and the
same seed on one thread gives the same model bit for bit.  A wall-clock limit
remains only as a safety stop (``safety_factor`` x ``expected_minutes`` per
session; 6 by default, since a shared machine ran 4x slower): when it fires, the run is marked *incomplete* in the report and a
rerun of ``reproduce`` continues it to its epochs.

Every model seed ``k`` trains the real pair (``short`` and ``long``, the
anchors s = 0 and s = 1 of the cutoff generator) and a null pair: ``short_2``,
a second run of the short branch with training seed ``k + 1000`` at the same
budget, so that routing between two runs of one scale measures what the scale
layer gains from seed noise alone.  The prediction cache of seed ``k`` holds
``short``, ``long``, ``short_2`` (and ``muse``), in that order.  Every branch
of a configuration trains the same number of epochs, so the branches get equal
compute counted in optimiser steps (their seconds differ and are in the
report's training table).

Quick (``make demo``): a 2.5 nm box of 1,467 atoms, 72 frames 0.5 ps apart
after 5 ps of equilibration, split 0.7/0.15/0.15 (50 training frames: 50 steps
an epoch at batch 1, 11 validation frames); branches of 16 features, one
interaction (so the receptive field is the cutoff: 4.5 Å short, 6 Å long) and
8 radial functions; 6 epochs (300 optimiser steps) for every run; model seeds
0, 1, 2 with short, long and short_2 each, and MuSE for seed 0 only (the
generator-swap study and the Hessian benchmark read it): nine cutoff runs and
one MuSE run, two processes of one thread each, longest first.

Measured on the 2-core machine, one thread per process, in CPU seconds (equal
to wall seconds on 2 free cores; the machine was shared while measuring and
ran 2-3x slower in wall time): one epoch (50 steps + 11 validation frames)
costs short 6.8 s, long 17.0 s, MuSE 20.4 s (0.13, 0.33, 0.40 s a step); with
two interactions 12.0 s, 34.1 s and 31.5 s, which would leave time for only
three epochs.

One quick run measured stage by stage (data reused; CPU seconds, wall on the
shared machine in brackets): training ~700 s of CPU in two processes (765 s:
the machine ran at 2-4x; the safety stop fired for long and MuSE of seed 0,
and a rerun finished them), prediction 60 s in two processes (41 s), Hessians
82 s (85 s), studies 63 s (65 s), figures 9 s (9 s).  On 2 free cores:
data ~100 s, training ~350 s (longest first, ``expected_minutes`` of each
plan), prediction ~35 s, Hessians ~85 s, studies ~65 s, figures ~10 s: ~11
min, ~11.5 min with the ~45 s installation, inside the 15 minutes of ``make
demo``.  The report's training table records every run's epochs, steps and
seconds, and its timings table every stage's seconds.

Full: 400 frames 1 ps apart after 20 ps, split 0.8/0.1/0.1 (320 training
frames); the branches' default widths (64 features, 3 interactions, 16 radial
functions), 20 epochs (6,400 optimiser steps) for every run, no early stopping
(every run takes its whole budget); model seeds 0, 1, 2 with short, long,
short_2 and MuSE each.  Estimated on 2 CPU cores (not run in full) from the
measured CPU seconds of a default-width step on the 1,467-atom frame (short
0.80 s, long 2.30 s, MuSE 1.59 s; a validation frame 0.30, 0.70, 0.49 s): an
epoch costs short ~270 s, long ~760 s, MuSE ~530 s; data ~25 min, training
3 x 20 x (2 x 270 + 760 + 530) s on two processes ~15 h, prediction ~20 min,
studies, Hessians and figures ~40 min: about 16 h.  ``--device cuda`` (or more
cores with ``--jobs``) is the practical way to run it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: training seed offset of the null pair's second run (``short_2``): model seed + 1000
NULL_SEED_OFFSET = 1000


@dataclasses.dataclass(frozen=True)
class BranchPlan:
    """One training run of every model seed: its branch, constructor overrides and settings.

    Attributes
    ----------
    name : catalogue branch (``short``, ``long``, ``muse``), written to the
        run's ``config.json``; the prediction cache names a branch's second run
        ``<name>_2``
    options : constructor overrides (width, cutoffs)
    epochs : the budget, in epochs (steps = epochs x training frames / batch size)
    expected_minutes : measured training time of the run on the reference
        machine (2 cores, one thread per process); orders the runs (longest
        first) and sets the safety stop.  Not part of the stage key.
    safety_factor : the safety stop fires after ``safety_factor x expected_minutes``
        of one session (``None`` expected: no stop); the run is then incomplete
    seed_offset : training seed = model seed + ``seed_offset`` (the null pair's
        second run: :data:`NULL_SEED_OFFSET`)
    run : run folder and stage name (default ``name``), e.g. ``short_2``
    first_seed_only : train it for the first model seed only (MuSE in the quick run)
    """

    name: str
    options: dict[str, Any]
    epochs: int
    expected_minutes: float | None = None
    lr: float = 2e-3
    batch_size: int = 1
    patience: int | None = None
    seed_offset: int = 0
    run: str | None = None
    first_seed_only: bool = False
    safety_factor: float = 6.0

    @property
    def run_name(self) -> str:
        return self.run or self.name

    @property
    def safety_minutes(self) -> float | None:
        """Wall-clock minutes of one session after which training stops, incomplete."""
        return None if self.expected_minutes is None else self.safety_factor * self.expected_minutes

    def key(self) -> dict[str, Any]:
        """What shapes the trained model (the stage key): everything but the safety stop."""
        fields = dataclasses.asdict(self)
        for name in ("expected_minutes", "safety_factor"):
            fields.pop(name)
        return fields

    def null_twin(self, offset: int = NULL_SEED_OFFSET) -> BranchPlan:
        """The null pair's second run of this branch: same budget, another training seed."""
        return dataclasses.replace(self, seed_offset=self.seed_offset + offset, run=f"{self.name}_2")


@dataclasses.dataclass(frozen=True)
class ReproduceConfig:
    """Everything that shapes a reproduction (recorded in every stage's key).

    ``branches`` are the runs of every model seed in cache order: the first two
    are the anchors (s = 0 and s = 1), then the null pair's second run, then
    the rest.  A branch's repeated runs must be named ``<name>_2``, ``<name>_3``...
    (the names the prediction cache gives them).
    """

    quick: bool
    seed: int
    data: dict[str, Any]
    split_fractions: tuple[float, float, float]
    branches: tuple[BranchPlan, ...]
    model_seeds: tuple[int, ...]
    muse: bool
    #: study name -> option overrides on top of the study's quick or full defaults
    study_options: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    #: figures to draw (``None``: every figure whose results exist)
    figures: tuple[str, ...] | None = None
    #: options of the Hessian benchmark on the first seed's runs (``None``: not run)
    hessian: dict[str, Any] | None = dataclasses.field(default_factory=lambda: {"n_atoms": 30})

    def __post_init__(self) -> None:
        if not self.model_seeds:
            raise ValueError("model_seeds is empty")
        for first in (True, False):
            self._check_names(self.runs(first))

    @staticmethod
    def _check_names(plans: list[BranchPlan]) -> None:
        seen: dict[str, int] = {}
        for plan in plans:
            seen[plan.name] = seen.get(plan.name, 0) + 1
            want = plan.name if seen[plan.name] == 1 else f"{plan.name}_{seen[plan.name]}"
            if plan.run_name != want:
                raise ValueError(
                    f"run {plan.run_name!r} is run {seen[plan.name]} of branch {plan.name!r}: "
                    f"name it {want!r}, the name of its predictions in the cache"
                )

    def runs(self, first_seed: bool) -> list[BranchPlan]:
        """The runs of the first model seed, or of every other one, in cache order."""
        return [b for b in self.branches if first_seed or not b.first_seed_only]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_QUICK_WIDTH = {"n_features": 16, "n_interactions": 1, "n_rbf": 8}
_QUICK_EPOCHS = 6


def make_config(quick: bool = False, seed: int = 0) -> ReproduceConfig:
    """The quick or full settings (see the module docstring)."""
    if quick:
        short = BranchPlan("short", dict(_QUICK_WIDTH), epochs=_QUICK_EPOCHS, expected_minutes=0.7)
        return ReproduceConfig(
            quick=True,
            seed=seed,
            data={"n_frames": 72, "stride_ps": 0.5, "equilibration_ps": 5.0, "box_nm": 2.5, "molarity": 1.0},
            split_fractions=(0.7, 0.15, 0.15),
            branches=(
                short,
                BranchPlan("long", dict(_QUICK_WIDTH), epochs=_QUICK_EPOCHS, expected_minutes=1.7),
                short.null_twin(),
                BranchPlan(
                    "muse",
                    {**_QUICK_WIDTH, "coarse_n_rbf": 8},
                    epochs=_QUICK_EPOCHS,
                    expected_minutes=2.0,
                    first_seed_only=True,
                ),
            ),
            model_seeds=(seed, seed + 1, seed + 2),
            muse=True,
        )
    # expected minutes on 2 cores: 20 epochs of the per-epoch costs in the module docstring
    short = BranchPlan("short", {}, epochs=20, expected_minutes=90.0, lr=1e-3)
    return ReproduceConfig(
        quick=False,
        seed=seed,
        data={"n_frames": 400, "stride_ps": 1.0, "equilibration_ps": 20.0, "box_nm": 2.5, "molarity": 1.0},
        split_fractions=(0.8, 0.1, 0.1),
        branches=(
            short,
            BranchPlan("long", {}, epochs=20, expected_minutes=255.0, lr=1e-3),
            short.null_twin(),
            BranchPlan("muse", {}, epochs=20, expected_minutes=176.0, lr=1e-3),
        ),
        model_seeds=(seed, seed + 1, seed + 2),
        muse=True,
    )
