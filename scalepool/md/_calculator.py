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

from ..models import AtomsBatch, ForceModel, LatentChargeEwald, load_model
from ._molecular import ideal_gas_correction, molecular_virial, molecule_offsets, water_molecule_ids


class ScalepoolCalculator(Calculator):
    """Energy (eV), forces (eV/Å), per-atom energies (eV) and stress (eV/Å^3) of a scalepool model for ASE.

    Parameters
    ----------
    model : any ForceModel (a copy is not made; the model is put in eval mode
        and moved to ``device`` and the chosen dtype)
    float64 : evaluate in double precision (recommended for energy-conservation checks)
    device : torch device
    molecules : ``None`` (atomic stress), ``"water"`` (each O, H, H water one
        molecule, ions alone: :func:`~scalepool.md.water_molecule_ids`) or an
        (n_atoms,) integer molecule id per atom.  Use it with rigid molecules
        (:class:`~scalepool.md.RigidBonds`), e.g. for a barostat.  With
        ``molecules`` the P3M/PME mesh of every electrostatics head is frozen
        at the first periodic cell computed (:meth:`LatentChargeEwald.freeze_mesh`),
        so the energy does not jump when the box crosses a mesh-size boundary.

    The Atoms must be fully periodic (the cell rows are the cell vectors) or
    fully open; mixed boundary conditions are refused.  ``stress`` is ASE's
    Voigt 6-vector (xx, yy, zz, yz, xz, xy), (1/V) dE/d strain in eV/Å^3, from
    autograd (:meth:`ForceModel.forward` with ``compute_stress``), computed
    with the forces for periodic Atoms (open Atoms have none); a call that
    asks for energies only runs no backward pass.  ``energies``
    are the model's atomic energies, which sum to ``energy``.

    With ``molecules`` the stress is the *molecular* one (eV/Å^3, ASE sign;
    :mod:`scalepool.md._molecular` derives it): the strain moves the molecules'
    centres of mass and keeps their shapes, ``sigma_atomic + (1/V)
    sym(sum_i F_i (x) d_i)`` with ``d_i`` atom minus centre of mass.  Rigid
    molecules then need no constraint virial.  :meth:`get_stress` also adds
    ``(1/V)(sum_i p_i p_i / m_i - sum_m P_m P_m / M_m)`` from the momenta of
    the Atoms it is given (at call time, never cached), so that
    ``atoms.get_stress(include_ideal_gas=True)``, which ASE's barostats read,
    is the molecular pressure tensor with the centre-of-mass ideal-gas term
    ``-(1/V) sum_m P_m P_m / M_m``.  (Without momenta that term is zero; read
    without ``include_ideal_gas`` the value then holds the atomic-minus-molecular
    kinetic difference and is not a virial alone.)
    """

    implemented_properties = ["energy", "free_energy", "forces", "energies", "stress"]

    def __init__(
        self,
        model: ForceModel,
        float64: bool = False,
        device: str | torch.device = "cpu",
        molecules: str | np.ndarray | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(molecules, str) and molecules != "water":
            raise ValueError(
                f'molecules must be None, "water" or an array of molecule ids, got {molecules!r}'
            )
        self.molecules = molecules
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
        if self.molecules is not None and batch.cell is not None:
            # NPT: keep the P3M mesh of the first cell, so the energy is smooth in the cell.
            for head in self.model.modules():
                if isinstance(head, LatentChargeEwald) and head.method != "ewald" and head.mesh_shape is None:
                    head.freeze_mesh(batch.cell[0])
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
            if self.molecules is not None:
                offsets = molecule_offsets(
                    self.atoms.positions,
                    self.atoms.cell[:],
                    self.atoms.get_masses(),
                    self._molecule_ids(self.atoms),
                )
                full = full + molecular_virial(self.results["forces"], offsets, self.atoms.get_volume())
            self.results["stress"] = full_3x3_to_voigt_6_stress(full)

    def _molecule_ids(self, atoms) -> np.ndarray:
        """(n_atoms,) molecule id per atom for ``molecules`` (raises naming the mismatch)."""
        if isinstance(self.molecules, str):
            return water_molecule_ids(atoms.numbers)
        ids = np.asarray(self.molecules)
        if ids.shape != (len(atoms),):
            raise ValueError(f"molecules has shape {ids.shape}, the Atoms have {len(atoms)} atoms")
        return ids

    def get_stress(self, atoms=None):
        """Voigt stress, eV/Å^3; with ``molecules`` plus the centre-of-mass ideal-gas
        correction from the momenta of ``atoms`` now (see the class docstring)."""
        stress = super().get_stress(atoms)
        if self.molecules is None:
            return stress
        atoms = self.atoms if atoms is None else atoms
        if not atoms.has("momenta"):
            return stress
        correction = ideal_gas_correction(
            atoms.get_momenta(), atoms.get_masses(), self._molecule_ids(atoms), atoms.get_volume()
        )
        return stress + full_3x3_to_voigt_6_stress(correction)
