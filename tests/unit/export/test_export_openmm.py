"""Models as OpenMM forces (PythonForce): OpenMM's forces equal the model's, SETTLE keeps water rigid."""

from __future__ import annotations

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch

from scalepool.export import (
    WATER_HH,
    WATER_OH,
    add_model_force,
    export_model,
    load_exported,
    model_system,
    reference_energy_forces,
    save_exported,
)
from scalepool.testing import TOLERANCES
from scalepool.units import ANGSTROM_TO_NM, KJ_PER_MOL_NM_TO_EV_PER_ANGSTROM, KJ_PER_MOL_TO_EV

FORCE_ATOL = 1e-5  # eV/Å, float32 model; OpenMM's Reference platform is double precision


def _openmm_energy_forces(system, positions, cell):
    context = openmm.Context(
        system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    context.setPeriodicBoxVectors(*(openmm.Vec3(*row) for row in cell * ANGSTROM_TO_NM))
    context.setPositions(positions * ANGSTROM_TO_NM)
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) * KJ_PER_MOL_TO_EV
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    return energy, np.asarray(forces) * KJ_PER_MOL_NM_TO_EV_PER_ANGSTROM


def _check(model_or_program, reference_model, nacl_frame):
    positions, numbers, cell, _ = nacl_frame
    system = model_system(numbers, cell)
    add_model_force(system, model_or_program, numbers)
    energy, forces = _openmm_energy_forces(system, positions, cell)
    ref_energy, ref_forces = reference_energy_forces(reference_model, positions, numbers, cell)
    assert float(ref_forces.abs().max()) > 0.05
    np.testing.assert_allclose(forces, ref_forces.numpy(), rtol=0, atol=FORCE_ATOL)
    tol = TOLERANCES[torch.float32]
    assert energy == pytest.approx(float(ref_energy), abs=tol["atol"], rel=tol["rtol"])


def test_openmm_forces_equal_model_forces(nacl_frame, small_model):
    model = small_model("long")  # P3M head included
    _check(model, model, nacl_frame)


@pytest.mark.slow
def test_openmm_forces_equal_model_forces_through_the_exported_file(nacl_frame, small_model, tmp_path):
    positions, numbers, cell, _ = nacl_frame
    model = small_model("short")
    save_exported(export_model(model, positions, numbers, cell), tmp_path / "short.pt2")
    program, _ = load_exported(tmp_path / "short.pt2")
    _check(program, model, nacl_frame)


def test_model_system_keeps_water_rigid_with_settle(nacl_frame, small_model):
    positions, numbers, cell, _ = nacl_frame
    system = model_system(numbers, cell)
    n_water = int((numbers == 8).sum())
    assert system.getNumConstraints() == 3 * n_water
    add_model_force(system, small_model("short"), numbers)
    integrator = openmm.LangevinMiddleIntegrator(
        300 * unit.kelvin, 1 / unit.picosecond, 0.001 * unit.picoseconds
    )
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPeriodicBoxVectors(*(openmm.Vec3(*row) for row in cell * ANGSTROM_TO_NM))
    context.setPositions(positions * ANGSTROM_TO_NM)
    context.applyConstraints(1e-8)
    start = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    integrator.step(5)
    state = context.getState(getPositions=True, getEnergy=True)
    moved = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer) / ANGSTROM_TO_NM
    assert np.abs(moved - start / ANGSTROM_TO_NM).max() > 1e-4  # the model's forces moved the atoms
    oxygens = np.flatnonzero(numbers == 8)
    oh = np.linalg.norm(moved[oxygens + 1] - moved[oxygens], axis=1)
    hh = np.linalg.norm(moved[oxygens + 2] - moved[oxygens + 1], axis=1)
    np.testing.assert_allclose(oh, WATER_OH, atol=1e-4)
    np.testing.assert_allclose(hh, WATER_HH, atol=1e-4)
    assert np.isfinite(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))


def test_add_model_force_checks_the_particle_count(nacl_frame, small_model):
    _, numbers, cell, _ = nacl_frame
    system = model_system(numbers[:30], cell)
    with pytest.raises(ValueError, match="30 particles but numbers has"):
        add_model_force(system, small_model("short"), numbers)
