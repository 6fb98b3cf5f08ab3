"""Settings of ``scalepool reproduce --testbeds``: the MuSE paper's graphene and folding benchmarks.

Two datasets, made by the functions the ``scalepool data graphene|peptide``
commands call (:func:`scalepool.data.generate_graphene`,
:func:`scalepool.data.generate_peptide`).  On each, every run uses one random
split (``split_mode="random"``, seeded by ``split_seed``, the same for every run
of the dataset, so the prediction caches of all seeds share it):

- ``short`` seeds 0, 1, 2 (seed ``k + 1`` is the null partner of seed ``k``),
- ``long`` seeds 0, 1 and ``muse`` seeds 0, 1,

every run for the same number of epochs (equal optimiser steps per branch).
The cache of seed ``k`` and generator ``g`` (``long`` or ``muse``) holds
``short_s<k>``, ``g_s<k>``, ``short_s<k+1>`` (the cache names the third
``short_2``: the null pair).

Quick (measured on the 2-core machine, lightly loaded, one thread per
process): graphene 48 frames on a 4x4 sheet with the profile at 0.5 Å steps
(100 xTB single points at ~1.6 s: ~2.7 min), chignolin 60 frames 0.5 ps apart
after 2 ps of equilibration per segment (~2.5 min; both side by side).  The
small run's tiny models (16 features, one interaction, 15 epochs) all blew up
in ML MD within tens of steps, so the quick models get two interactions and 24
epochs; a peptide epoch (48 steps, 6 validation frames, 138 atoms) costs ~3 s
(short, long) and ~4 s (MuSE), so the 14 runs take ~9 min on two processes
(the shared machine at load 10 ran an epoch 5-7x slower).  Prediction ~0.5 min;
the four scale tables (~20 s each) and the graphene study run beside the folding
study, whose MD takes 400 steps of 0.25 fs (0.1 ps, as 200 steps of 0.5 fs)
from each start, 0.02-0.05 s a model step (at most ~3 min when no trajectory
blows up): about 16 min in all on 2 free cores.

Full: the README's "Full-size cost" sizes (graphene 200 frames on the 5x5
sheet, profile step 0.1 Å; chignolin 600 frames 1 ps apart after 20 ps), the
branches' default widths, 20 epochs, 2,000 MD steps of 0.5 fs.  Not run; from
the measured rates (one thread, lightly loaded): data ~45 min (both side by
side), a default-width step on chignolin ~0.22 s (short, long) and ~0.36 s
(MuSE), so 9,600 steps a peptide run cost ~35 min (short, long) and ~60 min
(MuSE), graphene runs about a third of that: ~400 process-minutes of
training, ~3.3 h on two processes; prediction, tables, studies (folding MD:
2 x 2,000 steps of 6 models and the reference) and figures ~1 h: about 5 h on
2 free cores.  ``--device cuda`` is the practical way to run it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ._reproduce_config import BranchPlan

#: the two datasets, in the order their stages run
DATASETS = ("graphene", "peptide")
#: the scale generators paired with ``short`` (one table each per dataset)
GENERATORS = ("long", "muse")
#: figures of the testbed part
TESTBED_FIGURES = ("folding_md", "folding_errors", "graphene_profiles")


@dataclasses.dataclass(frozen=True)
class TestbedConfig:
    """Everything that shapes the testbed benchmarks (recorded in the stage keys).

    Attributes
    ----------
    quick : the quick sizes (``make demo-testbeds``) or the full ones
    seed : base seed of the data generators
    data : dataset name (``graphene``, ``peptide``) -> keyword arguments of its generator
    split_fractions : train, val, test fractions of the random split
    split_seed : seed of the random split, shared by every run of a dataset
    branches : ``short``, ``long``, ``muse`` plans (options, epochs, lr); seeds below
    model_seeds : seeds ``k`` of the real pairs (short, g) and their caches; ``short``
        also trains seed ``max(model_seeds) + 1``, the null partner of the last one
    study_options : ``folding`` / ``graphene_profiles`` -> option overrides
    table_options : keyword arguments of :func:`scalepool.scales.scale_table`
    """

    __test__ = False  # not a pytest class, despite its name

    quick: bool
    seed: int
    data: dict[str, dict[str, Any]]
    split_fractions: tuple[float, float, float]
    split_seed: int
    branches: tuple[BranchPlan, ...]
    model_seeds: tuple[int, ...] = (0, 1)
    study_options: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    table_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.data) - set(DATASETS)
        if unknown or not self.data:
            raise ValueError(f"testbed datasets must be among {DATASETS}, got {sorted(self.data)}")
        names = [b.name for b in self.branches]
        if sorted(names) != sorted(("short", *GENERATORS)) or len(set(names)) != len(names):
            raise ValueError(f"testbed branches must be one plan each of short, long, muse; got {names}")
        if not self.model_seeds or len(set(self.model_seeds)) != len(self.model_seeds):
            raise ValueError(f"model_seeds must be distinct and non-empty, got {self.model_seeds}")

    def plan(self, branch: str) -> BranchPlan:
        return next(b for b in self.branches if b.name == branch)

    def seeds(self, branch: str) -> tuple[int, ...]:
        """Training seeds of ``branch``: the model seeds, plus the null partner for ``short``."""
        if branch == "short":
            return (*self.model_seeds, max(self.model_seeds) + 1)
        return tuple(self.model_seeds)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_QUICK_WIDTH = {"n_features": 16, "n_interactions": 2, "n_rbf": 8}
_QUICK_EPOCHS = 24
#: the shared machine at load 10 ran a quick peptide epoch ~7x slower than at load 3.7 (23 s against
#: 3 s for short): a safety stop at 6x would fire there, so the quick runs stop at 15x
_SAFETY = {"safety_factor": 15.0}


def make_testbed_config(quick: bool = False, seed: int = 0) -> TestbedConfig:
    """The quick or full testbed settings (module docstring)."""
    if quick:
        # expected minutes: 24 epochs of 48 (peptide) training steps at the measured epoch costs
        return TestbedConfig(
            quick=True,
            seed=seed,
            data={
                "graphene": {"n_frames": 48, "sheet_size": 4, "profile_step": 0.5},
                "peptide": {"n_frames": 60, "stride_ps": 0.5, "equilibration_ps": 2.0},
            },
            split_fractions=(0.8, 0.1, 0.1),
            split_seed=12345,
            branches=(
                BranchPlan(
                    "short", dict(_QUICK_WIDTH), epochs=_QUICK_EPOCHS, expected_minutes=1.3, **_SAFETY
                ),
                BranchPlan("long", dict(_QUICK_WIDTH), epochs=_QUICK_EPOCHS, expected_minutes=1.3, **_SAFETY),
                BranchPlan(
                    "muse",
                    {**_QUICK_WIDTH, "coarse_n_rbf": 8},
                    epochs=_QUICK_EPOCHS,
                    expected_minutes=1.8,
                    **_SAFETY,
                ),
            ),
            study_options={"folding": {"md_steps": 400, "timestep_fs": 0.25, "record_every": 10}},
        )
    return TestbedConfig(
        quick=False,
        seed=seed,
        data={
            "graphene": {"n_frames": 200, "sheet_size": 5, "profile_step": 0.1},
            "peptide": {"n_frames": 600, "stride_ps": 1.0, "equilibration_ps": 20.0},
        },
        split_fractions=(0.8, 0.1, 0.1),
        split_seed=12345,
        branches=(
            BranchPlan("short", {}, epochs=20, expected_minutes=35.0, lr=1e-3),
            BranchPlan("long", {}, epochs=20, expected_minutes=35.0, lr=1e-3),
            BranchPlan("muse", {}, epochs=20, expected_minutes=60.0, lr=1e-3),
        ),
        study_options={"folding": {"md_steps": 2000, "timestep_fs": 0.5}},
    )
