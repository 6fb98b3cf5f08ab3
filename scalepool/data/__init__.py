"""Datasets: FrameSet, npz schema, trajectory I/O, the NaCl testbed, descriptors."""

from . import _keys as keys
from ._frameset import DatasetError, FrameSet, save_npz_atomic, time_block_split
from ._io import SUPPORTED_READ, SUPPORTED_WRITE, companion_topology, read_frames, write_frames

__all__ = [
    "SUPPORTED_READ",
    "SUPPORTED_WRITE",
    "DatasetError",
    "FrameSet",
    "companion_topology",
    "keys",
    "read_frames",
    "save_npz_atomic",
    "time_block_split",
    "write_frames",
]
