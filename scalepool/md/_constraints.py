"""Holonomic bond-length constraints for ASE dynamics, vectorised over bonds.

The testbed's reference forces come from rigid TIP3P water, so a model
trained on them must run with rigid water: with free O-H bonds NVE heats from
300 K to ~800 K within 5 fs.  ASE's :class:`~ase.constraints.FixBondLengths`
does the right thing (SHAKE for positions, RATTLE for momenta and forces) but
loops over the bonds in Python with a minimum-image search per bond and
iteration: on the 1,467-atom testbed (1,449 bonds) one MD step took more than
10 s in the constraint alone, far more than the model.

:class:`RigidBonds` is the same algorithm with the same update order, vectorised:

- the bonds are split into *layers* with no atom in common inside a layer,
  keeping the order of any two bonds that share an atom (a bond's layer is one
  more than the highest layer of the earlier bonds it touches);
- each sweep updates the layers one after another, all bonds of a layer at once.

Bonds of one layer touch disjoint atoms, so updating them together is exactly
what the sequential loop does; bonds that share an atom keep their order.  The
result therefore equals ``FixBondLengths`` to rounding (tested), at a cost of a
few numpy calls per layer and sweep.  Use :func:`rigid_water_pairs` for the
O-H, O-H, H-H triangle of every water.
"""

from __future__ import annotations

import numpy as np
from ase.constraints import FixConstraint
from ase.geometry import find_mic

__all__ = ["RigidBonds", "bond_layers", "rigid_water_pairs"]


def rigid_water_pairs(numbers: np.ndarray) -> np.ndarray:
    """(3 n_water, 2) atom pairs fixing every water rigid: O-H1, O-H2, H1-H2.

    A water is an oxygen directly followed by two hydrogens (the order OpenMM,
    the testbed and most topologies use).  Raises if a hydrogen belongs to no
    such water, since leaving it free would silently change the dynamics.
    """
    z = np.asarray(numbers)
    oxygens = np.flatnonzero((z[:-2] == 8) & (z[1:-1] == 1) & (z[2:] == 1))
    pairs = np.stack([oxygens, oxygens + 1, oxygens, oxygens + 2, oxygens + 1, oxygens + 2], axis=1)
    pairs = pairs.reshape(-1, 2)
    covered = np.zeros(len(z), bool)
    covered[pairs.ravel()] = True
    stray = np.flatnonzero((z == 1) & ~covered)
    if stray.size:
        raise ValueError(
            f"{stray.size} hydrogen atoms (first: index {stray[0]}) are not in an O, H, H "
            "triplet; rigid_water_pairs expects each water as O followed by its two H"
        )
    return pairs


def bond_layers(pairs: np.ndarray) -> list[np.ndarray]:
    """Split bond indices into layers of atom-disjoint bonds, keeping the order
    of any two bonds that share an atom.  Returns a list of (n_layer,) index arrays."""
    last_layer: dict[int, int] = {}  # atom -> highest layer of a bond touching it
    layer_of = np.empty(len(pairs), np.int64)
    for k, (a, b) in enumerate(np.asarray(pairs).tolist()):
        layer = max(last_layer.get(a, -1), last_layer.get(b, -1)) + 1
        layer_of[k] = last_layer[a] = last_layer[b] = layer
    return [np.flatnonzero(layer_of == i) for i in range(int(layer_of.max(initial=-1)) + 1)]


