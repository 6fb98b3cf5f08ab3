"""OpenMM plumbing for the NaCl testbed: system, force groups, contexts, evaluation.

This module knows how to turn a TIP3P/NaCl topology into an OpenMM ``System``
whose reference force splits into three force groups, how to open a context on
the CPU platform, and how to read forces and energies back in scalepool units.
Sampling lives in :mod:`scalepool.data._nacl`.

Force groups
------------
======  =============  =====================================================
group   part           content
======  =============  =====================================================
0       ``bonded``     HarmonicBond/Angle forces, CMMotionRemover (no force)
1       ``direct``     NonbondedForce real space: Coulomb (erfc) + LJ
2       ``reciprocal`` NonbondedForce PME reciprocal space
======  =============  =====================================================

OpenMM's ``getForces`` returns the force-field force only: constraint forces
(rigid water, H bonds) are never part of it, and neither are the forces of the
thermostat.
"""

from __future__ import annotations

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

from ..units import (
    CHLORINE,
    HYDROGEN,
    KJ_PER_MOL_NM_TO_EV_PER_ANGSTROM,
    KJ_PER_MOL_TO_EV,
    NM_TO_ANGSTROM,
    OXYGEN,
    SODIUM,
)
from . import _keys as K

#: Force-field files: TIP3P water with Joung-Cheatham ions (amber14 set).
FORCE_FIELD_FILES = ("amber14/tip3p.xml",)
#: Force part name -> OpenMM force group.
PART_GROUPS = {"bonded": 0, "direct": 1, "reciprocal": 2}
#: Residue and atom names used by ``Modeller.addSolvent`` (and matched by the force field).
_ION_RESIDUES = {SODIUM: ("NA", "Na"), CHLORINE: ("CL", "Cl")}


def make_forcefield() -> app.ForceField:
    """The TIP3P + Joung-Cheatham force field of :data:`FORCE_FIELD_FILES`."""
    return app.ForceField(*FORCE_FIELD_FILES)


def create_system(
    topology: app.Topology,
    *,
    rigid_water: bool,
    cutoff_nm: float,
    ewald_error_tolerance: float,
    forcefield: app.ForceField | None = None,
) -> openmm.System:
    """A PME system with the force groups of the module docstring.

    ``rigid_water=True`` constrains every bond to hydrogen and the water H-H
    distance (``constraints=HBonds, rigidWater=True``): OpenMM then drops the
    constrained bond and angle terms, so the ``bonded`` group holds no force.
    ``rigid_water=False`` keeps flexible TIP3P (no constraints).
    """
    forcefield = forcefield or make_forcefield()
    system = forcefield.createSystem(
        topology,
        nonbondedMethod=app.PME,
        nonbondedCutoff=cutoff_nm * unit.nanometer,
        ewaldErrorTolerance=ewald_error_tolerance,
        constraints=app.HBonds if rigid_water else None,
        rigidWater=rigid_water,
    )
    for force in system.getForces():
        if isinstance(force, openmm.NonbondedForce):
            force.setForceGroup(PART_GROUPS["direct"])
            force.setReciprocalSpaceForceGroup(PART_GROUPS["reciprocal"])
        else:
            force.setForceGroup(PART_GROUPS["bonded"])
    return system


def topology_from_numbers(numbers: np.ndarray, cell: np.ndarray) -> app.Topology:
    """Rebuild a water/ion topology from atomic numbers.

    numbers: (N,) atomic numbers; water appears as consecutive O, H, H and
        Na/Cl as single atoms, in any order of molecules.
    cell: (3, 3) Å, rows are cell vectors.
    """
    numbers = np.asarray(numbers)
    topology = app.Topology()
    chain = topology.addChain()
    i = 0
    while i < len(numbers):
        z = int(numbers[i])
        if z == OXYGEN and tuple(numbers[i + 1 : i + 3]) == (HYDROGEN, HYDROGEN):
            residue = topology.addResidue("HOH", chain)
            o = topology.addAtom("O", app.element.oxygen, residue)
            h1 = topology.addAtom("H1", app.element.hydrogen, residue)
            h2 = topology.addAtom("H2", app.element.hydrogen, residue)
            topology.addBond(o, h1)
            topology.addBond(o, h2)
            i += 3
        elif z in _ION_RESIDUES:
            res_name, atom_name = _ION_RESIDUES[z]
            residue = topology.addResidue(res_name, chain)
            topology.addAtom(atom_name, app.element.Element.getByAtomicNumber(z), residue)
            i += 1
        else:
            raise ValueError(
                f"atom {i} (Z={z}) is neither the O of an O,H,H water nor a Na/Cl ion; "
                "only TIP3P/NaCl datasets can be rebuilt"
            )
    topology.setPeriodicBoxVectors(np.asarray(cell, dtype=np.float64) / NM_TO_ANGSTROM * unit.nanometer)
    return topology


