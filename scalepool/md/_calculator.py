"""ASE calculator around any :class:`~scalepool.models.ForceModel`.

Works for a single branch and for a :class:`~scalepool.scales.MixedForceModel`
alike; forces are ``-dE/dx`` of the model, so MD with a conservative model
conserves the total energy up to the integrator error.
"""

from __future__ import annotations

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from ..models import AtomsBatch, ForceModel


class ScalepoolCalculator(Calculator):
    """Energy (eV) and forces (eV/Å) of a scalepool model for ASE.

    Parameters
    ----------
    model : any ForceModel (a copy is not made; the model is put in eval mode
        and moved to ``device`` and the chosen dtype)
    float64 : evaluate in double precision (recommended for energy-conservation checks)
    device : torch device

    The Atoms must be fully periodic (the cell rows are the cell vectors) or
    fully open; mixed boundary conditions are refused.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(
        self, model: ForceModel, float64: bool = False, device: str | torch.device = "cpu", **kwargs
    ):
        super().__init__(**kwargs)
        self.dtype = torch.float64 if float64 else torch.float32
        self.device = torch.device(device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()

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
        out = self.model(self.atoms_to_batch(self.atoms), compute_forces=True, create_graph=False)
        energy = float(out["energy"].detach()[0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": out["forces"].detach().cpu().double().numpy(),
        }