class RigidBonds(FixConstraint):
    """Fixed bond lengths (SHAKE positions, RATTLE momenta and forces), vectorised.

    Same algorithm, order of updates, tolerance semantics and removed degrees
    of freedom as :class:`ase.constraints.FixBondLengths`.

    Parameters
    ----------
    pairs : (n_bonds, 2) atom indices
    tolerance : convergence threshold on each bond's correction (ASE's meaning)
    bondlengths : (n_bonds,) Å, default: the lengths when first applied
    maxiter : sweeps before giving up (``RuntimeError``)
    """

    def __init__(self, pairs, tolerance: float = 1e-13, bondlengths=None, maxiter: int = 500):
        self.pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        if self.pairs.size and (self.pairs[:, 0] == self.pairs[:, 1]).any():
            raise ValueError("a bond joins an atom to itself")
        self.tolerance = float(tolerance)
        self.bondlengths = None if bondlengths is None else np.asarray(bondlengths, float)
        self.maxiter = int(maxiter)
        self.layers = bond_layers(self.pairs)

    def get_removed_dof(self, atoms) -> int:
        return len(self.pairs)

    def get_indices(self) -> np.ndarray:
        return np.unique(self.pairs.ravel())

    def todict(self) -> dict:
        """ASE's dict of the equivalent ``FixBondLengths``: files written with this
        constraint read back anywhere ASE runs (as the slower, same constraint)."""
        return {"name": "FixBondLengths", "kwargs": {"pairs": self.pairs.tolist(), "tolerance": self.tolerance}}

    def copy(self) -> RigidBonds:
        lengths = None if self.bondlengths is None else self.bondlengths.copy()
        return RigidBonds(self.pairs.copy(), self.tolerance, lengths, self.maxiter)

    def initialize_bond_lengths(self, atoms) -> np.ndarray:
        return self._bond_vectors(atoms)[1]

    def _bond_vectors(self, atoms) -> tuple[np.ndarray, np.ndarray]:
        """Minimum-image bond vectors a - b (n_bonds, 3) Å and their lengths."""
        d = atoms.positions[self.pairs[:, 0]] - atoms.positions[self.pairs[:, 1]]
        return find_mic(d, atoms.cell, atoms.pbc)

    def _setup(self, atoms):
        if self.bondlengths is None:
            self.bondlengths = self.initialize_bond_lengths(atoms)
        masses = atoms.get_masses()
        a, b = self.pairs[:, 0], self.pairs[:, 1]
        reduced = 1.0 / (1.0 / masses[a] + 1.0 / masses[b])
        return self._bond_vectors(atoms)[0], masses, reduced

    def adjust_positions(self, atoms, new: np.ndarray) -> None:
        """SHAKE: move ``new`` (n_atoms, 3) in place so every bond has its length."""
        if not len(self.pairs):
            return
        d0, masses, reduced = self._setup(atoms)
        old = atoms.positions
        a_all, b_all = self.pairs[:, 0], self.pairs[:, 1]
        r0 = old[a_all] - old[b_all]
        for _ in range(self.maxiter):
            converged = True
            for layer in self.layers:
                a, b, dl = a_all[layer], b_all[layer], d0[layer]
                d1 = new[a] - new[b] - r0[layer] + dl
                x = 0.5 * (self.bondlengths[layer] ** 2 - _dot(d1, d1)) / _dot(dl, d1)
                move = np.abs(x) > self.tolerance
                if move.any():
                    converged = False
                    x = np.where(move, x, 0.0)[:, None] * reduced[layer, None] * dl
                    new[a] += x / masses[a, None]
                    new[b] -= x / masses[b, None]
            if converged:
                return
        raise RuntimeError(f"RigidBonds: SHAKE did not converge in {self.maxiter} sweeps")

    def adjust_momenta(self, atoms, p: np.ndarray) -> None:
        """RATTLE: remove from ``p`` (n_atoms, 3) in place every relative velocity along a bond."""
        if not len(self.pairs):
            return
        d_all, masses, reduced = self._setup(atoms)
        a_all, b_all = self.pairs[:, 0], self.pairs[:, 1]
        for _ in range(self.maxiter):
            converged = True
            for layer in self.layers:
                a, b, d = a_all[layer], b_all[layer], d_all[layer]
                dv = p[a] / masses[a, None] - p[b] / masses[b, None]
                x = -_dot(dv, d) / self.bondlengths[layer] ** 2
                move = np.abs(x) > self.tolerance
                if move.any():
                    converged = False
                    x = np.where(move, x, 0.0)[:, None] * reduced[layer, None] * d
                    p[a] += x
                    p[b] -= x
            if converged:
                return
        raise RuntimeError(f"RigidBonds: RATTLE did not converge in {self.maxiter} sweeps")

    def adjust_forces(self, atoms, forces: np.ndarray) -> None:
        """Project the bond directions out of ``forces``, as ASE does (RATTLE on forces)."""
        self.constraint_forces = -forces
        self.adjust_momenta(atoms, forces)
        self.constraint_forces += forces

    def index_shuffle(self, atoms, ind) -> None:
        """Keep the bonds whose two atoms are both in ``ind``, renumbered (ASE's slicing)."""
        index_map = np.full(len(atoms), -1)
        index_map[ind] = np.arange(len(ind))
        pairs = index_map[self.pairs]
        keep = (pairs != -1).all(axis=1)
        if not keep.any():
            raise IndexError("Constraint not part of slice")
        self.pairs = pairs[keep]
        if self.bondlengths is not None:
            self.bondlengths = self.bondlengths[keep]
        self.layers = bond_layers(self.pairs)


def _dot(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Row-wise dot product of (n, 3) arrays, summed x, y, z in order (as np.dot of 3-vectors)."""
    return u[:, 0] * v[:, 0] + u[:, 1] * v[:, 1] + u[:, 2] * v[:, 2]