def cpu_platform(threads: int | None) -> tuple[openmm.Platform, dict[str, str]]:
    """The CPU platform and its properties (``Threads`` when given)."""
    platform = openmm.Platform.getPlatformByName("CPU")
    properties = {"DeterministicForces": "true"}
    if threads is not None:
        properties["Threads"] = str(int(threads))
    return platform, properties


def make_context(
    system: openmm.System,
    integrator: openmm.Integrator,
    *,
    platform: str = "CPU",
    threads: int | None = None,
) -> openmm.Context:
    """A context on ``platform`` ('CPU' with optional ``threads``, or 'Reference')."""
    if platform == "CPU":
        plat, properties = cpu_platform(threads)
    else:
        plat, properties = openmm.Platform.getPlatformByName(platform), {}
    return openmm.Context(system, integrator, plat, properties)


def set_frame(context: openmm.Context, positions: np.ndarray, cell: np.ndarray) -> None:
    """Load one frame into a context.

    positions: (N, 3) Å; cell: (3, 3) Å, rows are cell vectors.
    """
    a, b, c = (np.asarray(cell, dtype=np.float64) / NM_TO_ANGSTROM).tolist()
    context.setPeriodicBoxVectors(openmm.Vec3(*a), openmm.Vec3(*b), openmm.Vec3(*c))
    context.setPositions(np.asarray(positions, dtype=np.float64) / NM_TO_ANGSTROM)


def _forces_ev(state: openmm.State) -> np.ndarray:
    """(N, 3) float64 eV/Å from an OpenMM state."""
    kj_nm = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    return np.asarray(kj_nm, dtype=np.float64) * KJ_PER_MOL_NM_TO_EV_PER_ANGSTROM


def _energy_ev(state: openmm.State) -> float:
    return state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) * KJ_PER_MOL_TO_EV


def evaluate(context: openmm.Context, *, positions: bool = False) -> dict[str, np.ndarray | float]:
    """Total force, force per part and potential energy of the context's state.

    Returns (all float64) ``forces`` (N, 3) eV/Å, ``forces_<part>`` (N, 3) eV/Å
    for each part of :data:`PART_GROUPS`, ``energy`` (eV, total potential) and
    ``energy_<part>`` (eV).  With ``positions=True`` also ``positions`` (N, 3) Å
    wrapped by molecule into the box (``enforcePeriodicBox``: molecules stay
    whole, their centres lie in the cell) and ``cell`` (3, 3) Å rows.
    """
    state = context.getState(
        getForces=True, getEnergy=True, getPositions=positions, enforcePeriodicBox=positions
    )
    out: dict[str, np.ndarray | float] = {K.FORCES: _forces_ev(state), K.ENERGY: _energy_ev(state)}
    for part, group in PART_GROUPS.items():
        part_state = context.getState(getForces=True, getEnergy=True, groups={group})
        out[K.FORCE_PART_PREFIX + part] = _forces_ev(part_state)
        out[f"{K.ENERGY}_{part}"] = _energy_ev(part_state)
    if positions:
        xyz = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
        out[K.POSITIONS] = np.asarray(xyz, dtype=np.float64) * NM_TO_ANGSTROM
        out[K.CELL] = np.asarray(box, dtype=np.float64) * NM_TO_ANGSTROM
    return out


def parts_sum_error(result: dict[str, np.ndarray | float]) -> float:
    """Max |sum of parts - total| over atoms and components, eV/Å."""
    total = sum(result[K.FORCE_PART_PREFIX + part] for part in PART_GROUPS)
    return float(np.max(np.abs(total - result[K.FORCES])))
