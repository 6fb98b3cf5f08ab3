"""The OpenMM NaCl(aq) reference-data generator: forces, units, metadata, composition.

A 1.9 nm box (just above twice the 0.9 nm cutoff) at 1.5 M holds 627 atoms with
6 Na+ and 6 Cl-; a few hundred MD steps keep the whole file to seconds.
"""

from __future__ import annotations

import inspect

import numpy as np
import openmm
import openmm.unit as unit
import pytest

from scalepool import units
from scalepool.data import FrameSet
from scalepool.data import _keys as K
from scalepool.data._nacl import build_nacl_system, generate_nacl, openmm_reference_forces

SMALL = dict(box_nm=1.9, molarity=1.5, stride_ps=0.02, equilibration_ps=0.1, threads=1, progress=False)
PARTS = ("bonded", "direct", "reciprocal")

# Stored forces are float32: |F| up to ~20 eV/Å rounds at ~1e-6 eV/Å.  A fresh
# CPU context reproduces them to that level; OpenMM's double-precision
# Reference platform differs by its own PME implementation (~3e-4 eV/Å).
ATOL_CPU = 1e-4  # eV/Å
ATOL_REFERENCE = 2e-3  # eV/Å
ATOL_PARTS_SUM = 2e-5  # eV/Å, float32 rounding of four arrays


@pytest.fixture(scope="module")
def nacl() -> FrameSet:
    return generate_nacl(n_frames=3, seed=7, **SMALL)


def test_stored_forces_match_fresh_openmm_context(nacl):
    for frame in (0, nacl.n_frames - 1):
        ref = openmm_reference_forces(nacl, frame, threads=1)
        np.testing.assert_allclose(nacl.forces[frame], ref[K.FORCES], rtol=1e-4, atol=ATOL_CPU)
        for part in PARTS:
            np.testing.assert_allclose(
                nacl.force_parts[part][frame], ref[K.FORCE_PART_PREFIX + part], rtol=1e-4, atol=ATOL_CPU
            )
        assert nacl.energy[frame] == pytest.approx(ref[K.ENERGY], abs=1e-3)  # eV, of about -1e3 eV


def test_stored_forces_match_reference_platform(nacl):
    ref = openmm_reference_forces(nacl, 0, platform="Reference")
    np.testing.assert_allclose(nacl.forces[0], ref[K.FORCES], rtol=1e-3, atol=ATOL_REFERENCE)
    assert nacl.energy[0] == pytest.approx(ref[K.ENERGY], abs=5e-3)


def test_parts_sum_to_total(nacl):
    total = sum(nacl.force_parts[part].astype(np.float64) for part in PARTS)
    np.testing.assert_allclose(total, nacl.forces, atol=ATOL_PARTS_SUM)
    assert nacl.meta["parts_sum_max_abs_error_ev_per_angstrom"] < ATOL_PARTS_SUM
    # rigid water: constrained bonds and angles have no force term at all
    assert np.all(nacl.force_parts["bonded"] == 0)
    # the parts are not trivially zero: direct space carries most of the force
    rms = {part: np.sqrt(np.mean(nacl.force_parts[part] ** 2)) for part in PARTS}
    assert 0.5 < rms["direct"] < 2.0  # eV/Å
    assert 0.01 < rms["reciprocal"] < 0.3


def _pair_state(force: openmm.Force, distance_nm: float) -> openmm.State:
    system = openmm.System()
    system.addParticle(1.0)
    system.addParticle(1.0)
    system.addForce(force)
    context = openmm.Context(
        system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName("Reference")
    )
    context.setPositions([openmm.Vec3(0, 0, 0), openmm.Vec3(distance_nm, 0, 0)])
    return context.getState(getEnergy=True, getForces=True)


def test_units_coulomb_pair():
    """Two opposite unit charges 3 Å apart: E = -14.399645 eV Å / r, |F| = 14.399645 / r^2."""
    nb = openmm.NonbondedForce()
    nb.setNonbondedMethod(openmm.NonbondedForce.NoCutoff)
    nb.addParticle(1.0, 0.1, 0.0)
    nb.addParticle(-1.0, 0.1, 0.0)
    state = _pair_state(nb, 0.3)
    energy_ev = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) * units.KJ_PER_MOL_TO_EV
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    forces_ev_a = np.asarray(forces) * units.KJ_PER_MOL_NM_TO_EV_PER_ANGSTROM
    r = 3.0  # Å
    assert energy_ev == pytest.approx(-14.399645 / r, rel=1e-6)
    # attraction: particle 0 pulled towards +x, particle 1 towards -x
    np.testing.assert_allclose(
        forces_ev_a, [[14.399645 / r**2, 0, 0], [-14.399645 / r**2, 0, 0]], rtol=1e-6, atol=1e-9
    )


