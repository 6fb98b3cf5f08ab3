"""Settings of ``scalepool reproduce``: the quick demo and the full run.

Quick (``make demo``): a 2.5 nm box of 1,467 atoms, 72 frames 0.5 ps apart
after 5 ps of equilibration; short, long and MuSE branches of reduced width
(16 features, 2 interactions) on one thread each, two at a time, with time
budgets in proportion to their cost per step: long 6 min beside short 2 min
then MuSE 4 min; one prediction cache, every study with its quick settings, the
Hessian benchmark, every figure.  Measured from a fresh clone on a 2-core
machine: data 96 s, training 6 min (three branches, two processes),
prediction 34 s, Hessians 104 s, studies 19 s, figures 6 s: 620 s, plus 45 s
of installation.

Full: 400 frames 1 ps apart after 20 ps, the branches' default widths trained
up to 100 epochs (at most 30 min each) for three model seeds, MuSE included,
every study with its full settings.  Estimated on 2 CPU cores (not run in
full): data ~25 min, training ~2.5 h (nine runs, two at a time), prediction
~50 min, studies, Hessians and figures ~40 min: about 4.5 h.  ``--device cuda``
shortens training and prediction.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class BranchPlan:
    """One branch to train: its name, constructor overrides and training settings."""

    name: str
    options: dict[str, Any]
    epochs: int
    max_minutes: float
    lr: float = 2e-3
    batch_size: int = 1
    patience: int | None = 20


@dataclasses.dataclass(frozen=True)
class ReproduceConfig:
    """Everything that shapes a reproduction (recorded in every stage's key)."""

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

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_QUICK_WIDTH = {"n_features": 16, "n_interactions": 2, "n_rbf": 8}


def make_config(quick: bool = False, seed: int = 0) -> ReproduceConfig:
    """The quick or full settings (see the module docstring)."""
    if quick:
        return ReproduceConfig(
            quick=True,
            seed=seed,
            data={"n_frames": 72, "stride_ps": 0.5, "equilibration_ps": 5.0, "box_nm": 2.5, "molarity": 1.0},
            split_fractions=(0.7, 0.15, 0.15),
            branches=(
                BranchPlan("short", dict(_QUICK_WIDTH), epochs=60, max_minutes=2.0, patience=None),
                # budgets in proportion to the cost of a step (long ~2.5x, MuSE ~2x short's), so
                # the branches see about as many epochs; long trains beside short, then MuSE
                BranchPlan("long", dict(_QUICK_WIDTH), epochs=60, max_minutes=6.0, patience=None),
                BranchPlan(
                    "muse", {**_QUICK_WIDTH, "coarse_n_rbf": 8}, epochs=60, max_minutes=4.0, patience=None
                ),
            ),
            model_seeds=(seed,),
            muse=True,
        )
    return ReproduceConfig(
        quick=False,
        seed=seed,
        data={"n_frames": 400, "stride_ps": 1.0, "equilibration_ps": 20.0, "box_nm": 2.5, "molarity": 1.0},
        split_fractions=(0.8, 0.1, 0.1),
        branches=(
            BranchPlan("short", {}, epochs=100, max_minutes=30.0, lr=1e-3),
            BranchPlan("long", {}, epochs=100, max_minutes=30.0, lr=1e-3),
            BranchPlan("muse", {}, epochs=100, max_minutes=30.0, lr=1e-3),
        ),
        model_seeds=(seed, seed + 1, seed + 2),
        muse=True,
    )
