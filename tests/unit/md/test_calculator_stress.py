"""ASE calculator: stress (Voigt, ASE sign) against ASE's own finite differences, per-atom
energies, and loading any saved model file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_stress
from standins import randomised_float64

from scalepool.md import ScalepoolCalculator
from scalepool.models import MixedForceModel, build_branch, save_model
from scalepool.testing import random_frames

SMALL = dict(n_features=8, n_interactions=2)
#: eV/Å^3; ASE's central differences (strain 1e-6) agree with autograd to ~1e-10 in float64.
FD_ATOL = 1e-8

BUILDERS = {
    "short_painn": lambda: build_branch("short", **SMALL),
    "short_schnet": lambda: build_branch("short", backbone="schnet", **SMALL),
    "long_latent_p3m": lambda: build_branch("long", **SMALL),
    "long_fixed_p3m": lambda: build_branch("long", fixed_charges=True, **SMALL),
    "muse": lambda: build_branch("muse", coarse_cutoff=5.0, n_coarse_interactions=1, coarse_n_rbf=8, **SMALL),
    "mixed": lambda: MixedForceModel(build_branch("short", **SMALL), build_branch("long", **SMALL)),
}


def make_model(name: str) -> torch.nn.Module:
    """Float64 model; zero-initialised weight matrices drawn at random, energy scale 10 eV."""
    torch.manual_seed(0)
    return randomised_float64(BUILDERS[name]())


def make_atoms(periodic: bool = True) -> Atoms:
    """8 atoms (O, H, Na, Cl) in a 7 Å triclinic cell, or the same atoms with open boundaries."""
    frames = random_frames(n_atoms=8, box=7.0, n_frames=1, seed=1, periodic=periodic)
    cell = frames.cell[0] if periodic else None
    return Atoms(numbers=frames.numbers, positions=frames.positions[0], cell=cell, pbc=periodic)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_stress_matches_ase_numerical_stress(name):
    atoms = make_atoms()
    atoms.calc = ScalepoolCalculator(make_model(name), float64=True)
    stress = atoms.get_stress()
    assert stress.shape == (6,)
    want = calculate_numerical_stress(atoms, eps=1e-6)
    assert np.abs(want).max() > 1e3 * FD_ATOL
    err = np.abs(stress - want).max()
    assert err < FD_ATOL, f"{name}: stress {stress} vs ASE numerical {want}: max error {err:.2e} eV/Å^3"
    full = atoms.get_stress(voigt=False)
    np.testing.assert_array_equal(full, full.T)


def test_energies_sum_to_energy_and_match_the_model():
    atoms = make_atoms()
    model = make_model("long_latent_p3m")
    atoms.calc = ScalepoolCalculator(model, float64=True)
    energies = atoms.get_potential_energies()
    assert energies.shape == (len(atoms),)
    assert abs(energies.sum() - atoms.get_potential_energy()) < 1e-10
    atomic = model(atoms.calc.atoms_to_batch(atoms), compute_forces=False)["atomic_energies"]
    np.testing.assert_allclose(energies, atomic.detach().numpy(), rtol=0, atol=1e-12)
    assert np.ptp(energies) > 1e-3  # per-atom values, not a share of the total


def test_open_boundaries_have_energy_and_forces_but_no_stress():
    atoms = make_atoms(periodic=False)
    atoms.calc = ScalepoolCalculator(make_model("short_painn"), float64=True)
    assert np.isfinite(atoms.get_forces()).all()
    with pytest.raises(PropertyNotImplementedError, match="stress needs periodic Atoms"):
        atoms.get_stress()


def test_from_file_loads_any_saved_model(tmp_path):
    model = make_model("mixed")
    path = save_model(model, tmp_path / "mixed.pt")
    atoms = make_atoms()
    atoms.calc = ScalepoolCalculator(model, float64=True)
    want = (atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress())
    loaded = make_atoms()
    loaded.calc = ScalepoolCalculator.from_file(path, device="cpu", float64=True)
    assert loaded.calc.dtype == torch.float64 and isinstance(loaded.calc.model, MixedForceModel)
    assert loaded.get_potential_energy() == pytest.approx(want[0], abs=1e-12)
    np.testing.assert_allclose(loaded.get_forces(), want[1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(loaded.get_stress(), want[2], rtol=0, atol=1e-14)
    single = ScalepoolCalculator.from_file(path)  # float32 by default
    assert single.dtype == torch.float32 and next(single.model.parameters()).dtype == torch.float32
    with pytest.raises(FileNotFoundError, match="model file not found"):
        ScalepoolCalculator.from_file(tmp_path / "missing.pt")
