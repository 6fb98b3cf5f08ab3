"""The molecule-on-graphene testbed: stored GFN2-xTB labels against tblite's own ASE calculator,
finite-difference forces, the energy profile, checkpoint resume and input errors.

A 4x4 sheet (32 C) keeps one single point near a second on 2 cores."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from scalepool.cli import main
from scalepool.data import (
    FrameSet,
    binding_curves,
    graphene_profile_path,
    graphene_reference,
    isolated_references,
)
from scalepool.data import _graphene as G
from scalepool.data import _graphene_profile as G_profile
from scalepool.data._nacl_checkpoint import CheckpointMismatch

tblite_ase = pytest.importorskip("tblite.ase")

SMALL = ["--sheet-size", "4", "--profile-step", "2.5", "--no-progress"]


def _tblite(atoms: Atoms) -> tuple[float, np.ndarray]:
    """Energy (eV) and forces (eV/Å) from tblite's own ASE calculator (GFN2-xTB, 300 K, accuracy 1)."""
    atoms = atoms.copy()
    atoms.calc = tblite_ase.TBLite(method="GFN2-xTB", electronic_temperature=300.0, accuracy=1.0, verbosity=0)
    return atoms.get_potential_energy(), atoms.get_forces()


def _atoms(frames: FrameSet, index: int) -> Atoms:
    one = frames.frame(index)
    return Atoms(one.numbers, positions=one.positions[0], cell=frames.cells[index], pbc=True)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("graphene") / "g.npz"
    assert main(["data", "graphene", "--out", str(out), "--frames", "6", "--seed", "1", *SMALL]) == 0
    return out


@pytest.mark.slow
def test_cli_frames_equal_direct_tblite(written):
    frames = FrameSet.load(written)
    assert frames.ragged and frames.n_frames == 6
    assert sorted(set(frames.meta["frame_molecule"])) == ["benzene", "pyridine", "water"]
    assert frames.meta["xtb"]["method"] == "GFN2-xTB" and frames.meta["versions"]["tblite"]
    assert not (written.parent / "g.npz.partial").exists()  # checkpoint removed on success
    for i in range(frames.n_frames):
        energy, forces = _tblite(_atoms(frames, i))
        assert frames.energy[i] == pytest.approx(energy, abs=1e-5)
        np.testing.assert_allclose(frames.frame(i).forces[0], forces, rtol=0, atol=1e-4)
    ref = graphene_reference(frames, 2)  # the documented recomputation
    assert ref["energy"] == pytest.approx(frames.energy[2], abs=1e-5)


@pytest.mark.slow
def test_sampled_geometry(written):
    frames = FrameSet.load(written)
    heights = np.asarray(frames.meta["frame_height"])
    assert ((heights > 2.5 - 0.3) & (heights < 10.0 + 0.3)).all()
    for i in range(frames.n_frames):
        atoms = _atoms(frames, i)
        sheet, mol = atoms.positions[:32], atoms.positions[32:]
        assert (atoms.numbers[:32] == 6).all()
        assert np.abs(sheet[:, 2] - sheet[:, 2].mean()).max() < 0.3  # thermal ripples only
        assert mol[:, 2].min() - sheet[:, 2].mean() == pytest.approx(heights[i], abs=1e-9)


@pytest.mark.slow
def test_profile_file(written):
    profile = FrameSet.load(graphene_profile_path(written))
    meta = profile.meta
    assert meta["heights"] == pytest.approx([2.5, 5.0, 7.5, 10.0])
    assert profile.n_frames == 3 * 4
    energy, forces = _tblite(_atoms(profile, 5))
    assert profile.energy[5] == pytest.approx(energy, abs=1e-5)
    # isolated references, recomputed: the sheet alone
    sheet = G.graphene_sheet(4, 30.0)
    assert meta["reference_energies"]["sheet"] == pytest.approx(_tblite(sheet)[0], abs=1e-5)
    # binding energy of benzene: bound near contact-plus-1 Å, repulsive at 2.5 Å
    ref = meta["reference_energies"]
    idx = [i for i, m in enumerate(meta["frame_molecule"]) if m == "benzene"]
    binding = profile.energy[idx] - ref["sheet"] - ref["benzene"]
    assert binding[1] < 0 < binding[0]
    curves = binding_curves(profile)
    np.testing.assert_allclose(curves["benzene"]["binding"], binding)
    assert 2.5 < curves["benzene"]["d_eq"] < 7.5 and curves["benzene"]["e_bind"] <= binding.min()
    rebuilt = isolated_references(meta)  # a model's own references come from these structures
    assert ref["water"] == pytest.approx(_tblite(rebuilt["water"])[0], abs=1e-5)


