"""``ForceModelTests``: the physics suite of a force model as one pytest class.

A backbone's or branch's tests are one subclass with a ``model`` fixture
(float64, small)::

    class TestPaiNN(ForceModelTests):
        @pytest.fixture
        def model(self):
            return PaiNN(n_features=8, n_interactions=1).double()

Every check compares the model with itself under an exact symmetry or with
finite differences of its own energy, at float64 round-off tolerances
(:data:`~scalepool.testing.TOLERANCES`); each ``assert_*`` helper is tested to
fail on a broken model (``tests/unit/models/test_models.py``).  This module imports pytest,
so it is loaded only when a test asks for it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from .. import units
from ..md import model_hessian
from ..models import AtomsBatch
from ._properties import (
    CONTINUITY_STEP,
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
)
from ._systems import random_frames


class ForceModelTests:
    """Mixin of physics tests; a subclass provides a float64 ``model`` fixture."""

    @pytest.fixture
    def batch(self) -> AtomsBatch:
        """Two frames of 8 atoms (O, H, Na, Cl) in a sheared 7 Å periodic box, float64."""
        return AtomsBatch.from_frameset(
            random_frames(n_atoms=8, box=7.0, n_frames=2, seed=3), dtype=torch.float64
        )

    def test_rotation_equivariance(self, model, batch):
        assert_rotation_equivariance(model, batch)

    def test_translation_invariance(self, model, batch):
        assert_translation_invariance(model, batch)

    def test_permutation_equivariance(self, model, batch):
        assert_permutation_equivariance(model, batch)

    def test_periodic_image_invariance(self, model, batch):
        assert_periodic_image_invariance(model, batch)

    def test_finite_difference_forces(self, model, batch):
        assert_finite_difference_forces(model, batch)

    def test_batch_consistency(self, model, batch):
        assert_batch_consistency(model, batch)

    def test_continuity_at_every_cutoff(self, model, batch):
        """An Na-Cl pair crossing each cutoff changes neither energy nor forces (float64)."""
        numbers = batch.numbers[batch.frame_index == 0].tolist()
        i, j = numbers.index(units.SODIUM), numbers.index(units.CHLORINE)
        for cutoff in model_cutoffs(model).values():
            assert_cutoff_continuity(model, batch, cutoff, i, j, delta=CONTINUITY_STEP, atol=1e-9)

    def test_hessian_symmetry(self, model, batch):
        """The Hessian (double backprop of the forces) is symmetric: forces are a gradient."""
        model.eval()
        hessian = model_hessian(model, frames_of(batch)[0], symmetric=False)  # (3N, 3N) eV/Å^2
        asymmetry = np.abs(hessian - hessian.T).max()
        assert asymmetry <= 1e-9 * max(np.abs(hessian).max(), 1.0), f"max |H - H^T| = {asymmetry:.3g} eV/Å^2"
        assert np.abs(hessian).max() > 0

    def test_evaluates_finite(self, model, batch):
        energy, forces = evaluate(model, batch)
        assert torch.isfinite(energy).all() and torch.isfinite(forces).all()
        assert forces.abs().max() > 0  # not a constant model: the checks above could not fail
