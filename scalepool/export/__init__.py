"""Exported models: any scalepool force model as ONE ``torch.export`` file that runs
with plain torch (no scalepool import), and OpenMM integration.

The exported program's one signature::

    forward(positions (N, 3) Å, numbers (N,) int64, cell (3, 3) Å, pbc (3,) bool)
        -> (energy () eV, forces (N, 3) eV/Å)

Load it with ``torch.export.load(path).module()``.  :func:`export_model`
builds it, :func:`save_exported` / :func:`load_exported` write and read it,
:func:`add_model_force` puts a model (exported or not) into an OpenMM System as
a ``PythonForce``.
"""

from ._neighbors import cell_heights, torch_neighbor_list
from ._trace import (
    FORMAT,
    METADATA_FILE,
    SIGNATURE,
    export_model,
    load_exported,
    metadata,
    reference_energy_forces,
    save_exported,
)

# The OpenMM helpers load OpenMM on first use, so exporting works without it.
_OPENMM_NAMES = ("WATER_HH", "WATER_OH", "add_model_force", "energy_forces_function", "model_force", "model_system")


def __getattr__(name: str):
    if name in _OPENMM_NAMES:
        from . import _openmm

        return getattr(_openmm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FORMAT",
    "METADATA_FILE",
    "SIGNATURE",
    "WATER_HH",
    "WATER_OH",
    "add_model_force",
    "cell_heights",
    "energy_forces_function",
    "export_model",
    "load_exported",
    "metadata",
    "model_force",
    "model_system",
    "reference_energy_forces",
    "save_exported",
    "torch_neighbor_list",
]
