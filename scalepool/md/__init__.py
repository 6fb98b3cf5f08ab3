"""Running and analysing trained models: the ASE calculator, vectorised bond constraints
for MD, the molecular pressure of rigid molecules, and Hessians (exact model Hessians,
finite differences, spectra, block errors)."""

from ._calculator import ScalepoolCalculator
from ._constraints import RigidBonds, bond_layers, rigid_water_pairs
from ._hessian import (
    EV_PER_A2_AMU_TO_WAVENUMBER,
    MASSES,
    atom_groups,
    block_errors,
    constraint_tangent_basis,
    finite_difference_hessian,
    model_hessian,
    select_around_ion_pair,
    spectrum,
    symmetrize,
    water_molecules,
)
from ._molecular import (
    com_kinetic_tensor,
    ideal_gas_correction,
    molecular_virial,
    molecule_offsets,
    water_molecule_ids,
)

__all__ = [
    "EV_PER_A2_AMU_TO_WAVENUMBER",
    "MASSES",
    "RigidBonds",
    "ScalepoolCalculator",
    "atom_groups",
    "block_errors",
    "bond_layers",
    "com_kinetic_tensor",
    "constraint_tangent_basis",
    "finite_difference_hessian",
    "ideal_gas_correction",
    "model_hessian",
    "molecular_virial",
    "molecule_offsets",
    "rigid_water_pairs",
    "select_around_ion_pair",
    "spectrum",
    "symmetrize",
    "water_molecule_ids",
    "water_molecules",
]
