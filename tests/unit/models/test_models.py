"""Physics properties of both force branches and of SchNet, via scalepool.testing.

Tiny random systems (8 atoms of O/H/Na/Cl in a 7 Å sheared periodic box, two
frames) keep every check well under a second.  The long branch is checked with
exact Ewald summation and, where P3M is exact too, with its default P3M, both
at the default real-space cutoff (7 Å, the box's first lattice vector: every
atom's own image sits exactly at it, where the switched kernel is zero with
its first two derivatives).  Continuity is checked at every cutoff a model has,
in float64 at the round-off tolerances of ``conftest.TOLERANCES``.
"""

from __future__ import annotations

import pytest
import torch

from scalepool import testing as T
from scalepool import units
from scalepool.models import AtomsBatch, Features, ForceModel, SchNet, build_branch

SMALL = dict(n_features=8, n_interactions=2)
MODELS = {
    "short": lambda: build_branch("short", **SMALL),
    "long": lambda: build_branch("long", method="ewald", **SMALL),
    "long_p3m": lambda: build_branch("long", **SMALL),
    "long_fixed": lambda: build_branch("long", method="ewald", fixed_charges=True, **SMALL),
    "schnet": lambda: SchNet(cutoff=5.0, **SMALL),
}
EXACT = ["short", "long", "long_fixed", "schnet"]
def ion_pair(batch) -> tuple[int, int]:
    """Indices of the first Na and the first Cl of the first frame."""
    numbers = batch.numbers[batch.frame_index == 0].tolist()
    return numbers.index(units.SODIUM), numbers.index(units.CHLORINE)


@pytest.fixture(scope="module")
def frames():
    return T.random_frames(n_atoms=8, box=7.0, n_frames=2, seed=3)


def batch_of(frames, dtype):
    return AtomsBatch.from_frameset(frames, dtype=dtype)


def model_of(name, dtype=torch.float64):
    return MODELS[name]().to(dtype)


# ------------------------------------------------------------ float64 properties
@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize(
    "check",
    [
        T.assert_rotation_equivariance,
        T.assert_translation_invariance,
        T.assert_permutation_equivariance,
        T.assert_periodic_image_invariance,
        T.assert_batch_consistency,
    ],
    ids=lambda f: f.__name__.removeprefix("assert_"),
)
def test_symmetries_hold_to_round_off(name, check, frames, tolerances):
    check(model_of(name), batch_of(frames, torch.float64), **tolerances[torch.float64])


@pytest.mark.parametrize("name", list(MODELS))
def test_forces_match_finite_differences(name, frames):
    T.assert_finite_difference_forces(model_of(name, torch.float32), batch_of(frames, torch.float32))


@pytest.mark.parametrize("name", list(MODELS))
def test_energy_and_forces_continuous_at_every_cutoff(name, frames, tolerances):
    model, batch = model_of(name), batch_of(frames, torch.float64)
    i, j = ion_pair(batch)
    for cutoff in T.model_cutoffs(model).values():
        T.assert_cutoff_continuity(
            model, batch, cutoff, i, j, delta=T.CONTINUITY_STEP, atol=tolerances[torch.float64]["atol"]
        )


@pytest.mark.parametrize("kind", ["backbone", "real_space"])
@pytest.mark.parametrize("charges", ["latent", "fixed"], ids=["default", "fixed_charges"])
def test_default_long_branch_continuous_at_each_cutoff(kind, charges, frames, tolerances):
    """``scalepool train --branch long`` as built: a Na-Cl pair crossing each cutoff."""
    options = {"fixed_charges": True} if charges == "fixed" else {}
    model = build_branch("long", **options).double()
    batch = batch_of(frames, torch.float64)
    assert model.cutoff == 6.0 and model.electrostatics.method == "p3m"
    assert model.electrostatics.switch_width > 0  # the real-space term is switched, not cut
    i, j = ion_pair(batch)
    atol = tolerances[torch.float64]["atol"]
    T.assert_cutoff_continuity(model, batch, T.model_cutoffs(model)[kind], i, j, delta=T.CONTINUITY_STEP, atol=atol)


@pytest.mark.parametrize(
    "check",
    [T.assert_permutation_equivariance, T.assert_periodic_image_invariance, T.assert_batch_consistency],
    ids=lambda f: f.__name__.removeprefix("assert_"),
)
def test_p3m_branch_exact_symmetries(check, frames, tolerances):
    check(model_of("long_p3m"), batch_of(frames, torch.float64), **tolerances[torch.float64])


