"""The physics suite (``scalepool.testing.ForceModelTests``) on every backbone, every
branch of the catalogue in its default configuration (small widths), and the mixed model."""

from __future__ import annotations

import pytest

from scalepool.models import MixedForceModel, PaiNN, SchNet, build_branch
from scalepool.testing import ForceModelTests

SMALL = dict(n_features=8, n_interactions=1)


class TestPaiNN(ForceModelTests):
    @pytest.fixture
    def model(self):
        return PaiNN(cutoff=4.5, **SMALL).double()


class TestSchNet(ForceModelTests):
    @pytest.fixture
    def model(self):
        return SchNet(cutoff=4.5, **SMALL).double()


class TestShortBranch(ForceModelTests):
    @pytest.fixture
    def model(self):
        return build_branch("short", **SMALL).double()


class TestLongBranch(ForceModelTests):
    """The default long branch: P3M electrostatics at its default real-space cutoff."""

    @pytest.fixture
    def model(self):
        return build_branch("long", **SMALL).double()

    # P3M's mesh breaks exact rotation, translation and image symmetry (they hold within the
    # mesh error, tested in tests/unit/models/test_models.py); exact Ewald keeps them:
    @pytest.fixture
    def exact(self):
        return build_branch("long", method="ewald", **SMALL).double()

    def test_rotation_equivariance(self, exact, batch):
        super().test_rotation_equivariance(exact, batch)

    def test_translation_invariance(self, exact, batch):
        super().test_translation_invariance(exact, batch)

    def test_periodic_image_invariance(self, exact, batch):
        super().test_periodic_image_invariance(exact, batch)


class TestMuSE(ForceModelTests):
    @pytest.fixture
    def model(self):
        return build_branch(
            "muse", coarse_cutoff=5.0, n_coarse_interactions=1, coarse_n_rbf=8, **SMALL
        ).double()


class TestMixedModel(ForceModelTests):
    @pytest.fixture
    def model(self):
        return MixedForceModel(
            build_branch("short", **SMALL), build_branch("long", method="ewald", **SMALL)
        ).double()
