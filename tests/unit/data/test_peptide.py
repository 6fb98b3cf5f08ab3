"""The chignolin testbed: stored forces against a fresh OpenMM system rebuilt from the stored PDB
text, force parts, folding coordinates against MDAnalysis, units, explicit-solvent set-up, errors."""

from __future__ import annotations

import io

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest

from scalepool.cli import main
from scalepool.data import FrameSet, build_peptide, peptide_observables, peptide_reference

EV_IN_KJ_PER_MOL = 96.485332123  # CODATA 2018, typed here independently of scalepool.units
FAST = ["--stride-ps", "0.1", "--equilibration-ps", "0.1", "--minimize-iterations", "100", "--no-progress"]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("peptide") / "p.npz"
    assert main(["data", "peptide", "--out", str(out), "--frames", "6", "--seed", "1", *FAST]) == 0
    return out


def _fresh_context(meta: dict, platform: str) -> openmm.Context:
    """The stored system rebuilt here from the PDB text and force-field names in meta (no scalepool code)."""
    pdb = app.PDBFile(io.StringIO(meta["pdb"]))
    system = app.ForceField(*meta["force_field_files"]).createSystem(
        pdb.topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds
    )
    return openmm.Context(system, openmm.VerletIntegrator(1e-3), openmm.Platform.getPlatformByName(platform))


@pytest.mark.slow
def test_cli_forces_equal_fresh_openmm(written):
    frames = FrameSet.load(written)
    assert frames.n_frames == 6 and frames.cell is None and frames.n_atoms == 138
    assert frames.meta["force_field_files"] == ["amber14-all.xml", "implicit/gbn2.xml"]
    assert not (written.parent / "p.npz.partial").exists()  # checkpoints removed on success
    for platform, atol in (("CPU", 1e-5), ("Reference", 1e-5)):  # eV/Å; float32 storage of |F| < 10 eV/Å
        context = _fresh_context(frames.meta, platform)
        for i in range(frames.n_frames):
            context.setPositions(frames.positions[i] * 0.1 * unit.nanometer)
            state = context.getState(getForces=True, getEnergy=True)
            forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.angstrom)
            energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
            np.testing.assert_allclose(frames.forces[i], forces / EV_IN_KJ_PER_MOL, rtol=1e-5, atol=atol)
            assert frames.energy[i] == pytest.approx(energy / EV_IN_KJ_PER_MOL, abs=1e-4)


@pytest.mark.slow
def test_parts_and_documented_reference(written):
    frames = FrameSet.load(written)
    assert sorted(frames.force_parts) == ["bonded", "nonbonded", "solvation"]
    total = sum(frames.force_parts.values())
    np.testing.assert_allclose(total, frames.forces, atol=2e-5)
    assert all(np.abs(part).max() > 0.1 for part in frames.force_parts.values())  # none is empty
    ref = peptide_reference(frames, 4)
    np.testing.assert_allclose(frames.forces[4], ref["forces"], rtol=1e-6, atol=1e-6)
    for part, value in frames.force_parts.items():
        np.testing.assert_allclose(value[4], ref["forces_" + part], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_folding_coordinates(written):
    from MDAnalysis.analysis.rms import rmsd

    frames = FrameSet.load(written)
    obs = peptide_observables(frames)
    assert obs["temperature_k"].tolist() == [300, 300, 450, 450, 300, 300]
    reference = np.asarray(frames.meta["reference_ca"])
    topology = app.PDBFile(io.StringIO(frames.meta["pdb"])).topology
    ca = [a.index for a in topology.atoms() if a.name == "CA"]
    assert len(ca) == 10
    for i in range(frames.n_frames):
        x = frames.positions[i][ca]
        assert obs["ca_rmsd"][i] == pytest.approx(
            rmsd(x, reference, center=True, superposition=True), abs=1e-6
        )
        assert obs["radius_of_gyration"][i] == pytest.approx(
            np.sqrt(((x - x.mean(0)) ** 2).sum(1).mean()), abs=1e-9
        )
    # started from the hairpin: near it; from the extended chain: far from it and not compact
    assert (obs["ca_rmsd"][:2] < 2.0).all() and (obs["native_contacts"][:2] > 0.9).all()
    assert (obs["ca_rmsd"][4:] > 5.0).all() and (obs["native_contacts"][4:] < 0.2).all()
    assert obs["radius_of_gyration"][4:].min() > obs["radius_of_gyration"][:2].max() + 2.0


def test_explicit_solvent_system_is_neutral_and_periodic():
    topology, positions, cell = build_peptide(start="hairpin", solvent="explicit", padding_nm=0.6)
    assert cell is not None and np.linalg.det(cell) > 0
    waters = sum(1 for r in topology.residues() if r.name == "HOH")
    assert waters > 100 and len(positions) == topology.getNumAtoms()
    system = app.ForceField("amber14-all.xml", "amber14/tip3p.xml").createSystem(
        topology, nonbondedMethod=app.PME
    )
    nb = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
    charge = sum(
        nb.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge)
        for i in range(nb.getNumParticles())
    )
    assert charge == pytest.approx(0.0, abs=1e-6)


def test_bad_input_is_named(tmp_path, capsys):
    from scalepool.data import generate_peptide

    with pytest.raises(ValueError, match="start must be 'extended' or 'hairpin'"):
        build_peptide(start="helix")
    with pytest.raises(ValueError, match="same structure"):
        generate_peptide(n_frames=2, solvent="explicit", segments=(("hairpin", 300), ("extended", 300)))
    with pytest.raises(ValueError, match="end in .npz"):
        generate_peptide(n_frames=3, out=tmp_path / "p.xyz")
    assert main(["data", "peptide", "--out", str(tmp_path / "p.npz"), "--segments", "hairpin-300"]) == 2
    assert "'hairpin-300' is not START:KELVIN" in capsys.readouterr().err
    frames = FrameSet(positions=np.zeros((1, 1, 3)), forces=np.zeros((1, 1, 3)), numbers=[1])
    with pytest.raises(ValueError, match="not a peptide dataset"):
        peptide_observables(frames)


@pytest.mark.slow
def test_resume_after_interrupt_is_bitwise(tmp_path, monkeypatch):
    from scalepool.data import _peptide as P

    kw = dict(
        n_frames=4, seed=2, segments=(("extended", 300.0),), stride_ps=0.02, equilibration_ps=0.02,
        minimize_iterations=20, progress=False, checkpoint_every=1,
    )  # fmt: skip
    full = P.generate_peptide(**kw)
    real, calls = P._frame, []

    def dying(context, parts):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(context, parts)

    monkeypatch.setattr(P, "_frame", dying)
    with pytest.raises(KeyboardInterrupt):
        P.generate_peptide(**kw, checkpoint=tmp_path / "ck")
    assert (tmp_path / "ck" / "segment_0" / "progress.json").exists()
    monkeypatch.setattr(P, "_frame", real)
    resumed = P.generate_peptide(**kw, checkpoint=tmp_path / "ck")
    assert resumed.meta["resumes"] == 1 and not (tmp_path / "ck").exists()
    np.testing.assert_array_equal(resumed.positions, full.positions)
    np.testing.assert_array_equal(resumed.forces, full.forces)
