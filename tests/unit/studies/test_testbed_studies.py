"""The testbed benchmarks (``folding``, ``graphene_profiles``): state split, stability check,
observables against MDAnalysis, the OpenMM reference against the dataset labels, binding-curve
errors against known shifts, and both studies end to end on tiny generated data."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from ase.calculators.calculator import Calculator, all_changes

from scalepool.data import FrameSet, binding_curves
from scalepool.models import build_branch, save_model
from scalepool.studies import run_study
from scalepool.studies._folding_md import (
    Topology,
    kabsch_rmsd,
    langevin_md,
    observables,
    openmm_calculator,
    stability,
)
from scalepool.studies._folding_study import folding_states
from scalepool.studies._graphene_study import curve_errors
from scalepool.testing import TOLERANCES

SMALL = {"n_features": 8, "n_interactions": 1, "n_rbf": 4}


# ------------------------------------------------------------------ folding: pure pieces
def test_states_partition_every_frame_at_the_documented_bounds():
    rmsd = np.concatenate([np.random.default_rng(0).uniform(0.0, 8.0, 500), [2.0, 4.0, 1.999, 4.001]])
    state = folding_states(rmsd, 2.0, 4.0)
    masks = {s: state == s for s in ("folded", "transition", "unfolded")}
    assert sum(m.astype(int) for m in masks.values()).tolist() == [1] * len(rmsd)  # each frame exactly once
    assert (rmsd[masks["folded"]] < 2.0).all() and (rmsd[masks["unfolded"]] > 4.0).all()
    assert state[-4:].tolist() == ["transition", "transition", "folded", "unfolded"]
    with pytest.raises(ValueError, match="must not exceed"):
        folding_states(rmsd, 5.0, 4.0)
    with pytest.raises(ValueError, match="non-finite"):
        folding_states(np.array([1.0, np.nan]))


def _chain(n=6, bond=1.5):
    positions = np.zeros((n, 3))  # a planar zigzag (not collinear: ZeroRotation needs inertia)
    positions[:, 0] = bond * np.cos(np.pi / 6) * np.arange(n)
    positions[:, 1] = bond * np.sin(np.pi / 6) * (np.arange(n) % 2)
    bonds = np.stack([np.arange(n - 1), np.arange(1, n)], axis=1)
    return positions, bonds, np.full(n - 1, bond)


def test_stability_flags_stretch_departure_and_nan():
    positions, bonds, r0 = _chain()
    calm = positions + np.random.default_rng(1).normal(0, 0.03, positions.shape)
    ok = stability(calm, bonds, r0)
    assert not ok["blown_up"] and 0 < ok["max_bond_stretch"] < 0.15
    stretched = positions.copy()
    stretched[3:] += 0.6 * (positions[3] - positions[2])  # bond 2-3 at 160 %
    out = stability(stretched, bonds, r0, max_bond_stretch=0.5)
    assert out["blown_up"] and out["reason"] == "bond stretch"
    assert out["max_bond_stretch"] == pytest.approx(0.6)
    gone = np.vstack([positions, [[0.0, 50.0, 0.0]]])  # an extra atom with no bond, far away
    out = stability(gone, bonds, r0, detach_distance=3.0)
    assert out["blown_up"] and out["reason"] == "atom left" and out["isolated_atoms"] == 1
    bad = positions.copy()
    bad[2, 1] = np.nan
    assert stability(bad, bonds, r0)["reason"] == "non-finite"


class _Kick(Calculator):
    """A force field that pushes atom 0 away from the rest with a constant 50 eV/Å: a blow-up."""

    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        forces = np.zeros((len(self.atoms), 3))
        forces[0, 0] = -50.0
        self.results = {"energy": 50.0 * float(self.atoms.positions[0, 0]), "forces": forces}


class _Harmonic(Calculator):
    """Harmonic bonds of a chain (k = 20 eV/Å^2): a stable force field."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, bonds, r0):
        super().__init__()
        self.bonds, self.r0 = bonds, r0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        x = self.atoms.positions
        d = x[self.bonds[:, 1]] - x[self.bonds[:, 0]]
        r = np.linalg.norm(d, axis=1)
        g = (20.0 * (r - self.r0) / r)[:, None] * d
        forces = np.zeros_like(x)
        np.add.at(forces, self.bonds[:, 0], g)
        np.add.at(forces, self.bonds[:, 1], -g)
        self.results = {"energy": float(10.0 * ((r - self.r0) ** 2).sum()), "forces": forces}


