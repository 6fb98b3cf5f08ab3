"""Trace a scalepool model, energy and forces together, into one ``torch.export`` program.

The exported program has one signature, for one periodic frame::

    forward(positions, numbers, cell, pbc) -> (energy, forces)

    positions : (N, 3) Å, float (the exported dtype: float32 unless --float64)
    numbers   : (N,) int64, atomic numbers
    cell      : (3, 3) Å, rows are cell vectors, same dtype as positions
    pbc       : (3,) bool, periodic axes
    energy    : () eV
    forces    : (N, 3) eV/Å, -dE/dx

and loads in a Python process without scalepool::

    program = torch.export.load("model.pt2").module()
    energy, forces = program(positions, numbers, cell, pbc)

How: ``make_fx(tracing_mode="symbolic")`` runs the model once on fake tensors
of symbolic size, with ``torch.autograd.grad`` inside, and records every
forward and backward aten op into one graph; ``torch.export.export`` then
turns that graph into a program with a dynamic atom count.  The parts of the
scalepool models that the tracer cannot follow are swapped, on a private deep
copy of the model, for equivalent plain-torch versions (:mod:`._swaps`): the
neighbour lists (vesin) for :func:`torch_neighbor_list` (pair counts become
unbacked sizes), the fused edge kernels for their ``index_add`` twins, the
multi-frame electrostatics loop for its one-frame body.  What stays fixed in
the graph: the P3M/PME mesh size (from the cell given at export, valid for
every cell with the same mesh, which the program checks) and the dtype and
device of the export.
"""

from __future__ import annotations

import copy
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.export import Dim
from torch.fx.experimental.proxy_tensor import make_fx

from .._files import jsonable, write_atomic
from ..models import AtomsBatch, ForceModel
from ._swaps import traceable_copy

#: Format tag stored in the exported file's extra file ``scalepool.json``.
FORMAT = "scalepool-exported/1"
METADATA_FILE = "scalepool.json"
SIGNATURE = (
    "forward(positions (N,3) Å, numbers (N,) int64, cell (3,3) Å, pbc (3,) bool) "
    "-> (energy () eV, forces (N,3) eV/Å)"
)


def _example(positions, numbers, cell, dtype, device) -> tuple[torch.Tensor, ...]:
    positions = torch.as_tensor(np.asarray(positions), dtype=dtype, device=device)
    numbers = torch.as_tensor(np.asarray(numbers), dtype=torch.int64, device=device)
    if cell is None:
        raise ValueError("export needs a periodic example frame: cell is None")
    cell = torch.as_tensor(np.asarray(cell), dtype=dtype, device=device)
    if positions.dim() != 2 or positions.shape[1] != 3:
        raise ValueError(f"example positions must have shape (N, 3), got {tuple(positions.shape)}")
    if numbers.shape != (positions.shape[0],):
        raise ValueError(
            f"example numbers must have shape ({positions.shape[0]},), got {tuple(numbers.shape)}"
        )
    if cell.shape != (3, 3):
        raise ValueError(f"example cell must have shape (3, 3), got {tuple(cell.shape)}")
    if positions.shape[0] < 2:
        raise ValueError("the example frame needs at least 2 atoms")
    pbc = torch.ones(3, dtype=torch.bool, device=device)
    return positions, numbers, cell, pbc


def export_model(
    model: ForceModel,
    positions: np.ndarray,
    numbers: np.ndarray,
    cell: np.ndarray,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> torch.export.ExportedProgram:
    """The exported program of ``model`` (see the module docstring), traced on one example frame.

    Parameters
    ----------
    model : any scalepool ForceModel (short, long with its P3M head, MuSE, MixedForceModel);
        it is not changed (a deep copy is traced)
    positions : (N, 3) Å, numbers : (N,), cell : (3, 3) Å: a periodic example frame; its
        cell fixes the P3M/PME mesh size of electrostatic heads
    dtype : float32 (default) or float64; device : where the program runs

    Returns a ``torch.export.ExportedProgram`` with a dynamic atom count (>= 2).
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    example = _example(positions, numbers, cell, dtype, device)
    deployed = traceable_copy(copy.deepcopy(model).to(device=device, dtype=dtype).eval(), example)
    for parameter in deployed.parameters():
        parameter.requires_grad_(False)

    def energy_forces(positions, numbers, cell, pbc):
        positions = positions.detach().requires_grad_(True)
        with torch.enable_grad():
            energy = deployed(positions, numbers, cell, pbc)
            (grad,) = torch.autograd.grad(energy, positions)
        return energy.detach(), -grad.detach()

    with torch.enable_grad():
        graph = make_fx(energy_forces, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*example)
    atoms = Dim("n_atoms", min=2)
    return torch.export.export(graph, example, dynamic_shapes=({0: atoms}, {0: atoms}, None, None))


def metadata(model: ForceModel, dtype: torch.dtype, device, cell: np.ndarray) -> dict[str, Any]:
    """What the exported file records about itself (JSON-able)."""
    return {
        "format": FORMAT,
        "signature": SIGNATURE,
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "cutoff": float(model.cutoff),
        "export_cell": np.asarray(cell, dtype=float).tolist(),
        "model_config": model.config,
        "load": "torch.export.load(path).module()",
    }


def save_exported(
    program: torch.export.ExportedProgram, path: str | os.PathLike, meta: dict[str, Any] | None = None
) -> Path:
    """Write ``program`` as ONE ``torch.export.save`` archive (temporary file, then rename).

    ``meta`` goes into the archive's extra file ``scalepool.json``.
    """
    path = Path(path)
    buffer = io.BytesIO()
    extra = {METADATA_FILE: json.dumps(meta or {"format": FORMAT, "signature": SIGNATURE}, default=jsonable)}
    torch.export.save(program, buffer, extra_files=extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, buffer.getvalue())


def load_exported(path: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(module, metadata)`` of a file written by :func:`save_exported` (plain torch only).

    ``module(positions, numbers, cell, pbc) -> (energy, forces)`` as in :data:`SIGNATURE`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"exported model not found: {path}")
    extra = {METADATA_FILE: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
    except Exception as err:  # torch raises several types for a foreign file
        raise ValueError(f"{path} is not a torch.export archive: {err}") from err
    meta = json.loads(extra[METADATA_FILE] or "{}")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} has no scalepool export metadata (expected format {FORMAT!r})")
    return program.module(), meta


def reference_energy_forces(model: ForceModel, positions, numbers, cell) -> tuple[torch.Tensor, torch.Tensor]:
    """Energy () eV and forces (N, 3) eV/Å of the scalepool model itself, for comparisons."""
    param = next(model.parameters())
    batch = AtomsBatch.from_arrays(
        np.asarray(positions)[None], np.asarray(numbers), np.asarray(cell)[None], dtype=param.dtype,
        device=param.device,
    )  # fmt: skip
    out = model(batch)
    return out["energy"][0].detach(), out["forces"].detach()


__all__ = [
    "FORMAT",
    "METADATA_FILE",
    "SIGNATURE",
    "export_model",
    "load_exported",
    "metadata",
    "reference_energy_forces",
    "save_exported",
]
