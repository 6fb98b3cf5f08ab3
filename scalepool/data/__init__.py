"""Datasets: FrameSet, npz schema, trajectory I/O, the NaCl testbed, descriptors."""

from . import _keys as keys
from ._frameset import DatasetError, FrameSet, save_npz_atomic, time_block_split

__all__ = ["DatasetError", "FrameSet", "keys", "save_npz_atomic", "time_block_split"]
