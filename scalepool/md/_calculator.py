"""ASE calculator around any :class:`~scalepool.models.ForceModel`.

Works for a single branch and for a :class:`~scalepool.scales.MixedForceModel`
alike; forces are ``-dE/dx`` of the model, so MD with a conservative model
conserves the total energy up to the integrator error.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from ..models import AtomsBatch, ForceModel, load_model


class ScalepoolCalculator(Calculator):
    """Energy (eV), forces (eV/Å), per-atom energies (eV) and stress (eV/Å^3) of a scalepool model for ASE.

    Parameters
    ----------
    model : any ForceModel (a copy is not made; the model is put in eval mode
        and moved to ``device`` and the chosen dtype)
    float64 : evaluate in double precision (recommended for energy-conservation checks)
    device : torch device

    The Atoms must be fully periodic (the cell rows are the cell vectors) or
    fully open; mixed boundary conditions are refused.  ``stress`` is ASE's
    Voigt 6-vector (xx, yy, zz, yz, xz, xy), (1/V) dE/d strain in eV/Å^3, from
    autograd (:meth:`ForceModel.forward` with ``compute_stress``), computed
    with the forces for periodic Atoms (open Atoms have none); a call that
    asks for energies only runs no backward pass.  ``energies``
    are the model's atomic energies, which sum to ``energy``.
    """

    implemented_properties = ["energy", "free_energy", "forces", "energies", "stress"]

    def __init__(
        self, model: ForceModel, float64: bool = False, device: str | torch.device = "cpu", **kwargs
    ):
        super().__init__(**kwargs)
        self.dtype = torch.float64 if float64 else torch.float32
        self.device = torch.device(device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu", float64: bool = False, **kwargs
    ) -> ScalepoolCalculator:
        """A calculator for the model file at ``path`` (any :func:`~scalepool.models.save_model` file)."""
        return cls(load_model(path, map_location="cpu"), float64=float64, device=device, **kwargs)

    def atoms_to_batch(self, atoms) -> AtomsBatch:
        """An :class:`AtomsBatch` of one frame from ``atoms``."""
        pbc = np.asarray(atoms.pbc, dtype=bool)
        if pbc.any() and not pbc.all():
            raise ValueError(f"boundary conditions must be all periodic or all open, got pbc={pbc.tolist()}")
        n = len(atoms)
        cell = None
        if pbc.all():
            cell = torch.as_tensor(np.asarray(atoms.cell[:]), dtype=self.dtype, device=self.device)[None]
        return AtomsBatch(
            positions=torch.as_tensor(atoms.get_positions(), dtype=self.dtype, device=self.device),
            numbers=torch.as_tensor(atoms.get_atomic_numbers(), dtype=torch.long, device=self.device),
            frame_index=torch.zeros(n, dtype=torch.long, device=self.device),
            cell=cell,
            n_frames=1,
        )

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        batch = self.atoms_to_batch(self.atoms)
        if "stress" in properties and batch.cell is None:
            raise PropertyNotImplementedError(
                f"stress needs periodic Atoms; got pbc={np.asarray(self.atoms.pbc).tolist()}"
            )
        # Energy-only calls (finite differences, optimiser line searches) skip the backward
        # pass.  Otherwise forces and, when periodic, the stress come from one backward pass
        # (the stress costs one more small input), so NPT integrators, which ask for forces
        # and then the stress, evaluate the model once per step.
        gradients = "forces" in properties or "stress" in properties
        stress = gradients and batch.cell is not None
        out = self.model(batch, compute_forces=gradients, create_graph=False, compute_stress=stress)
        energy = float(out["energy"].detach()[0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": out["atomic_energies"].detach().cpu().double().numpy(),
        }
        if gradients:
            self.results["forces"] = out["forces"].detach().cpu().double().numpy()
        if stress:
            full = out["stress"].detach().cpu().double().numpy()[0]
            self.results["stress"] = full_3x3_to_voigt_6_stress(full)
