"""RigidBonds against ASE's FixBondLengths (the independent reference) and against geometry."""

import numpy as np
import pytest
from ase import Atoms, units
from ase.constraints import FixBondLengths, dict2constraint
from ase.md.verlet import VelocityVerlet

from scalepool.md import RigidBonds, bond_layers, rigid_water_pairs
from scalepool.testing import water_box


@pytest.fixture(scope="module")
def atoms():
    frames = water_box(12.0, n_ion_pairs=2, seed=3)
    atoms = Atoms(numbers=frames.numbers, positions=frames.positions[0], cell=frames.cell[0], pbc=True)
    atoms.wrap()  # waters straddle the boundary: bonds need the minimum image
    return atoms


def _bond_lengths(atoms, pairs):
    return np.array([atoms.get_distance(a, b, mic=True) for a, b in pairs])


def test_rigid_water_pairs_cover_every_water(atoms):
    pairs = rigid_water_pairs(atoms.numbers)
    n_water = int((atoms.numbers == 8).sum())
    assert pairs.shape == (3 * n_water, 2)
    assert set(pairs.ravel().tolist()) == set(np.flatnonzero(~np.isin(atoms.numbers, [11, 17])).tolist())


def test_rigid_water_pairs_refuse_stray_hydrogen():
    with pytest.raises(ValueError, match="not in an O, H, H triplet"):
        rigid_water_pairs([8, 1, 1, 1, 8, 1, 1])


def test_layers_are_atom_disjoint_and_keep_order():
    pairs = np.array([[0, 1], [0, 2], [1, 2], [3, 4], [3, 5], [4, 5], [2, 3]])
    layers = bond_layers(pairs)
    layer_of = np.empty(len(pairs), int)
    for i, layer in enumerate(layers):
        atoms_in_layer = pairs[layer].ravel()
        assert len(set(atoms_in_layer)) == len(atoms_in_layer)
        layer_of[layer] = i
    for j in range(len(pairs)):
        for k in range(j + 1, len(pairs)):
            if set(pairs[j]) & set(pairs[k]):
                assert layer_of[j] < layer_of[k]


@pytest.mark.parametrize("method", ["adjust_positions", "adjust_momenta", "adjust_forces"])
def test_equals_ase_fixbondlengths(atoms, method):
    pairs = rigid_water_pairs(atoms.numbers)
    rng = np.random.default_rng(0)
    target = rng.normal(scale=0.05 if method == "adjust_positions" else 1.0, size=(len(atoms), 3))
    if method == "adjust_positions":
        target = atoms.positions + target
    ours, ase_ = target.copy(), target.copy()
    getattr(RigidBonds(pairs), method)(atoms, ours)
    getattr(FixBondLengths(pairs), method)(atoms, ase_)
    assert not np.allclose(ours, target)  # something was constrained
    np.testing.assert_allclose(ours, ase_, rtol=0, atol=1e-10)


def test_shake_restores_lengths_and_rattle_removes_bond_velocities(atoms):
    pairs = rigid_water_pairs(atoms.numbers)
    constraint = RigidBonds(pairs, tolerance=1e-12)
    lengths = _bond_lengths(atoms, pairs)
    moved = atoms.copy()
    new = atoms.positions + np.random.default_rng(1).normal(scale=0.05, size=(len(atoms), 3))
    constraint.adjust_positions(atoms, new)
    moved.set_positions(new, apply_constraint=False)
    np.testing.assert_allclose(_bond_lengths(moved, pairs), lengths, atol=1e-8)
    p = np.random.default_rng(2).normal(size=(len(atoms), 3))
    constraint.adjust_momenta(atoms, p)
    v = p / atoms.get_masses()[:, None]
    d = atoms.positions[pairs[:, 0]] - atoms.positions[pairs[:, 1]]
    d -= np.round(d / atoms.cell.lengths()) * atoms.cell.lengths()  # cubic box: minimum image
    relative = v[pairs[:, 0]] - v[pairs[:, 1]]
    assert np.abs((relative * d).sum(axis=1)).max() < 1e-9


def test_short_md_matches_ase_and_keeps_bonds():
    from ase.calculators.tip3p import TIP3P

    frames = water_box(12.0, n_ion_pairs=0, seed=5)
    atoms = Atoms(numbers=frames.numbers, positions=frames.positions[0], cell=frames.cell[0], pbc=True)
    pairs = rigid_water_pairs(atoms.numbers)
    runs = []
    for constraint in (RigidBonds(pairs), FixBondLengths(pairs)):
        a = atoms.copy()
        a.set_constraint(constraint)
        a.calc = TIP3P(rc=5.5)
        a.set_momenta(np.random.default_rng(4).normal(scale=0.3, size=(len(a), 3)))
        VelocityVerlet(a, timestep=0.5 * units.fs).run(5)
        runs.append(a)
    np.testing.assert_allclose(runs[0].positions, runs[1].positions, atol=1e-9)
    np.testing.assert_allclose(runs[0].get_momenta(), runs[1].get_momenta(), atol=1e-9)
    np.testing.assert_allclose(_bond_lengths(runs[0], pairs), _bond_lengths(atoms, pairs), atol=1e-8)


def test_copy_dict_and_removed_dof(atoms):
    pairs = rigid_water_pairs(atoms.numbers)
    constraint = RigidBonds(pairs)
    assert constraint.get_removed_dof(atoms) == len(pairs)
    assert isinstance(constraint.copy(), RigidBonds)
    assert isinstance(dict2constraint(constraint.todict()), FixBondLengths)  # files read back anywhere
    copied = atoms.copy()
    copied.set_constraint(constraint)
    assert isinstance(copied.copy().constraints[0], RigidBonds)


def test_bad_pairs_are_refused():
    with pytest.raises(ValueError, match="itself"):
        RigidBonds([[0, 0]])
