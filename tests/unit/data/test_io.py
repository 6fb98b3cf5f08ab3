"""Trajectory I/O: round trips, independent reads with ASE and MDAnalysis, bad inputs."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import ase.io
import MDAnalysis as mda
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from MDAnalysis.lib.mdamath import triclinic_box

from scalepool.data import DatasetError, FrameSet, _io_mda
from scalepool.data._io import SUPPORTED_READ, SUPPORTED_WRITE, companion_topology, read_frames, write_frames
from scalepool.units import (
    ANGSTROM_TO_NM,
    KJ_PER_MOL_ANGSTROM_TO_EV_PER_ANGSTROM,
    KJ_PER_MOL_NM_TO_EV_PER_ANGSTROM,
    NM_TO_ANGSTROM,
)

# A water, two Na and a Cl in a 10 Å triclinic box (GROMACS orientation: lower triangular).
NUMBERS = np.array([8, 1, 1, 11, 17, 11])
CELL = np.array([[10.0, 0.0, 0.0], [2.0, 9.8, 0.0], [1.0, 1.5, 9.5]])
F32 = dict(rtol=0, atol=2e-6)  # eV/Å, float32 forces of order 1
TRR_POS = dict(rtol=0, atol=5e-6)  # Å, single-precision nm coordinates near 10 Å


def make_frames(n_frames: int = 3, periodic: bool = True, seed: int = 0) -> FrameSet:
    rng = np.random.default_rng(seed)
    n_atoms = len(NUMBERS)
    parts = {name: rng.normal(size=(n_frames, n_atoms, 3)) for name in ("bonded", "direct", "reciprocal")}
    parts = {name: value.astype(np.float32) for name, value in parts.items()}
    cell = np.broadcast_to(CELL, (n_frames, 3, 3)) * (1 + 0.01 * np.arange(n_frames))[:, None, None]
    return FrameSet(
        positions=rng.random((n_frames, n_atoms, 3)) @ CELL,
        forces=sum(parts.values()),
        numbers=NUMBERS,
        cell=cell if periodic else None,
        energy=rng.normal(size=n_frames),
        force_parts=parts,
        meta={"generator": "test", "seed": 0, "note": 'quoted "text" = fine'},
    )


@pytest.fixture()
def frames() -> FrameSet:
    return make_frames()


def assert_same(a: FrameSet, b: FrameSet, positions_atol: float = 1e-7) -> None:
    np.testing.assert_array_equal(a.numbers, b.numbers)
    np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=positions_atol)
    np.testing.assert_allclose(a.forces, b.forces, **F32)
    if a.cell is None:
        assert b.cell is None
    else:
        np.testing.assert_allclose(a.cell, b.cell, rtol=0, atol=positions_atol)


def write_raw_trr(path, positions, forces=None, boxes=None, names=("O",) * 2):
    """A TRR written by MDAnalysis directly, bypassing scalepool's checks.

    positions: (F, N, 3) Å; forces: (F, N, 3) kJ/(mol·Å) or None; boxes: per-frame (3, 3) or None.
    """
    n_frames, n_atoms, _ = np.shape(positions)
    u = mda.Universe.empty(n_atoms, trajectory=True)
    u.add_TopologyAttr("names", list(names))
    u.add_TopologyAttr("elements", list(names))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        u.atoms.write(str(companion_topology(path)))
    with mda.Writer(str(path), n_atoms) as writer:
        for f in range(n_frames):
            ts = u.trajectory.ts
            ts.positions = positions[f]
            if forces is not None:
                ts.has_forces = True
                ts.forces = forces[f]
            box = None if boxes is None else boxes[f]
            ts.dimensions = None if box is None else triclinic_box(*box)
            writer.write(u.atoms)


def extxyz_text(
    rows: list[str], comment: str = 'Properties=species:S:1:pos:R:3:REF_forces:R:3 pbc="F F F"'
) -> str:
    return f"{len(rows)}\n{comment}\n" + "\n".join(rows) + "\n"


WATER_ROWS = ["O 0 0 0 1 0 0", "H 0.96 0 0 -0.5 0 0", "H -0.24 0.93 0 -0.5 0 0"]


# ------------------------------------------------------------ round trips
def test_format_tables_list_extensions():
    assert SUPPORTED_READ["extxyz"] == (".extxyz", ".xyz")
    assert set(SUPPORTED_WRITE) == {"npz", "extxyz", "trr", "h5md"}


def test_npz_extxyz_npz_keeps_everything(tmp_path, frames):
    first = write_frames(frames, tmp_path / "a.npz")
    via_xyz = read_frames(write_frames(read_frames(first), tmp_path / "b.extxyz"))
    back = FrameSet.load(write_frames(via_xyz, tmp_path / "c.npz"))
    assert_same(frames, back, positions_atol=1e-7)
    np.testing.assert_allclose(back.energy, frames.energy, rtol=1e-12)
    assert sorted(back.force_parts) == ["bonded", "direct", "reciprocal"]
    for part, value in frames.force_parts.items():
        np.testing.assert_allclose(back.force_parts[part], value, **F32)
    assert back.meta == frames.meta


def test_extxyz_matches_plain_ase_read(tmp_path, frames):
    path = write_frames(frames, tmp_path / "a.xyz")
    images = ase.io.read(path, index=":")
    assert len(images) == frames.n_frames
    for f, atoms in enumerate(images):
        np.testing.assert_array_equal(atoms.numbers, frames.numbers)
        np.testing.assert_allclose(atoms.positions, frames.positions[f], rtol=0, atol=1e-7)
        np.testing.assert_allclose(atoms.cell.array, frames.cell[f], rtol=0, atol=1e-12)
        assert atoms.pbc.all()
        np.testing.assert_allclose(atoms.arrays["REF_forces"], frames.forces[f], **F32)
        np.testing.assert_allclose(atoms.arrays["forces_direct"], frames.force_parts["direct"][f], **F32)
        assert atoms.info["REF_energy"] == pytest.approx(frames.energy[f], rel=1e-12)


def test_extxyz_calculator_results_and_custom_keys(tmp_path):
    rng = np.random.default_rng(1)
    images = []
    for _ in range(2):
        atoms = Atoms("OH2", positions=rng.random((3, 3)), cell=CELL, pbc=True)
        atoms.arrays["dft_forces"] = rng.normal(size=(3, 3))
        atoms.info["dft_energy"] = float(rng.normal())
        atoms.calc = SinglePointCalculator(atoms, energy=-3.5, forces=np.full((3, 3), 0.25))
        images.append(atoms)
    path = tmp_path / "calc.extxyz"
    ase.io.write(path, images)
    default = read_frames(path)  # plain energy/forces come back through the calculator
    np.testing.assert_allclose(default.forces, 0.25)
    np.testing.assert_allclose(default.energy, -3.5)
    custom = read_frames(path, forces_key="dft_forces", energy_key="dft_energy")
    np.testing.assert_allclose(custom.forces, [a.arrays["dft_forces"] for a in images], **F32)
    np.testing.assert_allclose(custom.energy, [a.info["dft_energy"] for a in images])
    np.testing.assert_allclose(custom.cell[1], CELL)


def test_nonperiodic_extxyz_has_no_cell(tmp_path):
    path = tmp_path / "mol.xyz"
    path.write_text(extxyz_text(WATER_ROWS))
    frames = read_frames(path)
    assert frames.cell is None and frames.energy is None
    np.testing.assert_allclose(frames.forces[0, :, 0], [1.0, -0.5, -0.5])


def test_trr_roundtrip_writes_companion_topology(tmp_path, frames):
    path = write_frames(frames, tmp_path / "traj.trr")
    assert companion_topology(path).is_file()
    back = read_frames(path)  # finds traj.pdb beside it
    assert_same(frames, back, positions_atol=TRR_POS["atol"])
    assert back.energy is None and back.force_parts == {}
    explicit = read_frames(path, topology=tmp_path / "traj.pdb", stride=2)
    np.testing.assert_allclose(explicit.positions, frames.positions[::2], **TRR_POS)


def test_trr_matches_plain_mdanalysis_with_units_by_hand(tmp_path, frames):
    path = write_frames(frames, tmp_path / "traj.trr")
    native = mda.Universe(str(tmp_path / "traj.pdb"), str(path), convert_units=False)  # nm, kJ/(mol nm)
    assert list(native.atoms.elements) == ["O", "H", "H", "Na", "Cl", "Na"]
    for f, ts in enumerate(native.trajectory):
        np.testing.assert_allclose(ts.positions * NM_TO_ANGSTROM, frames.positions[f], **TRR_POS)
        np.testing.assert_allclose(ts.forces * KJ_PER_MOL_NM_TO_EV_PER_ANGSTROM, frames.forces[f], **F32)
        np.testing.assert_allclose(
            ts.dimensions[:3] * NM_TO_ANGSTROM, triclinic_box(*frames.cell[f])[:3], rtol=1e-6
        )
    # MDAnalysis' own units: Å and kJ/(mol Å); an O-H force of 1 eV/Å is 96.485 kJ/(mol Å).
    converted = mda.Universe(str(tmp_path / "traj.pdb"), str(path))
    forces_kj = converted.trajectory[0].forces
    np.testing.assert_allclose(forces_kj * KJ_PER_MOL_ANGSTROM_TO_EV_PER_ANGSTROM, frames.forces[0], **F32)
    np.testing.assert_allclose(
        native.trajectory[0].positions, frames.positions[0] * ANGSTROM_TO_NM, atol=1e-6
    )


def test_trr_nonperiodic_roundtrip(tmp_path):
    frames = make_frames(periodic=False)
    back = read_frames(write_frames(frames, tmp_path / "gas.trr"))
    assert back.cell is None
    assert_same(frames, back, positions_atol=TRR_POS["atol"])


def test_trr_refuses_rotated_cell(tmp_path, frames):
    rotated = FrameSet(frames.positions, frames.forces, frames.numbers, cell=CELL.T)
    with pytest.raises(DatasetError, match=r"rotated.trr.*frame 0 is not in the GROMACS orientation"):
        write_frames(rotated, tmp_path / "rotated.trr")
    assert list(tmp_path.iterdir()) == []


def test_stride_keeps_every_nth_frame(tmp_path, frames):
    for name in ("s.npz", "s.extxyz"):
        strided = read_frames(write_frames(frames, tmp_path / name), stride=2)
        np.testing.assert_allclose(strided.positions, frames.positions[[0, 2]], atol=1e-7)
        np.testing.assert_allclose(strided.energy, frames.energy[[0, 2]])
    with pytest.raises(ValueError, match="stride must be a positive integer"):
        read_frames(tmp_path / "s.npz", stride=0)


@pytest.mark.filterwarnings("ignore:Unknown masses:PendingDeprecationWarning")
def test_elements_guessed_from_gro_names(tmp_path, frames):
    path = write_frames(frames, tmp_path / "traj.trr")
    u = mda.Universe(str(companion_topology(path)))
    u.atoms.names = ["OW", "HW1", "HW2", "NA", "CL", "NA"]
    u.atoms.write(str(tmp_path / "named.gro"))
    with pytest.warns(UserWarning, match="guessed from atom names"):
        back = read_frames(path, topology=tmp_path / "named.gro")
    np.testing.assert_array_equal(back.numbers, NUMBERS)
    u.atoms.names = ["XX"] * 6
    u.atoms.write(str(tmp_path / "unknown.gro"))
    with pytest.raises(DatasetError, match=r"cannot determine the element of atom 0 .*unknown.gro"):
        read_frames(path, topology=tmp_path / "unknown.gro")


def test_h5md_roundtrip(tmp_path, frames):
    pytest.importorskip("h5py")
    back = read_frames(write_frames(frames, tmp_path / "traj.h5md"))
    assert_same(frames, back, positions_atol=TRR_POS["atol"])


def test_h5md_without_h5py_says_so(tmp_path, monkeypatch, frames):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "h5py" else find_spec(name, *a)
    )
    with pytest.raises(ImportError, match=r"traj.h5md: H5MD files need the optional package h5py"):
        write_frames(frames, tmp_path / "traj.h5md")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------ atomic writes
@pytest.mark.parametrize("name", ["out.extxyz", "out.trr", "out.npz"])
def test_failed_write_leaves_no_file(tmp_path, monkeypatch, frames, name):
    (tmp_path / "keep.txt").write_text("unrelated")

    def explode(target, *args, **kwargs):
        if isinstance(target, (str, Path)):
            Path(target).write_text("partial")  # a half-written output
        raise RuntimeError("disk full")

    monkeypatch.setattr("scalepool.data._io_ase.ase.io.write", explode)
    monkeypatch.setattr(_io_mda.mda, "Writer", explode)
    monkeypatch.setattr("scalepool.data._io.np.savez_compressed", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        write_frames(frames, tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_failed_overwrite_keeps_old_file(tmp_path, monkeypatch, frames):
    path = write_frames(frames, tmp_path / "a.extxyz")
    before = path.read_bytes()

    def fail_on_second_frame(target, images, format):
        for i, _ in enumerate(images):
            if i == 1:
                raise KeyboardInterrupt
            target.write_text("partial")

    monkeypatch.setattr("scalepool.data._io_ase.ase.io.write", fail_on_second_frame)
    with pytest.raises(KeyboardInterrupt):
        write_frames(make_frames(seed=5), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.extxyz"]


# ------------------------------------------------------------ bad inputs
def test_bad_extxyz_without_forces(tmp_path):
    path = tmp_path / "noforces.xyz"
    path.write_text('2\npbc="F F F"\nH 0 0 0\nH 0 0 0.74\n')
    with pytest.raises(DatasetError, match=r"noforces.xyz: frame 0 has no forces"):
        read_frames(path)
    with pytest.raises(DatasetError, match=r"noforces.xyz: frame 0 has no forces \(looked for 'dft'"):
        read_frames(path, forces_key="dft")


def test_bad_trr_without_forces(tmp_path):
    path = tmp_path / "noforces.trr"
    write_raw_trr(path, np.ones((2, 2, 3)))
    with pytest.raises(DatasetError, match=r"noforces.trr: frame 0 has no forces"):
        read_frames(path)


def test_bad_nan_positions_in_extxyz(tmp_path):
    path = tmp_path / "nan.extxyz"
    path.write_text(extxyz_text(["O 0 0 nan 1 0 0"] + WATER_ROWS[1:]))
    with pytest.raises(DatasetError, match=r"nan.extxyz: positions contains 1 non-finite"):
        read_frames(path)


def test_bad_nan_forces_in_trr(tmp_path):
    forces = np.ones((2, 2, 3))
    forces[1, 0, 2] = np.nan
    path = tmp_path / "nan.trr"
    write_raw_trr(path, np.ones((2, 2, 3)), forces=forces)
    with pytest.raises(
        DatasetError, match=r"nan.trr: forces contains 1 non-finite .* first at index \[1, 0, 2\]"
    ):
        read_frames(path)


def test_atom_count_changing_between_frames_reads_ragged(tmp_path):
    path = tmp_path / "ragged.extxyz"
    path.write_text(extxyz_text(WATER_ROWS) + extxyz_text(WATER_ROWS[:2]))
    frames = read_frames(path, check_physics=False)
    assert frames.ragged
    np.testing.assert_array_equal(frames.atom_counts, [3, 2])
    with pytest.raises(DatasetError, match=r"positions exists for the fixed layout only.*positions_flat"):
        frames.positions  # noqa: B018


def test_bad_periodic_extxyz_without_cell(tmp_path):
    path = tmp_path / "nocell.extxyz"
    path.write_text(extxyz_text(WATER_ROWS, 'Properties=species:S:1:pos:R:3:REF_forces:R:3 pbc="T T T"'))
    with pytest.raises(
        DatasetError, match=r"nocell.extxyz: frame 0 is marked periodic .* but has no full cell"
    ):
        read_frames(path)


def test_bad_trr_with_box_in_some_frames_only(tmp_path):
    path = tmp_path / "halfbox.trr"
    write_raw_trr(path, np.ones((2, 2, 3)), forces=np.ones((2, 2, 3)), boxes=[CELL, None])
    with pytest.raises(DatasetError, match=r"halfbox.trr: frame 1 has no box but frame 0 has one"):
        read_frames(path)


@pytest.mark.parametrize("name", ["empty.npz", "empty.extxyz", "empty.trr"])
def test_bad_empty_file(tmp_path, name):
    (tmp_path / name).touch()
    with pytest.raises(DatasetError, match=rf"{name} is empty \(0 bytes\)"):
        read_frames(tmp_path / name)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("cut.npz", r"cut.npz is not a readable .npz file \(truncated or corrupt\?\)"),
        ("cut.extxyz", r"cut.extxyz is not a readable extended XYZ file \(corrupt or truncated\?\)"),
        ("cut.trr", r"cut.trr is not a readable TRR file \(truncated or corrupt\?\)"),
    ],
)
def test_bad_truncated_file(tmp_path, frames, name, message):
    full = write_frames(frames, tmp_path / f"full{name[3:]}")
    data = full.read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    if name.endswith(".trr"):
        (tmp_path / "cut.pdb").write_bytes((tmp_path / "full.pdb").read_bytes())
    with pytest.raises(DatasetError, match=message):
        read_frames(tmp_path / name)


def test_bad_unknown_extension_and_format(tmp_path, frames):
    path = tmp_path / "traj.foo"
    path.write_text("data")
    with pytest.raises(DatasetError, match=r"cannot tell the format of .*traj.foo from its extension '.foo'"):
        read_frames(path)
    with pytest.raises(DatasetError, match=r"traj.foo: unknown format 'pdbqt'"):
        read_frames(path, format="pdbqt")
    with pytest.raises(DatasetError, match=r"out.bin.*extension '.bin'"):
        write_frames(frames, tmp_path / "out.bin")
    dump = tmp_path / "md.lammpstrj"
    dump.write_text("ITEM: TIMESTEP\n0\n")
    with pytest.raises(DatasetError, match=r"md.lammpstrj: LAMMPS dump files are not supported"):
        read_frames(dump)
    # format= overrides the extension
    np.testing.assert_allclose(
        read_frames(write_frames(frames, tmp_path / "x.dat", format="extxyz"), format="xyz").forces,
        frames.forces,
        **F32,
    )


@pytest.mark.filterwarnings("ignore:Found no information")
def test_bad_mismatched_topology(tmp_path, frames):
    path = write_frames(frames, tmp_path / "traj.trr")
    small = mda.Universe(str(companion_topology(path))).atoms[:4]
    small.write(str(tmp_path / "four.pdb"))
    with pytest.raises(
        DatasetError, match=r"topology .*four.pdb has 4 atoms but trajectory .*traj.trr has 6"
    ):
        read_frames(path, topology=tmp_path / "four.pdb")


def test_bad_nonexistent_paths(tmp_path, frames):
    with pytest.raises(FileNotFoundError, match=r"trajectory file not found: .*missing.extxyz"):
        read_frames(tmp_path / "missing.extxyz")
    path = write_frames(frames, tmp_path / "traj.trr")
    with pytest.raises(FileNotFoundError, match=r"topology file not found: .*nope.gro"):
        read_frames(path, topology=tmp_path / "nope.gro")
    companion_topology(path).unlink()
    with pytest.raises(DatasetError, match=r"traj.trr: a TRR file holds no atom types; pass topology="):
        read_frames(path)


def test_bad_corrupt_extxyz_text(tmp_path):
    path = tmp_path / "corrupt.extxyz"
    path.write_text(extxyz_text(["O 0 0 abc 1 0 0"] + WATER_ROWS[1:]))
    with pytest.raises(DatasetError, match=r"corrupt.extxyz is not a readable extended XYZ file.*'abc'"):
        read_frames(path)
    path.write_text("hello\nthis is not a trajectory\n")
    with pytest.raises(DatasetError, match=r"corrupt.extxyz is not a readable extended XYZ file"):
        read_frames(path)