def test_equilibrium_of_a_lennard_jones_curve():
    sigma, eps = 3.2, 0.1  # Å, eV
    d = np.arange(2.5, 10.0001, 0.1)
    e = 4 * eps * ((sigma / d) ** 12 - (sigma / d) ** 6)
    d_eq, e_min = G_profile.equilibrium(d, e)
    assert d_eq == pytest.approx(2 ** (1 / 6) * sigma, abs=5e-3)
    assert e_min == pytest.approx(-eps, abs=1e-3)
    assert G_profile.equilibrium(d[:5], -d[:5]) == (
        pytest.approx(d[4]),
        pytest.approx(-d[4]),
    )  # minimum at the end


@pytest.mark.slow
def test_forces_are_minus_energy_gradient():
    atoms = G.sample_frame(dict(seed=3, molecules=["water"], sheet_size=2, cell_height=30.0,
                                height_min=2.5, height_max=3.0, displacement=0.05), 0)  # fmt: skip
    _, forces = G.xtb_single_point(atoms)
    h = 1e-3  # Å
    for atom, axis in ((len(atoms) - 3, 2), (0, 0)):  # the water O along z, a carbon along x
        energies = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[atom, axis] += sign * h
            energies.append(G.xtb_single_point(moved)[0])
        assert -(energies[0] - energies[1]) / (2 * h) == pytest.approx(forces[atom, axis], abs=2e-3)


def test_resume_after_interrupt(tmp_path, monkeypatch):
    kw = dict(n_frames=4, seed=5, molecules=("water",), sheet_size=2, profile_step=None, progress=False)
    full = G.generate_graphene(**kw)
    real, calls = G.xtb_single_point, []

    def dying(atoms, **settings):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(atoms, **settings)

    monkeypatch.setattr(G, "xtb_single_point", dying)
    with pytest.raises(KeyboardInterrupt):
        G.generate_graphene(**kw, checkpoint=tmp_path / "ck")
    calls.clear()
    monkeypatch.setattr(G, "xtb_single_point", lambda atoms, **s: (calls.append(1), real(atoms, **s))[1])
    resumed = G.generate_graphene(**kw, checkpoint=tmp_path / "ck", out=tmp_path / "w.npz")
    assert len(calls) == 2  # two frames were committed before the interrupt
    assert not (tmp_path / "ck").exists()
    for a, b in zip(full["frames"], resumed["frames"], strict=True):
        # tblite's threaded sums differ between calls in the last bits (~2e-15 eV/Å)
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), rtol=0, atol=1e-10)
    # a checkpoint of other parameters is refused, naming the parameter
    monkeypatch.setattr(G, "xtb_single_point", dying)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        G.generate_graphene(**kw, checkpoint=tmp_path / "ck2")
    with pytest.raises(CheckpointMismatch, match="seed"):
        G.generate_graphene(**{**kw, "seed": 6}, checkpoint=tmp_path / "ck2")


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown molecule 'methane'"):
        G.gas_molecule("methane")
    with pytest.raises(ValueError, match="molecules must be"):
        G.generate_graphene(n_frames=1, molecules=("argon",), progress=False)
    with pytest.raises(ValueError, match="cell_height"):
        G.generate_graphene(n_frames=1, cell_height=20.0, progress=False)
    with pytest.raises(ValueError, match="end in .npz"):
        G.generate_graphene(
            n_frames=1, sheet_size=2, profile_step=None, progress=False, out=tmp_path / "g.xyz"
        )
    assert main(["data", "graphene", "--out", str(tmp_path / "g.npz"), "--device", "cuda"]) == 2
