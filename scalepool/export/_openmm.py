"""A scalepool model (exported or not) as an OpenMM force, through ``openmm.PythonForce``.

openmm-torch (``TorchForce``) is not installable here, so OpenMM 8.6's
``PythonForce`` calls the model from Python at every step: OpenMM then brings
its integrators, thermostats and SETTLE water constraints.  Units are converted
at this boundary with :mod:`scalepool.units`: OpenMM hands positions and box
vectors in nm, and takes the energy in kJ/mol and forces in kJ/(mol nm).

Example::

    program, _ = load_exported("model.pt2")            # or a ForceModel
    system = model_system(numbers, cell)                 # masses, box, rigid water
    add_model_force(system, program, numbers)
    context = openmm.Context(system, openmm.LangevinMiddleIntegrator(300, 1, 0.001))
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import openmm
import openmm.unit as unit
import torch
from openmm import app

from ..models import AtomsBatch, ForceModel
from ..units import (
    ANGSTROM_TO_NM,
    EV_PER_ANGSTROM_TO_KJ_PER_MOL_NM,
    EV_TO_KJ_PER_MOL,
    HYDROGEN,
    NM_TO_ANGSTROM,
    OXYGEN,
)

#: TIP3P geometry of the testbed's rigid water, Å (O-H bond and H-H distance).
WATER_OH = 0.9572
WATER_HH = 1.5139


def energy_forces_function(
    model: ForceModel | torch.nn.Module, numbers: np.ndarray, device: str | torch.device = "cpu"
) -> Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray]]:
    """``fn(positions (N, 3) Å, cell (3, 3) Å) -> (energy eV, forces (N, 3) eV/Å float64)``.

    model : a scalepool ForceModel (run through an AtomsBatch, in its own dtype),
        or an exported program's module (``load_exported(path)[0]``), whose dtype
        is read from its first floating buffer or parameter (float32 if none)
    numbers : (N,) atomic numbers
    """
    numbers_t = torch.as_tensor(np.asarray(numbers), dtype=torch.int64, device=device)
    if isinstance(model, ForceModel):
        dtype = next(model.parameters()).dtype
        model = model.to(device).eval()

        def run(positions, cell):
            batch = AtomsBatch(
                positions=torch.as_tensor(positions, dtype=dtype, device=device),
                numbers=numbers_t,
                frame_index=torch.zeros_like(numbers_t),
                cell=torch.as_tensor(cell, dtype=dtype, device=device)[None],
                n_frames=1,
            )
            out = model(batch)
            return out["energy"][0], out["forces"]

    else:
        floats = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
        dtype = floats[0].dtype if floats else torch.float32
        pbc = torch.ones(3, dtype=torch.bool, device=device)

        def run(positions, cell):
            return model(
                torch.as_tensor(positions, dtype=dtype, device=device),
                numbers_t,
                torch.as_tensor(cell, dtype=dtype, device=device),
                pbc,
            )

    def fn(positions: np.ndarray, cell: np.ndarray) -> tuple[float, np.ndarray]:
        positions = np.asarray(positions, dtype=np.float64)
        if positions.shape != (len(numbers_t), 3):
            raise ValueError(f"positions must have shape ({len(numbers_t)}, 3), got {positions.shape}")
        with torch.no_grad():  # the ForceModel takes its own gradient; the program holds its backward
            energy, forces = run(positions, np.asarray(cell, dtype=np.float64))
        return float(energy), forces.detach().cpu().double().numpy()

    return fn


def model_force(
    model: ForceModel | torch.nn.Module, numbers: np.ndarray, device: str | torch.device = "cpu"
) -> openmm.PythonForce:
    """An ``openmm.PythonForce`` (periodic) computing ``model``'s energy and forces.

    The callback converts OpenMM's nm to Å, the model's eV to kJ/mol and eV/Å
    to kJ/(mol nm); see :func:`energy_forces_function` for ``model``.
    """
    fn = energy_forces_function(model, numbers, device)

    def compute(state):
        positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer) * NM_TO_ANGSTROM
        cell = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer) * NM_TO_ANGSTROM
        energy, forces = fn(np.asarray(positions), np.asarray(cell))
        return energy * EV_TO_KJ_PER_MOL, forces * EV_PER_ANGSTROM_TO_KJ_PER_MOL_NM

    force = openmm.PythonForce(compute)
    force.setUsesPeriodicBoundaryConditions(True)
    return force


def add_model_force(
    system: openmm.System,
    model: ForceModel | torch.nn.Module,
    numbers: np.ndarray,
    device: str | torch.device = "cpu",
    remove_other_forces: bool = True,
) -> openmm.PythonForce:
    """Add ``model`` to ``system`` as a PythonForce; returns the force.

    remove_other_forces : drop the system's own forces first (the model then
        is the whole potential; constraints stay), as for a force-field system
        built by :func:`scalepool.data.build_nacl_system`
    """
    if system.getNumParticles() != len(numbers):
        raise ValueError(
            f"the system has {system.getNumParticles()} particles but numbers has {len(numbers)}"
        )
    if remove_other_forces:
        for index in reversed(range(system.getNumForces())):
            system.removeForce(index)
    force = model_force(model, numbers, device)
    system.addForce(force)
    return force


def model_system(numbers: np.ndarray, cell: np.ndarray, rigid_water: bool = True) -> openmm.System:
    """An OpenMM System for a model: masses by atomic number, the periodic box, and
    (``rigid_water``) the three distance constraints of every O, H, H water, which
    OpenMM integrates with SETTLE.  No forces: add them with :func:`add_model_force`.

    numbers : (N,); cell : (3, 3) Å, rows are box vectors (OpenMM needs a reduced box)
    """
    numbers = np.asarray(numbers)
    system = openmm.System()
    for z in numbers:
        system.addParticle(app.element.Element.getByAtomicNumber(int(z)).mass)
    box = np.asarray(cell, dtype=np.float64) * ANGSTROM_TO_NM
    system.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*row) * unit.nanometer for row in box))
    if rigid_water:
        for i in range(len(numbers) - 2):
            if tuple(numbers[i : i + 3]) == (OXYGEN, HYDROGEN, HYDROGEN):
                system.addConstraint(i, i + 1, WATER_OH * ANGSTROM_TO_NM)
                system.addConstraint(i, i + 2, WATER_OH * ANGSTROM_TO_NM)
                system.addConstraint(i + 1, i + 2, WATER_HH * ANGSTROM_TO_NM)
    return system
