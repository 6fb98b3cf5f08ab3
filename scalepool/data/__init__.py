"""Datasets: FrameSet, npz schema, trajectory I/O, the NaCl testbed, descriptors."""

from . import _keys as keys
from ._descriptors import (
    close_contact_mask,
    frameset_descriptors,
    min_ion_ion_distance,
    nearest_counterion_distance,
    nearest_ion_distance,
)
from ._frameset import DatasetError, FrameSet, save_npz_atomic, time_block_split
from ._io import SUPPORTED_READ, SUPPORTED_WRITE, companion_topology, read_frames, write_frames
from ._nacl import build_nacl_system, generate_nacl, openmm_reference_forces

__all__ = [
    "SUPPORTED_READ",
    "SUPPORTED_WRITE",
    "DatasetError",
    "FrameSet",
    "close_contact_mask",
    "companion_topology",
    "build_nacl_system",
    "frameset_descriptors",
    "generate_nacl",
    "keys",
    "min_ion_ion_distance",
    "nearest_counterion_distance",
    "nearest_ion_distance",
    "openmm_reference_forces",
    "read_frames",
    "save_npz_atomic",
    "time_block_split",
    "write_frames",
]
