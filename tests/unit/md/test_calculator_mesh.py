"""ASE calculator with ``molecules`` (NPT): the P3M mesh is frozen at the first cell."""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms

from scalepool.md import ScalepoolCalculator
from scalepool.models import LatentChargeEwald, build_branch
from scalepool.testing import random_frames


def _atoms(box: float) -> Atoms:
    frames = random_frames(n_atoms=12, box=box, n_frames=1, seed=3, min_distance=1.6, triclinic=False)
    return Atoms(numbers=frames.numbers, positions=frames.positions[0], cell=frames.cell[0], pbc=True)


def _head(model) -> LatentChargeEwald:
    (head,) = [m for m in model.modules() if isinstance(m, LatentChargeEwald)]
    return head


def test_npt_calculator_freezes_the_mesh_at_the_first_cell():
    torch.manual_seed(0)
    frozen = ScalepoolCalculator(
        build_branch("long", fixed_charges=True, n_features=8), molecules=np.arange(12)
    )
    torch.manual_seed(0)
    free = ScalepoolCalculator(build_branch("long", fixed_charges=True, n_features=8))
    atoms = _atoms(8.9)  # h = 1.2 Å: 16 mesh points per axis up to L = 9 Å, then 32
    before = []
    for calc in (frozen, free):
        atoms.calc = calc
        atoms.get_stress()
        before.append(atoms.get_potential_energy())
    assert abs(before[0] - before[1]) < 1e-6  # same model, same mesh at the first cell
    assert _head(frozen.model).mesh_shape == (16, 16, 16)
    assert _head(free.model).mesh_shape is None
    # Past the boundary the frozen run keeps 16 points: its energy differs from the free one's.
    atoms.set_cell(atoms.cell[:] * (9.1 / 8.9), scale_atoms=True)
    energies = []
    for calc in (frozen, free):
        atoms.calc = calc
        energies.append(atoms.get_potential_energy())
    assert _head(frozen.model).mesh_shape == (16, 16, 16)
    assert abs(energies[0] - energies[1]) > 1e-5