def test_units_harmonic_bond():
    """k = 1000 kJ/mol/nm^2 stretched 0.05 nm: 1.25 kJ/mol and 50 kJ/mol/nm, in eV and eV/Å by hand."""
    bond = openmm.HarmonicBondForce()
    bond.addBond(0, 1, 0.1, 1000.0)
    state = _pair_state(bond, 0.15)
    energy_ev = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) * units.KJ_PER_MOL_TO_EV
    forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    forces_ev_a = np.asarray(forces) * units.KJ_PER_MOL_NM_TO_EV_PER_ANGSTROM
    ev_per_kj_mol = 0.010364269656262174  # CODATA: 1e3 / (N_A e)
    assert energy_ev == pytest.approx(1.25 * ev_per_kj_mol, rel=1e-9)
    # restoring force 50 kJ/mol/nm = 5 kJ/mol/Å, pulling the atoms together
    f = 50.0 * ev_per_kj_mol / 10.0
    np.testing.assert_allclose(forces_ev_a, [[f, 0, 0], [-f, 0, 0]], rtol=1e-9)


def test_metadata(nacl):
    meta = nacl.meta
    assert meta["generator"] == "scalepool.data.nacl"
    assert meta["seed"] == 7
    assert meta["openmm_version"] == openmm.__version__
    assert meta["platform"] == "CPU" and meta["threads"] == 1
    assert set(inspect.signature(generate_nacl).parameters) <= set(meta["parameters"])
    assert meta["parameters"]["box_nm"] == 1.9 and meta["parameters"]["timestep_fs_used"] == 2.0
    assert meta["force_field_files"] == ["amber14/tip3p.xml"]
    assert meta["constraints"]["rigid_water"] is True
    assert meta["constraints"]["forces_include_constraint_forces"] is False
    assert meta["nonbonded"]["cutoff_nm"] == 0.9
    assert meta["force_groups"] == {"bonded": 0, "direct": 1, "reciprocal": 2}
    np.testing.assert_allclose(nacl.cell, np.broadcast_to(19.0 * np.eye(3), nacl.cell.shape))


def test_same_seed_same_frames(nacl):
    """threads=1 is bitwise reproducible; another seed gives another trajectory."""
    again = generate_nacl(n_frames=1, seed=7, **SMALL)
    np.testing.assert_array_equal(again.positions[0], nacl.positions[0])
    np.testing.assert_array_equal(again.forces[0], nacl.forces[0])
    other = generate_nacl(n_frames=1, seed=8, **SMALL)
    assert np.abs(other.positions[0] - nacl.positions[0]).max() > 0.1  # Å


def test_species_and_neutrality(nacl):
    z = nacl.numbers
    n_na = int((z == units.SODIUM).sum())
    n_cl = int((z == units.CHLORINE).sum())
    assert (n_na, n_cl) == (nacl.meta["n_na"], nacl.meta["n_cl"])
    assert n_na >= 2 and n_cl >= 2 and n_na == n_cl
    water = z[~np.isin(z, units.ION_NUMBERS)]
    assert len(water) == 3 * nacl.meta["n_water"]
    np.testing.assert_array_equal(water.reshape(-1, 3), [[8, 1, 1]] * nacl.meta["n_water"])
    # neutral in the force field too
    _, system, _ = build_nacl_system(box_nm=1.9, molarity=1.5, seed=7)
    nb = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
    charge = sum(
        nb.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge)
        for i in range(nb.getNumParticles())
    )
    assert charge == pytest.approx(0.0, abs=1e-6)
    # waters stay whole in the stored (molecule-wrapped) positions: O-H about 0.9572 Å
    w = np.flatnonzero(z == units.OXYGEN)
    oh = np.linalg.norm(nacl.positions[:, w + 1] - nacl.positions[:, w], axis=-1)
    np.testing.assert_allclose(oh, 0.9572, atol=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_frames": 0}, "n_frames must be an integer >= 1"),
        ({"box_nm": 1.7}, "box_nm must exceed twice"),
        ({"stride_ps": 0.003}, "multiple of the time step"),
        ({"molarity": -1.0}, "molarity must be >= 0"),
        ({"threads": 0}, "threads must be None or an integer >= 1"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_nacl(**{**SMALL, **kwargs})


def test_flexible_water_has_bonded_forces():
    flexible = generate_nacl(
        n_frames=1, seed=1, **{**SMALL, "equilibration_ps": 0.05, "stride_ps": 0.01}, rigid_water=False
    )
    assert flexible.meta["parameters"]["timestep_fs_used"] == 0.5
    assert flexible.meta["constraints"]["n_constraints"] == 0
    assert np.sqrt(np.mean(flexible.force_parts["bonded"] ** 2)) > 0.3  # eV/Å
    ref = openmm_reference_forces(flexible, 0, threads=1)
    np.testing.assert_allclose(flexible.forces[0], ref[K.FORCES], rtol=1e-4, atol=ATOL_CPU)
    np.testing.assert_allclose(
        flexible.force_parts["bonded"][0], ref[K.FORCES_BONDED], rtol=1e-4, atol=ATOL_CPU
    )
