"""Physics property checks for force models, and small synthetic systems.

``assert_*`` helpers raise ``AssertionError`` with the violation and the
tolerance; model tests are short lists of them.  ``random_frames`` and
``water_box`` build seeded inputs without a physics engine.
"""

from ._properties import (
    ALL_PROPERTIES,
    CONTINUITY_STEP,
    TOLERANCES,
    assert_batch_consistency,
    assert_cutoff_continuity,
    assert_finite_difference_forces,
    assert_periodic_image_invariance,
    assert_permutation_equivariance,
    assert_rotation_equivariance,
    assert_translation_invariance,
    evaluate,
    frames_of,
    model_cutoffs,
    random_rotation,
    replace,
    tolerance,
)
from ._systems import WATER_DENSITY, random_frames, water_box


def __getattr__(name: str):
    # the pytest suite is loaded on demand: importing scalepool.testing needs no pytest
    if name == "ForceModelTests":
        from . import _suite

        return getattr(_suite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ALL_PROPERTIES",
    "CONTINUITY_STEP",
    "ForceModelTests",
    "TOLERANCES",
    "WATER_DENSITY",
    "assert_batch_consistency",
    "assert_cutoff_continuity",
    "assert_finite_difference_forces",
    "assert_periodic_image_invariance",
    "assert_permutation_equivariance",
    "assert_rotation_equivariance",
    "assert_translation_invariance",
    "evaluate",
    "frames_of",
    "model_cutoffs",
    "random_frames",
    "random_rotation",
    "replace",
    "tolerance",
    "water_box",
]