@pytest.mark.parametrize(
    "check",
    [T.assert_rotation_equivariance, T.assert_translation_invariance],
    ids=["rotation", "translation"],
)
def test_p3m_branch_symmetries_within_mesh_error(check, frames):
    # P3M's influence function uses Cartesian mesh terms and charges sit at
    # fixed mesh nodes, so rotations and translations change the energy by
    # the discretisation error (~1e-6 eV here), not by round-off.
    check(model_of("long_p3m"), batch_of(frames, torch.float64), atol=1e-4, rtol=0.0)


# ------------------------------------------------------------ float32 properties
@pytest.mark.parametrize("name", EXACT)
def test_float32_rotation_and_batching(name, frames, tolerances):
    model, batch = model_of(name, torch.float32), batch_of(frames, torch.float32)
    T.assert_rotation_equivariance(model, batch, **tolerances[torch.float32])
    T.assert_batch_consistency(model, batch, **tolerances[torch.float32])


def test_open_boundaries(frames, tolerances):
    open_frames = T.random_frames(n_atoms=6, box=6.0, n_frames=2, seed=5, periodic=False)
    batch = batch_of(open_frames, torch.float64)
    for name in ("short", "long_fixed"):
        model = model_of(name)
        T.assert_rotation_equivariance(model, batch, **tolerances[torch.float64])
        T.assert_translation_invariance(model, batch, **tolerances[torch.float64])
        T.assert_batch_consistency(model, batch, **tolerances[torch.float64])


# ------------------------------------------------ the helpers can fail (controls)
class _Broken(ForceModel):
    """A pair model with a deliberate defect, to show each helper catches it."""

    def __init__(self, defect: str, cutoff: float = 4.0):
        super().__init__(cutoff, {"defect": defect})
        self.defect = defect
        self.weight = torch.nn.Parameter(torch.tensor(1.0))
        self.n_features = 1

    def embed(self, batch):
        pairs, shifts = batch.neighbors(self.cutoff)
        r = torch.linalg.vector_norm(batch.edge_vectors(pairs, shifts), dim=-1)
        pair_energy = self.weight * torch.exp(-r)  # no envelope: a hard cutoff
        if self.defect == "smooth":
            pair_energy = pair_energy * (1 - r / self.cutoff) ** 2
        per_atom = torch.zeros(batch.n_atoms, dtype=r.dtype).index_add(0, pairs[:, 0], pair_energy)
        if self.defect == "absolute":
            per_atom = per_atom + 0.1 * batch.positions[:, 0] ** 2
        return Features(per_atom.unsqueeze(-1), None)

    def readout(self, batch, features):
        return features.scalar.squeeze(-1)

    def forward(self, batch, compute_forces=True, create_graph=None):
        out = super().forward(batch, compute_forces, create_graph)
        if self.defect == "force_sign":
            out["forces"] = 1.01 * out["forces"]
        return out


def test_controls_pass_when_nothing_is_broken(frames):
    batch = batch_of(frames, torch.float64)
    model = _Broken("smooth").double()
    T.assert_cutoff_continuity(model, batch)
    T.assert_finite_difference_forces(model, batch)
    T.assert_rotation_equivariance(model, batch)


@pytest.mark.parametrize(
    "defect, check, message",
    [
        ("hard_cutoff", T.assert_cutoff_continuity, "across the cutoff"),
        ("absolute", T.assert_rotation_equivariance, "under rotation"),
        ("absolute", T.assert_translation_invariance, "under translation"),
        ("absolute", T.assert_periodic_image_invariance, "lattice translations"),
        ("force_sign", T.assert_finite_difference_forces, "finite difference"),
    ],
)
def test_helpers_detect_defects(defect, check, message, frames):
    with pytest.raises(AssertionError, match=message):
        check(_Broken(defect).double(), batch_of(frames, torch.float64))


def test_helpers_detect_frame_leakage(frames):
    class Leaky(_Broken):
        def readout(self, batch, features):  # couples frames through a batch-wide mean
            return features.scalar.squeeze(-1) + features.scalar.mean()

    with pytest.raises(AssertionError, match="batched vs alone"):
        T.assert_batch_consistency(Leaky("smooth").double(), batch_of(frames, torch.float64))


def test_permutation_helper_detects_order_dependence(frames):
    class Ordered(_Broken):
        def readout(self, batch, features):
            return features.scalar.squeeze(-1) * torch.arange(batch.n_atoms, dtype=features.scalar.dtype)

    with pytest.raises(AssertionError, match="under permutation"):
        T.assert_permutation_equivariance(Ordered("smooth").double(), batch_of(frames, torch.float64))
