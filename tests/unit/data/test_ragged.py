"""Ragged datasets: frames that differ in atoms, species and boundaries; ASE formats with label keys."""

from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.stress import voigt_6_to_full_3x3_stress

from scalepool.data import DatasetError, FrameSet, random_split, read_frames, write_frames


def emt_images(n=6, seed=0, labels="arrays"):
    """Open water/methane molecules beside periodic Cu-Ni cells, labelled by ASE's EMT.

    ``labels``: "arrays" stores REF_energy / REF_forces / REF_stress; "calc" keeps
    them as calculator results (what traj, db and VASP files give)."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        if i % 2:
            atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1 + i % 3, 1, 1))
            atoms.numbers[rng.choice(len(atoms), 2, replace=False)] = 28
        else:
            atoms = molecule(["H2O", "CH4", "NH3"][i % 3])
            atoms.center(vacuum=0.0)
        atoms.rattle(0.03, seed=i)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        stress = atoms.get_stress() if atoms.pbc.all() else None
        if labels == "arrays":
            atoms.calc = None
            atoms.info["REF_energy"] = energy
            atoms.arrays["REF_forces"] = forces
            if stress is not None:
                atoms.info["REF_stress"] = voigt_6_to_full_3x3_stress(stress)
        images.append(atoms)
    return images


def test_ragged_accessors_match_each_frame():
    images = emt_images()
    frames = FrameSet.from_atoms(images)
    assert frames.ragged and frames.n_frames == len(images)
    np.testing.assert_array_equal(frames.atom_counts, [len(a) for a in images])
    np.testing.assert_array_equal(frames.offsets, np.concatenate([[0], np.cumsum([len(a) for a in images])]))
    for i, atoms in enumerate(images):
        one = frames.frame(i)
        assert not one.ragged and one.n_frames == 1
        np.testing.assert_array_equal(one.numbers, atoms.numbers)
        np.testing.assert_allclose(one.positions[0], atoms.positions)
        np.testing.assert_allclose(one.forces[0], atoms.arrays["REF_forces"], rtol=1e-6, atol=1e-6)
        assert one.energy[0] == pytest.approx(atoms.info["REF_energy"])
        assert one.periodic == bool(atoms.pbc.all())
        if atoms.pbc.all():
            np.testing.assert_allclose(one.cell[0], atoms.cell.array)
        sl = frames.frame_slices()[i]
        np.testing.assert_array_equal(frames.numbers_flat[sl], atoms.numbers)
    np.testing.assert_array_equal(frames.pbc.all(axis=1), [a.pbc.all() for a in images])
    np.testing.assert_array_equal(frames.cells[0], np.zeros((3, 3)))


def test_species_counts_match_brute_force():
    images = emt_images(7)
    species, counts = FrameSet.from_atoms(images).species_counts()
    for f, atoms in enumerate(images):
        for s, z in enumerate(species):
            assert counts[f, s] == int((atoms.numbers == z).sum())


@pytest.mark.parametrize(
    ("name", "instead"),
    [("positions", "positions_flat"), ("forces", "forces_flat"), ("numbers", "numbers_flat"),
     ("cell", "cells"), ("n_atoms", "atom_counts")],
)  # fmt: skip
def test_fixed_only_attributes_refuse_ragged_data(name, instead):
    frames = FrameSet.from_atoms(emt_images())
    with pytest.raises(DatasetError, match=rf"FrameSet.{name} exists for the fixed layout only.*{instead}"):
        getattr(frames, name)


def test_npz_roundtrip_of_ragged_layout(tmp_path):
    frames = FrameSet.from_atoms(emt_images())
    path = frames.save(tmp_path / "ragged.npz")
    import zipfile

    assert "n_atoms.npy" in zipfile.ZipFile(path).namelist()
    back = FrameSet.load(path)
    assert back.ragged and back.checksum() == frames.checksum()
    np.testing.assert_array_equal(back.pbc, frames.pbc)
    np.testing.assert_array_equal(back.positions_flat, frames.positions_flat)
    np.testing.assert_array_equal(back.energy, frames.energy)
    assert back.stress is None  # open frames have none, so the dataset keeps none


def test_stress_of_periodic_frames_in_ase_convention():
    crystals = [a for a in emt_images(6) if a.pbc.all()]
    frames = FrameSet.from_atoms(crystals)
    for f, atoms in enumerate(crystals):
        atoms.calc = EMT()
        np.testing.assert_allclose(
            frames.stress[f], voigt_6_to_full_3x3_stress(atoms.get_stress()), atol=1e-10
        )


def test_fixed_layout_when_frames_share_atoms():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    images = []
    for seed in range(3):
        a = atoms.copy()
        a.rattle(0.05, seed=seed)
        a.calc = EMT()
        a.get_forces()
        images.append(a)
    frames = FrameSet.from_atoms(images)
    assert not frames.ragged and frames.positions.shape == (3, 4, 3)
    ragged = FrameSet.from_atoms(images, ragged=True)
    assert ragged.ragged
    np.testing.assert_array_equal(ragged.forces_flat, frames.forces_flat)


def test_subset_and_concatenate():
    frames = FrameSet.from_atoms(emt_images(6))
    sub = frames[[4, 1]]
    np.testing.assert_array_equal(sub.atom_counts, frames.atom_counts[[4, 1]])
    np.testing.assert_array_equal(sub.numbers_flat, frames.numbers_flat[frames.atom_index([4, 1])])
    back = FrameSet.concatenate([frames[:2], frames[2:]])
    assert back.checksum() == frames.checksum()
    fixed_a = FrameSet.from_atoms([emt_images(1)[0]])
    fixed_b = FrameSet.from_atoms([emt_images(2)[1]])
    joined = FrameSet.concatenate([fixed_a, fixed_b])
    assert joined.ragged and joined.atom_counts.tolist() == [3, len(emt_images(2)[1])]


def test_random_split_is_seeded_disjoint_and_complete():
    blocks = random_split(50, (0.7, 0.2, 0.1), seed=3)
    joined = np.concatenate(list(blocks.values()))
    assert sorted(joined.tolist()) == list(range(50))
    assert [len(b) for b in blocks.values()] == [35, 10, 5]
    assert all(np.array_equal(blocks[k], random_split(50, (0.7, 0.2, 0.1), seed=3)[k]) for k in blocks)
    assert not np.array_equal(blocks["test"], random_split(50, (0.7, 0.2, 0.1), seed=4)["test"])
    assert not np.array_equal(blocks["train"], np.arange(35))  # not time blocks


# ------------------------------------------------------------------ formats through ASE
@pytest.mark.parametrize(
    ("name", "fmt"), [("data.extxyz", "extxyz"), ("data.traj", "traj"), ("data.db", "db")]
)
def test_ase_formats_read_labels_of_an_independent_calculator(tmp_path, name, fmt):
    images = emt_images(6, labels="calc")
    path = tmp_path / name
    ase.io.write(path, images, format=fmt)
    frames = read_frames(path, check_physics=False)
    assert frames.ragged
    for f, atoms in enumerate(images):
        reference = atoms.copy()
        reference.calc = EMT()
        one = frames.frame(f)
        np.testing.assert_allclose(one.forces[0], reference.get_forces(), atol=1e-5)
        assert one.energy[0] == pytest.approx(reference.get_potential_energy(), abs=1e-6)


VASP_DATA = Path(ase.__file__).parent / "test" / "testdata" / "vasp"


@pytest.mark.parametrize("name", ["OUTCAR_example_1", "vasprun_pstress.xml"])
def test_vasp_files_read_with_their_labels(tmp_path, name):
    # ASE writes neither OUTCAR nor vasprun.xml: read the VASP outputs ASE ships for its own tests
    source = VASP_DATA / name
    if not source.exists():
        pytest.skip(f"ASE's test data {source} is not installed")
    path = tmp_path / ("OUTCAR" if name.startswith("OUTCAR") else "vasprun.xml")
    path.write_bytes(source.read_bytes())
    frames = read_frames(path, check_physics=False)
    images = ase.io.read(source, index=":", format="vasp-out" if name.startswith("OUTCAR") else "vasp-xml")
    assert frames.n_frames == len(images)
    for f, atoms in enumerate(images):
        one = frames.frame(f)
        np.testing.assert_allclose(one.forces[0], atoms.get_forces(), atol=1e-6)
        assert one.energy[0] == pytest.approx(atoms.get_potential_energy())
        if frames.stress is not None:
            np.testing.assert_allclose(frames.stress[f], voigt_6_to_full_3x3_stress(atoms.get_stress()))
    bad = tmp_path / "OUTCAR.bad"
    bad.write_text("not an outcar\n")
    with pytest.raises(DatasetError, match=r"OUTCAR.bad is not a readable vasp-out file"):
        read_frames(bad)


def test_trr_and_h5md_with_topology_roundtrip(tmp_path):
    atoms = molecule("H2O")
    images = []
    for seed in range(3):
        a = atoms.copy()
        a.rattle(0.02, seed=seed)
        a.calc = EMT()
        a.get_forces()
        images.append(a)
    frames = FrameSet.from_atoms(images)
    for name in ("w.trr", "w.h5md"):
        path = write_frames(frames, tmp_path / name)
        back = read_frames(path, topology=tmp_path / "w.pdb", check_physics=False)
        np.testing.assert_array_equal(back.numbers, atoms.numbers)
        np.testing.assert_allclose(back.forces, frames.forces, atol=1e-4)


def test_ragged_data_refuse_fixed_only_formats(tmp_path):
    frames = FrameSet.from_atoms(emt_images())
    with pytest.raises(DatasetError, match=r"ragged.*write .npz or .extxyz"):
        write_frames(frames, tmp_path / "x.trr")
    back = read_frames(write_frames(frames, tmp_path / "x.extxyz"), check_physics=False)
    np.testing.assert_array_equal(back.atom_counts, frames.atom_counts)
    np.testing.assert_array_equal(back.numbers_flat, frames.numbers_flat)
    np.testing.assert_allclose(back.forces_flat, frames.forces_flat, atol=1e-7)  # extxyz keeps 8 decimals


# ------------------------------------------------------------------ bad input
def test_bad_mismatched_forces_key_names_file_and_frame(tmp_path):
    path = tmp_path / "keys.extxyz"
    ase.io.write(path, emt_images(3))
    with pytest.raises(
        DatasetError, match=r"keys.extxyz: frame 0 has no forces \(looked for 'MACE_forces'.*REF_forces"
    ):
        read_frames(path, forces_key="MACE_forces")
    with pytest.raises(DatasetError, match=r"keys.extxyz: frame 0 has no energy 'dft_energy'.*REF_energy"):
        read_frames(path, energy_key="dft_energy")


def test_bad_missing_forces_names_the_frame(tmp_path):
    images = emt_images(3)
    del images[2].arrays["REF_forces"]
    path = tmp_path / "missing.extxyz"
    ase.io.write(path, images)
    with pytest.raises(DatasetError, match=r"missing.extxyz: frame 2 has no forces"):
        read_frames(path)


def test_bad_stress_key_on_open_frames(tmp_path):
    path = tmp_path / "open.extxyz"
    ase.io.write(path, emt_images(4))
    with pytest.raises(
        DatasetError, match=r"open.extxyz: frame 0 is not periodic .* --stress-key 'REF_stress'"
    ):
        read_frames(path, stress_key="REF_stress")


def test_bad_partial_pbc_and_mixed_arrays():
    slab = bulk("Cu", "fcc", a=3.6, cubic=True)
    slab.pbc = [True, True, False]
    slab.calc = EMT()
    slab.get_forces()
    with pytest.raises(DatasetError, match=r"frame 0 is periodic along some axes only"):
        FrameSet.from_atoms([slab])
    with pytest.raises(DatasetError, match=r"ragged 'positions' must have shape \(T, 3\) = \(5, 3\)"):
        FrameSet(np.zeros((4, 3)), np.zeros((4, 3)), np.ones(4, int), atom_counts=[2, 3])
