"""Shared cases of ``test_backbones_*.py``: the physics suite of a backbone alone, of the long
branch on it and of MuSE on it, plus checks every backbone adapter must pass.

A test file subclasses :class:`BackboneSuite`, :class:`LongBranchSuite` and
:class:`MuSESuite` with ``NAME`` (a key of ``scalepool.models.BACKBONES``) and
``OPTIONS`` (small hyperparameters); the classes here are not collected
themselves (no ``Test`` prefix).
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from scalepool.models import BACKBONES, AtomsBatch, MuSE, build_branch, save_model
from scalepool.testing import TOLERANCES, ForceModelTests, random_frames, random_rotation

#: MuSE settings small enough for the 8-atom, 7 Å test box.
MUSE_SMALL = dict(coarse_cutoff=5.0, n_coarse_interactions=1, coarse_n_rbf=8)


def activate(model: MuSE, seed: int = 0) -> MuSE:
    """Random unpooling maps, centre weights and scores, so the hierarchy changes the energy."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("levels.") and ("unpool" in name or "species_bias" in name or "score" in name):
                param.copy_(0.3 * torch.randn(param.shape, generator=gen, dtype=param.dtype))
    return model


def small_batch(n_frames: int = 2, dtype=torch.float64) -> AtomsBatch:
    """Frames of 8 atoms (O, H, Na, Cl) in a sheared 7 Å periodic box (the suite's batch)."""
    return AtomsBatch.from_frameset(random_frames(n_atoms=8, box=7.0, n_frames=n_frames, seed=3), dtype=dtype)


class _Cached(ForceModelTests):
    """Builds the model once per class (MACE's e3nn blocks take seconds to build) and hands
    each test a deep copy."""

    NAME = ""
    OPTIONS: dict = {}

    def build(self, **extra):
        raise NotImplementedError

    @pytest.fixture(scope="class")
    def built(self):
        torch.manual_seed(0)
        return self.build().double()

    @pytest.fixture
    def model(self, built):
        return copy.deepcopy(built)


class BackboneSuite(_Cached):
    """The backbone alone, float64."""

    def build(self, **extra):
        return BACKBONES[self.NAME](cutoff=4.5, **self.OPTIONS, **extra)

    def test_vector_features_rotate_with_the_frame(self, model, batch):
        """What MuSE pools as vectors is equivariant: v(R x) = R v(x), in (x, y, z) order."""
        rot = random_rotation(1)
        turned = AtomsBatch(
            positions=batch.positions @ rot.T,
            numbers=batch.numbers,
            frame_index=batch.frame_index,
            cell=batch.cell @ rot.T,
            n_frames=batch.n_frames,
        )
        with torch.no_grad():
            before, after = model.embed(batch), model.embed(turned)
        tol = TOLERANCES[torch.float64]
        torch.testing.assert_close(after.scalar, before.scalar, **tol)
        assert before.vector is not None and before.vector.abs().max() > 1e-6
        assert before.vector.shape == (batch.n_atoms, 3, model.n_vector_features)
        torch.testing.assert_close(after.vector, torch.einsum("ab,nbf->naf", rot, before.vector), **tol)

    def test_readout_is_the_energy_head_with_species_statistics(self, model, batch):
        with torch.no_grad():
            model.species_scale.fill_(2.0)
            model.species_shift[8] = -3.0
            features = model.embed(batch)
            raw = model.energy_head(features.scalar).squeeze(-1)
            expected = 2.0 * raw + torch.where(batch.numbers == 8, -3.0, 0.0).to(raw.dtype)
            torch.testing.assert_close(model.readout(batch, features), expected, **TOLERANCES[torch.float64])


class LongBranchSuite(_Cached):
    """The long branch (6 Å backbone + latent-charge P3M) on the backbone."""

    def build(self, **extra):
        return build_branch("long", backbone=self.NAME, **self.OPTIONS, **extra)

    # P3M's mesh breaks exact rotation, translation and image symmetry (within its mesh
    # error); the same branch with exact Ewald keeps them (as in test_physics_suite.py)
    @pytest.fixture
    def exact(self, built):
        model = self.build(method="ewald").double()
        model.load_state_dict(built.state_dict())  # the same weights, only the method differs
        return model

    def test_rotation_equivariance(self, exact, batch):
        super().test_rotation_equivariance(exact, batch)

    def test_translation_invariance(self, exact, batch):
        super().test_translation_invariance(exact, batch)

    def test_periodic_image_invariance(self, exact, batch):
        super().test_periodic_image_invariance(exact, batch)


class MuSESuite(_Cached):
    """``build_branch("muse", backbone=NAME)`` with an active hierarchy (random unpooling)."""

    def build(self, **extra):
        return build_branch("muse", backbone=self.NAME, **MUSE_SMALL, **self.OPTIONS, **extra)

    @pytest.fixture
    def model(self, built):
        return activate(copy.deepcopy(built))

    def test_untrained_muse_equals_its_backbone(self, built, batch):
        muse = copy.deepcopy(built).eval()
        with torch.no_grad():
            torch.nn.init.normal_(muse.species_scale, 1.0, 0.1)  # tied to the backbone's buffers
        wrapped = muse(batch)
        alone = muse.backbone(batch)
        tol = TOLERANCES[torch.float64]
        torch.testing.assert_close(wrapped["atomic_energies"], alone["atomic_energies"], **tol)
        torch.testing.assert_close(wrapped["forces"], alone["forces"], **tol)
        activate(muse)  # and the comparison can fail: a non-zero unpooling changes the energy
        assert (muse(batch)["energy"] - alone["energy"]).abs().max() > 1e-6

    def test_pooled_vectors_reach_the_energy(self, model, batch):
        """The backbone's vectors are pooled (their projection gets a gradient)."""
        model.zero_grad()
        model(batch, create_graph=True)["energy"].sum().backward()
        grad = model.levels[0].project_vector.weight.grad
        assert grad is not None and grad.abs().max() > 0


_LOADER = """
import sys, torch
from scalepool.models import load_model
for path in sys.argv[1:]:
    model = load_model(path).double().eval()
    batch = torch.load(path + ".batch", weights_only=False)
    expected = torch.load(path + ".energy", weights_only=True)
    got = model(batch)["energy"]
    assert torch.allclose(got, expected, atol=1e-10, rtol=1e-10), (path, got, expected)
    print("loaded", type(model).__name__)
"""


def assert_files_load_in_a_fresh_interpreter(name: str, options: dict, tmp_path) -> None:
    """save_model of the backbone, the long branch and MuSE on it; a new Python rebuilds each
    and gives the same energies (float64)."""
    torch.manual_seed(0)
    models = {
        "alone": BACKBONES[name](cutoff=4.5, **options),
        "long": build_branch("long", backbone=name, method="ewald", **options),
        "muse": activate(build_branch("muse", backbone=name, **MUSE_SMALL, **options)),
    }
    batch = small_batch(1)
    paths = []
    for key, model in models.items():
        with torch.no_grad():  # weights that differ from a fresh build, so a silent re-init is seen
            for parameter in model.parameters():
                parameter.add_(0.01 * torch.randn_like(parameter))
        path = tmp_path / f"{key}.pt"
        save_model(model, path)
        model = model.double().eval()
        torch.save(batch, f"{path}.batch")
        torch.save(model(batch)["energy"].detach(), f"{path}.energy")
        paths.append(str(path))
    done = subprocess.run(
        [sys.executable, "-c", _LOADER, *paths], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("loaded ")]
    assert loaded == [type(m).__name__ for m in models.values()]  # peers may print notices too
