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

__all__ = [
    "SUPPORTED_READ",
    "SUPPORTED_WRITE",
    "DatasetError",
    "FrameSet",
    "close_contact_mask",
    "companion_topology",
    "frameset_descriptors",
    "keys",
    "min_ion_ion_distance",
    "nearest_counterion_distance",
    "nearest_ion_distance",
    "read_frames",
    "save_npz_atomic",
    "time_block_split",
    "write_frames",
]
