"""Synthetic prediction caches with known best scales, for tests and demos.

Reference forces are built as F_ref = (1 - s) F_0 + s F_1 + noise with a
known per-sample scale s drawn from ``true_scales``, so oracles, pool
refinement and routers have a known answer to recover.
"""

from __future__ import annotations

import numpy as np

from ..data import PredictionCache, time_block_split
from ..data import keys as K
from ..units import CHLORINE, HYDROGEN, OXYGEN, SODIUM
from ._geometry import nearest_ion
from ._samples import sample_groups


def synthetic_cache(
    n_frames: int = 20,
    n_atoms: int = 150,
    n_ions: int = 6,
    true_scales: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0),
    rule: str = "distance",
    granularity: str = "atom",
    noise: float = 0.01,
    disagreement: float = 0.3,
    density: float = 0.1,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    return_truth: bool = False,
):
    """A random periodic "salt water" cache whose best scales are known.

    Parameters
    ----------
    n_frames, n_atoms, n_ions : sizes; ions alternate Na, Cl, the rest are
        water-like O, H, H triplets placed uniformly in a cubic box
    true_scales : the scales the reference is built from
    rule : ``"distance"``: samples are ranked by their mean nearest-ion
        distance and split into ``len(true_scales)`` equal-count bins, the
        closest bin taking the largest scale (learnable by a router);
        ``"random"``: each sample draws a scale uniformly
    granularity : the samples that share one true scale (``"frame"``,
        ``"ion"``, ``"atom"``)
    noise : standard deviation of the reference noise per component, eV/Å
    disagreement : typical |F_1 - F_0| per component, eV/Å (log-normal per atom)
    density : atoms per Å^3 (water is about 0.1)
    fractions : contiguous train/val/test blocks of frames

    Returns
    -------
    cache, or ``(cache, s_true)`` with ``s_true: (F, N)`` per-atom true scales
    if ``return_truth``.
    """
    if rule not in ("distance", "random"):
        raise ValueError(f"rule must be 'distance' or 'random', got {rule!r}")
    rng = np.random.default_rng(seed)
    numbers = np.empty(n_atoms, dtype=np.int64)
    numbers[:n_ions] = np.where(np.arange(n_ions) % 2 == 0, SODIUM, CHLORINE)
    water = np.tile([OXYGEN, HYDROGEN, HYDROGEN], n_atoms)[: n_atoms - n_ions]
    numbers[n_ions:] = water
    box = (n_atoms / density) ** (1.0 / 3.0)
    cell = np.broadcast_to(np.eye(3) * box, (n_frames, 3, 3)).copy()
    positions = rng.uniform(0.0, box, size=(n_frames, n_atoms, 3))
    f0 = rng.normal(size=(n_frames, n_atoms, 3))
    amplitude = disagreement * np.exp(rng.normal(scale=0.5, size=(n_frames, n_atoms, 1)))
    f1 = f0 + amplitude * rng.normal(size=(n_frames, n_atoms, 3))

    groups = sample_groups(granularity, numbers, positions, cell)
    scales = np.asarray(true_scales, dtype=np.float64)
    if rule == "random" or n_ions == 0:
        sample_scale = rng.choice(scales, size=groups.n_samples)
    else:
        _, distance = nearest_ion(positions, numbers, cell, exclude_self=True)
        distance = np.where(np.isfinite(distance), distance, box)
        rank = np.argsort(np.argsort(groups.mean(distance)))
        bins = (rank * scales.size) // groups.n_samples  # 0 = closest
        sample_scale = np.sort(scales)[::-1][bins]
    s_true = groups.atom_scales(sample_scale)
    forces_ref = f0 + s_true[..., None] * (f1 - f0) + noise * rng.normal(size=f0.shape)

    split = np.full(n_frames, -1, dtype=np.int64)
    blocks = time_block_split(n_frames, fractions)
    for name, index in blocks.items():
        split[index] = K.SPLIT_CODES[name]
    cache = PredictionCache(
        forces_ref=forces_ref,
        branches={"short": f0, "long": f1},
        numbers=numbers,
        positions=positions,
        cell=cell,
        split=split,
        anchors=("short", "long"),
        meta={
            "generator": "scalepool.scales.synthetic_cache",
            "frame_index": list(range(n_frames)),
            "split_blocks": {name: [int(i[0]), int(i[-1]) + 1] for name, i in blocks.items() if len(i)},
            "seed": seed,
            "true_scales": [float(s) for s in true_scales],
            "rule": rule,
            "granularity": granularity,
            "noise_eV_A": noise,
        },
    )
    return (cache, s_true) if return_truth else cache
