"""Train/val/test splits of a dataset's frames: time blocks (trajectories) or seeded random (independent frames)."""

from __future__ import annotations

import numpy as np


def time_block_split(
    n_frames: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), gap: int = 0
) -> dict[str, np.ndarray]:
    """Split ``range(n_frames)`` into contiguous train/val/test blocks.

    Blocks follow time order, separated by ``gap`` dropped frames, so frames that
    are correlated in time never sit on both sides of a split.  Every block gets
    at least one frame.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions}")
    if gap < 0:
        raise ValueError(f"gap must be >= 0, got {gap}")
    usable = n_frames - 2 * gap
    if usable < 3:
        raise ValueError(f"{n_frames} frames cannot make three blocks with a gap of {gap}")
    total = sum(fractions)
    n_train = max(1, int(round(usable * fractions[0] / total)))
    n_val = max(1, int(round(usable * fractions[1] / total)))
    n_test = usable - n_train - n_val
    if n_test < 1:
        n_train -= 1 - n_test
        n_test = 1
    start_val = n_train + gap
    start_test = start_val + n_val + gap
    return {
        "train": np.arange(0, n_train),
        "val": np.arange(start_val, start_val + n_val),
        "test": np.arange(start_test, start_test + n_test),
    }


def random_split(
    n_frames: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded random train/val/test split of ``range(n_frames)`` for independent frames.

    Block sizes are those of :func:`time_block_split` without a gap; the frames of
    each block are a ``numpy.random.default_rng(seed)`` permutation, sorted.
    """
    sizes = {name: len(idx) for name, idx in time_block_split(n_frames, fractions, 0).items()}
    order = np.random.default_rng(seed).permutation(n_frames)
    out, lo = {}, 0
    for name in ("train", "val", "test"):
        out[name] = np.sort(order[lo : lo + sizes[name]])
        lo += sizes[name]
    return out
