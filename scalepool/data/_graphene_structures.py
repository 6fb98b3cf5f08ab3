"""Structures of the graphene testbed: the sheet, the molecules, rotations and placement
(used by :mod:`scalepool.data._graphene`)."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import graphene, molecule

#: Testbed molecules -> ``ase.build.molecule`` names (g2 set, MP2 geometries).
MOLECULES = {"benzene": "C6H6", "water": "H2O", "pyridine": "C5H5N"}
#: Graphene lattice constant (Å), experimental.
GRAPHENE_A = 2.46


def graphene_sheet(size: int, cell_height: float) -> Atoms:
    """A flat ``size`` x ``size`` graphene supercell at z = 0, periodic in 3D.

    Returns Atoms with 2 size^2 carbons, cell rows a1, a2 (Å, 120° apart) and
    (0, 0, ``cell_height``) Å.
    """
    sheet = graphene(a=GRAPHENE_A, size=(size, size, 1), vacuum=None)
    cell = sheet.cell.array.copy()
    cell[2] = (0.0, 0.0, cell_height)
    sheet.set_cell(cell)
    sheet.pbc = True
    return sheet


def hollow_site(size: int) -> np.ndarray:
    """(2,) Å: xy of the hexagon centre nearest the middle of a ``size`` x ``size`` sheet."""
    a1, a2 = graphene_sheet(1, 1.0).cell.array[:2, :2]
    k = size // 2
    return (k + 2.0 / 3.0) * a1 + (k + 1.0 / 3.0) * a2


def gas_molecule(name: str) -> Atoms:
    """The testbed molecule ``name`` (a key of :data:`MOLECULES`), centroid at the origin."""
    if name not in MOLECULES:
        raise ValueError(f"unknown molecule {name!r}; the graphene testbed has {sorted(MOLECULES)}")
    mol = molecule(MOLECULES[name])
    mol.positions -= mol.positions.mean(axis=0)
    return mol


def flat_rotation(mol: Atoms) -> np.ndarray:
    """(3, 3) rotation (applied as ``positions @ R.T``) putting the smallest extent along z.

    For a planar molecule the molecular plane then lies parallel to the sheet.
    """
    x = mol.positions - mol.positions.mean(axis=0)
    _, vectors = np.linalg.eigh(x.T @ x)  # ascending: vectors[:, 0] is the plane normal
    rotation = vectors[:, [2, 1, 0]].T
    if np.linalg.det(rotation) < 0:
        rotation[1] *= -1
    return rotation


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """(3, 3) rotation uniform on SO(3) (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def place_molecule(sheet: Atoms, mol: Atoms, rotation: np.ndarray, xy: np.ndarray, height: float) -> Atoms:
    """Sheet plus ``mol`` rotated by ``rotation`` (3, 3), centroid above ``xy`` (2,) Å, its
    lowest atom ``height`` Å above the sheet plane (mean z of the sheet)."""
    pos = (mol.positions - mol.positions.mean(axis=0)) @ np.asarray(rotation).T
    pos[:, :2] += xy
    pos[:, 2] += sheet.positions[:, 2].mean() + height - pos[:, 2].min()
    return sheet + Atoms(mol.numbers, positions=pos)