def test_md_stops_a_blown_up_trajectory_and_keeps_a_stable_one():
    positions, bonds, r0 = _chain()
    top = SimpleNamespace(bonds=bonds, ca=np.arange(len(positions)))
    settings = dict(steps=400, record_every=10, timestep_fs=0.5, temperature_k=300.0, friction_per_ps=1.0,
                    seed=0, max_bond_stretch=0.5, detach_distance=3.0)  # fmt: skip
    numbers = np.full(len(positions), 6)
    samples, summary = langevin_md(_Kick(), numbers, positions, top, positions, **settings)
    assert summary["blown_up"] and summary["reason"] in ("bond stretch", "atom left")
    assert summary["steps_done"] < 400 and summary["max_bond_stretch"] > 0.5
    assert samples["step"].iloc[-1] == summary["steps_done"]
    samples, summary = langevin_md(_Harmonic(bonds, r0), numbers, positions, top, positions, **settings)
    assert not summary["blown_up"] and summary["steps_done"] == 400
    assert len(samples) == 41 and summary["max_bond_stretch"] < 0.3


def test_kabsch_rmsd_matches_mdanalysis():
    from MDAnalysis.analysis.rms import rmsd

    rng = np.random.default_rng(2)
    ref = rng.normal(0, 4, (10, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    x = (ref + rng.normal(0, 0.7, ref.shape)) @ q.T + 5.0
    assert kabsch_rmsd(x, ref) == pytest.approx(rmsd(x, ref, center=True, superposition=True), rel=1e-10)
    assert kabsch_rmsd(ref @ q.T + 3.0, ref) == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------ folding: on real peptide data
@pytest.fixture(scope="module")
def peptide(tmp_path_factory):
    from scalepool.data import generate_peptide

    frames = generate_peptide(n_frames=4, segments=(("hairpin", 300.0), ("extended", 300.0)), stride_ps=0.02,
                              equilibration_ps=0.02, minimize_iterations=50, progress=False)  # fmt: skip
    path = tmp_path_factory.mktemp("peptide") / "chignolin.npz"
    frames.save(path)
    return path


@pytest.mark.slow
def test_openmm_reference_and_observables_match_the_dataset(peptide):
    from scalepool.data import peptide_observables, peptide_reference

    frames = FrameSet.load(peptide)
    top = Topology(frames)
    calc = openmm_calculator(top.system())
    stored = peptide_observables(frames)
    reference_ca = np.asarray(frames.meta["reference_ca"])
    for i in range(frames.n_frames):
        calc.calculate(_atoms(frames, i), ["forces"])
        independent = peptide_reference(frames, i)["forces"]  # a fresh context of the generator's own system
        np.testing.assert_allclose(calc.results["forces"], independent, atol=2e-4)
        np.testing.assert_allclose(calc.results["forces"], frames.forces[i], atol=2e-4)
        obs = observables(frames.positions[i].astype(np.float64), top.ca, reference_ca)
        assert obs["ca_rmsd"] == pytest.approx(stored["ca_rmsd"][i], abs=1e-4)
        assert obs["radius_of_gyration"] == pytest.approx(stored["radius_of_gyration"][i], abs=1e-4)
    assert len(top.ca) == 10 and len(top.bonds) >= frames.n_atoms - 1


def _atoms(frames, i):
    from ase import Atoms

    return Atoms(numbers=frames.numbers, positions=frames.positions[i].astype(np.float64))


@pytest.mark.slow
def test_folding_study_end_to_end(peptide, tmp_path):
    model = save_model(build_branch("short", **SMALL), tmp_path / "short.pt")
    out, _ = run_study("folding", (peptide, [model]), tmp_path / "folding", split="all", md_steps=20,
                       record_every=10, folded_below=1.0, unfolded_above=3.0)  # fmt: skip
    frames = FrameSet.load(peptide)
    errors = pd.read_csv(out / "state_errors.csv").set_index("state")
    assert errors.loc[["folded", "transition", "unfolded"], "n_frames"].sum() == frames.n_frames
    assert errors.loc["overall", "n_frames"] == frames.n_frames
    per_frame = pd.read_csv(out / "frame_errors.csv")
    pooled = np.average(per_frame["mae_meV_A"])  # equal atoms per frame: the mean of frame MAEs
    assert errors.loc["overall", "mae_meV_A"] == pytest.approx(pooled, rel=1e-6)
    summary = pd.read_csv(out / "md_summary.csv")
    assert set(summary["model"]) == {"reference", "short"} and set(summary["start"]) == {"folded", "unfolded"}
    ref = summary[summary["model"] == "reference"]
    assert (~ref["blown_up"]).all() and (ref["steps_done"] == 20).all() and (ref["ca_rmsd_w1"] == 0).all()
    samples = pd.read_csv(out / "md_samples.csv")
    first = samples[(samples["step"] == 0) & (samples["start"] == "folded")]
    assert first["ca_rmsd"].nunique() == 1  # every model starts from the same frame
    assert (out / "provenance.json").exists()


# ------------------------------------------------------------------ graphene
def _profile():
    """A synthetic profile: two molecules on one grid, Morse-like binding curves (eV)."""
    heights = np.arange(2.5, 10.01, 0.5)
    molecules = ["benzene"] * len(heights) + ["water"] * len(heights)
    depth = {"benzene": 0.5, "water": 0.1}
    refs = {"sheet": -100.0, "benzene": -20.0, "water": -5.0}
    energy = []
    for name in ("benzene", "water"):
        e_b = depth[name] * ((1 - np.exp(-1.2 * (heights - 3.4))) ** 2 - 1)
        energy.extend(e_b + refs["sheet"] + refs[name])
    n = len(molecules)
    frames = FrameSet(positions=np.zeros((n, 1, 3)) + np.arange(n)[:, None, None], forces=np.zeros((n, 1, 3)),
                      numbers=np.array([6]), energy=np.asarray(energy),
                      meta={"frame_molecule": molecules, "frame_height": np.tile(heights, 2).tolist(),
                            "reference_energies": refs})  # fmt: skip
    return frames


def test_curve_errors_zero_for_reference_and_equal_to_a_shift():
    profile = _profile()
    ref = binding_curves(profile)
    for name, curve in ref.items():
        assert all(v == 0.0 for v in curve_errors(curve, curve).values()), name
    shifted = binding_curves(profile, energy=profile.energy + 0.03)
    for name in ref:
        errors = curve_errors(ref[name], shifted[name], tail_above=6.0)
        for key in ("profile_rmse_eV", "e_bind_error_eV", "tail_rmse_eV", "tail_max_abs_error_eV"):
            assert errors[key] == pytest.approx(0.03, abs=1e-9), key
        assert errors["d_eq_error_A"] == pytest.approx(0.0, abs=1e-9)
    # an error confined to the tail: the tail RMSE sees all of it, the profile RMSE its share
    energy = profile.energy.copy()
    heights = np.asarray(profile.meta["frame_height"])
    energy[heights > 6.0] += 0.02
    errors = curve_errors(ref["water"], binding_curves(profile, energy=energy)["water"], tail_above=6.0)
    share = np.mean(ref["water"]["heights"] > 6.0)
    assert errors["tail_rmse_eV"] == pytest.approx(0.02)
    assert errors["profile_rmse_eV"] == pytest.approx(0.02 * np.sqrt(share))
    # the spline minimum moves only through the spline's weak non-locality
    assert abs(errors["e_bind_error_eV"]) < 1e-4


@pytest.mark.slow
def test_graphene_study_end_to_end(tmp_path):
    from scalepool.data import generate_graphene, isolated_references, save_graphene
    from scalepool.md import ScalepoolCalculator

    result = generate_graphene(
        n_frames=2, molecules=("water",), sheet_size=2, profile_step=2.5, progress=False
    )
    data = save_graphene(result, tmp_path / "graphene.npz")[0]
    model = build_branch("short", **SMALL)
    path = save_model(model, tmp_path / "short.pt")
    out, _ = run_study("graphene_profiles", (data, [path]), tmp_path / "graphene_profiles")
    curves = pd.read_csv(out / "curves.csv")
    profile = FrameSet.load(tmp_path / "graphene.profile.npz")
    ref = binding_curves(profile)["water"]
    mine = curves[(curves["model"] == "reference")]
    np.testing.assert_allclose(mine["binding_eV"], ref["binding"], rtol=0, atol=1e-12)
    # the model's curve, recomputed frame by frame through the ASE calculator
    calc = ScalepoolCalculator(model)
    own = {}
    for name, atoms in isolated_references(profile.meta).items():
        atoms.calc = calc
        own[name] = atoms.get_potential_energy()
    order = np.argsort(np.asarray(profile.meta["frame_height"]))
    expected = []
    for i in order:
        atoms = _frame_atoms(profile, int(i))
        atoms.calc = calc
        expected.append(atoms.get_potential_energy() - own["sheet"] - own["water"])
    got = curves[curves["model"] == "short"]["binding_eV"].to_numpy()
    tol = TOLERANCES[torch.float32]
    np.testing.assert_allclose(got, expected, atol=50 * tol["atol"], rtol=0)
    errors = pd.read_csv(out / "errors.csv").iloc[0]
    assert errors["profile_rmse_eV"] == pytest.approx(np.sqrt(np.mean((got - ref["binding"]) ** 2)), rel=1e-6)


def _frame_atoms(frames: FrameSet, index: int):
    from ase import Atoms

    sl = frames.frame_slices()[index]
    return Atoms(numbers=frames.numbers_flat[sl], positions=frames.positions_flat[sl], cell=frames.cells[index],
                 pbc=frames.pbc[index])  # fmt: skip
