"""Molecular pressure for rigid molecules (rigid water with :class:`RigidBonds`).

With holonomic constraints the atomic virial ``sum_i F_i (x) x_i`` misses the
constraint forces, and the atomic ideal-gas term ``sum_i p_i (x) p_i / m_i``
counts the constrained degrees of freedom, so a barostat fed the atomic
stress sees a pressure thousands of bar off.  The *molecular* pressure applies
the strain to the centres of mass ``R_m`` only and keeps each molecule's
internal geometry, so constraints are never strained and their forces drop out.

Derivation (ASE sign: stress = (1/V) dE/d strain).  Write ``x_i = R_m + d_i``
with ``d_i`` the minimum-image vector from the centre of mass of atom i's
molecule to atom i.  Under the molecular strain ``R_m -> (1 + e) R_m``,
``d_i`` fixed, ``x_i -> (1 + e) x_i - e d_i``: the affine (atomic) strain plus
an extra displacement ``-e d_i``.  With ``F_i = -dE/dx_i``::

    dE/de_ab = V sigma_atomic_ab + sum_i F_ia d_ib

    sigma_mol = sigma_atomic + (1/V) sym(sum_i F_i (x) d_i)

(symmetrised: the antisymmetric part is the torque of a rigid rotation, which
changes no energy).  The kinetic part is the centre-of-mass one,
``-(1/V) sum_m P_m (x) P_m / M_m``; ASE's ``Atoms.get_stress(include_ideal_gas=True)``
subtracts the atomic ``(1/V) sum_i p_i (x) p_i / m_i``, so
:func:`ideal_gas_correction` returns the difference that turns one into the other.
The tests check the virial against a finite difference of the energy under a
centre-of-mass strain (float64).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "com_kinetic_tensor",
    "ideal_gas_correction",
    "molecular_virial",
    "molecule_offsets",
    "water_molecule_ids",
]


def water_molecule_ids(numbers: np.ndarray) -> np.ndarray:
    """(n_atoms,) int64 molecule id per atom: each O, H, H water (consecutive, as
    :func:`~scalepool.md.rigid_water_pairs` finds them) is one molecule, every
    other atom (ions) its own.  Ids are 0..n_molecules-1 in atom order."""
    from ._constraints import rigid_water_pairs

    z = np.asarray(numbers)
    pairs = rigid_water_pairs(z)  # raises on stray hydrogens
    oxygens = pairs[0::3, 0]
    starts = np.ones(len(z), bool)
    starts[oxygens + 1] = False
    starts[oxygens + 2] = False
    return np.cumsum(starts) - 1


def _check_ids(molecules: np.ndarray, n_atoms: int) -> np.ndarray:
    ids = np.asarray(molecules)
    if ids.shape != (n_atoms,) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"molecules must be an integer array of shape ({n_atoms},) (one molecule id per atom), "
            f"got dtype {ids.dtype} and shape {ids.shape}"
        )
    return ids


def molecule_offsets(
    positions: np.ndarray, cell: np.ndarray, masses: np.ndarray, molecules: np.ndarray
) -> np.ndarray:
    """(n_atoms, 3) Å: ``d_i = x_i - R_m(i)``, atom minus its molecule's centre of mass.

    positions : (n_atoms, 3), Å
    cell : (3, 3), Å, rows are the cell vectors (periodic in all directions)
    masses : (n_atoms,), amu
    molecules : (n_atoms,) integer molecule id per atom (any labels)

    Each molecule is made whole by the minimum image (fractional rounding) of
    every atom relative to the molecule's first atom, so molecules must be
    smaller than half the cell (checked: raises naming the molecule).
    """
    x = np.asarray(positions, dtype=np.float64)
    ids = _check_ids(molecules, len(x))
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    cell = np.asarray(cell, dtype=np.float64)
    rel = x - x[first[inverse]]
    frac = rel @ np.linalg.inv(cell)
    frac -= np.round(frac)
    rel = frac @ cell
    m = np.asarray(masses, dtype=np.float64)
    total = np.bincount(inverse, weights=m)
    com = np.stack([np.bincount(inverse, weights=m * rel[:, k]) for k in range(3)], axis=1) / total[:, None]
    d = rel - com[inverse]
    volume = abs(np.linalg.det(cell))
    widths = volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    reach = np.linalg.norm(rel, axis=1)
    worst = int(np.argmax(reach))
    if reach[worst] >= 0.5 * widths.min():
        raise ValueError(
            f"molecule {ids[worst]}: atom {worst} is {reach[worst]:.2f} Å from the molecule's first atom, "
            f"not less than half the narrowest cell width ({widths.min():.2f} Å); the minimum image "
            "cannot make it whole"
        )
    return d


def molecular_virial(forces: np.ndarray, offsets: np.ndarray, volume: float) -> np.ndarray:
    """(3, 3) eV/Å^3 to add to the atomic stress: ``(1/V) sym(sum_i F_i (x) d_i)``.

    forces : (n_atoms, 3), eV/Å, the potential's forces (no constraint forces)
    offsets : (n_atoms, 3), Å, from :func:`molecule_offsets`
    volume : Å^3
    """
    w = np.asarray(forces, dtype=np.float64).T @ np.asarray(offsets, dtype=np.float64)
    return 0.5 * (w + w.T) / float(volume)


def com_kinetic_tensor(momenta: np.ndarray, masses: np.ndarray, molecules: np.ndarray) -> np.ndarray:
    """(3, 3) eV: ``sum_m P_m (x) P_m / M_m`` over molecules (twice the centre-of-mass kinetic energy tensor).

    momenta : (n_atoms, 3), ASE units (amu Å / ASE time unit, so p p / m is eV)
    masses : (n_atoms,), amu
    """
    p = np.asarray(momenta, dtype=np.float64)
    _, inverse = np.unique(_check_ids(molecules, len(p)), return_inverse=True)
    big_p = np.stack([np.bincount(inverse, weights=p[:, k]) for k in range(3)], axis=1)
    big_m = np.bincount(inverse, weights=np.asarray(masses, dtype=np.float64))
    return (big_p / big_m[:, None]).T @ big_p


def ideal_gas_correction(
    momenta: np.ndarray, masses: np.ndarray, molecules: np.ndarray, volume: float
) -> np.ndarray:
    """(3, 3) eV/Å^3 that, added to a stress read with ASE's ``include_ideal_gas=True``,
    replaces the atomic kinetic term by the centre-of-mass one:
    ``(1/V) (sum_i p_i (x) p_i / m_i - sum_m P_m (x) P_m / M_m)``."""
    p = np.asarray(momenta, dtype=np.float64)
    m = np.asarray(masses, dtype=np.float64)
    atomic = (p / m[:, None]).T @ p
    return (atomic - com_kinetic_tensor(p, m, molecules)) / float(volume)
