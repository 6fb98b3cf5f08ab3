"""Fixtures of the export tests: a small NaCl testbed frame and small, perturbed models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalepool.models import MixedForceModel, build_branch
from scalepool.units import NM_TO_ANGSTROM

SMALL = dict(n_features=8, n_interactions=1)


@pytest.fixture(scope="package")
def nacl_frame():
    """(positions (N, 3) Å, numbers (N,), cell (3, 3) Å, openmm System): a 1.9 nm testbed box."""
    from openmm.unit import nanometer

    from scalepool.data import build_nacl_system

    topology, system, positions = build_nacl_system(box_nm=1.9, molarity=1.5, seed=0)
    numbers = np.array([atom.element.atomic_number for atom in topology.atoms()])
    cell = np.asarray(topology.getPeriodicBoxVectors().value_in_unit(nanometer)) * NM_TO_ANGSTROM
    return positions, numbers, cell, system


def perturbed(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """``model`` with seeded noise on every parameter and species table, so that paths
    initialised to zero (MuSE's unpooling, the mixed model's router offset) contribute."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(model.parameters()) + [b for n, b in model.named_buffers() if "species_s" in n]:
            if tensor.is_floating_point():
                tensor.add_(scale * torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype))
    return model.eval()


def build(name: str) -> torch.nn.Module:
    """A small model of each exportable kind, perturbed."""
    if name == "mixed":
        model = MixedForceModel(build_branch("short", **SMALL), build_branch("long", **SMALL))
    else:
        model = build_branch(name, **SMALL)
    return perturbed(model)


@pytest.fixture(scope="package")
def small_model():
    """``small_model(kind)``: a small perturbed model, kind in short, long, muse, mixed."""
    return build
