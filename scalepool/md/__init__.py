"""Molecular-dynamics helpers for ASE runs of scalepool models: vectorised bond constraints."""

from ._constraints import RigidBonds, bond_layers, rigid_water_pairs

__all__ = ["RigidBonds", "bond_layers", "rigid_water_pairs"]
