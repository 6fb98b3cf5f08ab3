"""The OpenMM NaCl(aq) reference-data generator: forces, units, metadata, composition.

A 1.9 nm box (just above twice the 0.9 nm cutoff) at 1.5 M holds 627 atoms with
6 Na+ and 6 Cl-; a few hundred MD steps keep the whole file to seconds.
"""

from __future__ import annotations

import inspect
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import openmm
import openmm.unit as unit
import pytest

from scalepool import units
from scalepool.cli import main
from scalepool.data import FrameSet
from scalepool.data import _keys as K
from scalepool.data._nacl import build_nacl_system, generate_nacl, openmm_reference_forces
from scalepool.data._nacl_checkpoint import CheckpointInUse, CheckpointMismatch, NaclCheckpoint

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


# ---------------------------------------------------------------- checkpoints


def test_checkpoint_folder_commits_cleans_and_checks_parameters(tmp_path):
    folder = tmp_path / "out.npz.partial"
    frames = {K.POSITIONS: np.arange(12.0).reshape(2, 2, 3), K.FORCES: np.full((2, 2, 3), 0.1)}
    with NaclCheckpoint(folder, {"seed": 1, "box_nm": 1.9}) as store:
        assert store.load() is None
        first = store.save(frames_done=0, new_frames={}, state=b"s0", progress={"resumes": 0}, previous=None)
        store.save(frames_done=2, new_frames=frames, state=b"s2", progress={"resumes": 0}, previous=first)
        # a second run on the same folder is refused while this one holds it
        with pytest.raises(CheckpointInUse, match="in use by another"), NaclCheckpoint(folder, {"seed": 1}):
            pass
    # a chunk and a state written after the last commit, as by a killed run
    (folder / "frames_000002_000004.npz").write_bytes(b"partial")
    (folder / "state_000004.chk").write_bytes(b"s4")
    with NaclCheckpoint(folder, {"box_nm": 1.9, "seed": 1}) as store:
        progress, stored, state = store.load()
    assert progress["frames_done"] == 2 and state == b"s2"
    np.testing.assert_array_equal(stored[K.POSITIONS], frames[K.POSITIONS])
    assert stored[K.FORCES].dtype == np.float32  # the dtype of the final dataset
    assert sorted(p.name for p in folder.iterdir()) == [
        "frames_000000_000002.npz",
        "lock",
        "parameters.json",
        "progress.json",
        "state_000002.chk",
    ]
    mismatch = r"seed: 1 in the checkpoint, 2 now.*--restart"
    with (
        pytest.raises(CheckpointMismatch, match=mismatch),
        NaclCheckpoint(folder, {"seed": 2, "box_nm": 1.9}),
    ):
        pass
    with NaclCheckpoint(folder, {"seed": 2, "box_nm": 1.9}, restart=True) as store:
        assert store.load() is None
    assert json.loads((folder / "parameters.json").read_text())["seed"] == 2
    # nothing committed yet (killed during set-up): other parameters simply take over the folder
    with NaclCheckpoint(folder, {"seed": 3, "box_nm": 1.9}) as store:
        assert store.load() is None


def test_killed_run_resumes_bitwise(tmp_path, capsys):
    """SIGKILL the CLI after its second checkpoint; re-running the command gives the same bits."""
    settings = {**SMALL, "stride_ps": 0.05}  # 25 steps a frame: the kill lands well before the end
    out = tmp_path / "nacl.npz"
    partial = tmp_path / "nacl.npz.partial"
    argv = ["data", "nacl", "--out", str(out), "--frames", "20", "--seed", "7", "--box-nm", "1.9",
            "--molarity", "1.5", "--stride-ps", "0.05", "--equilibration-ps", "0.1",
            "--checkpoint-every", "2", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "scalepool.cli", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while _frames_done(partial / "progress.json") < 2:
            assert proc.poll() is None, f"generation ended before the kill: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no checkpoint with frames after 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and 2 <= _frames_done(partial / "progress.json") < 20

    # other parameters: refused, and the checkpoint survives
    other_seed = list(argv)
    other_seed[argv.index("--seed") + 1] = "8"
    assert main(other_seed) == 2
    err = capsys.readouterr().err
    assert "seed: 7 in the checkpoint, 8 now" in err and "--restart" in err
    assert partial.exists()

    assert main(argv) == 0
    assert "resumed 1x" in capsys.readouterr().out
    assert out.exists() and not partial.exists()
    resumed = FrameSet.load(out)
    reference = generate_nacl(n_frames=20, seed=7, **settings)  # in memory, no checkpoint
    np.testing.assert_array_equal(resumed.positions, reference.positions)
    np.testing.assert_array_equal(resumed.forces, reference.forces)
    np.testing.assert_array_equal(resumed.energy, reference.energy)
    for part in PARTS:
        np.testing.assert_array_equal(resumed.force_parts[part], reference.force_parts[part])
    assert resumed.meta["resumes"] == 1 and reference.meta["resumes"] == 0
    assert resumed.meta["timings"]["wall_s"] > resumed.meta["timings"]["sample_s"] > 0


def _frames_done(progress: Path) -> int:
    try:
        return json.loads(progress.read_text())["frames_done"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1
