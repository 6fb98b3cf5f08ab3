"""Router features: what is known at inference, per atom, without reference forces.

- nearest-ion distance (to another ion for an ion), Å, capped at ``cap``;
- number of ions within each radius of ``radii`` (Å);
- species one-hot over a fixed species list;
- branch disagreement |F_1 - F_0| per atom, eV/Å.
"""

from __future__ import annotations

import numpy as np

from ..data import PredictionCache
from ..models import ROUTER_RADII
from ._geometry import atom_ion_distances, ion_counts, ion_mask

FEATURE_RADII = ROUTER_RADII


def atom_features(
    cache: PredictionCache,
    radii: tuple[float, ...] = FEATURE_RADII,
    species: tuple[int, ...] | None = None,
    cap: float = 12.0,
) -> tuple[np.ndarray, list[str]]:
    """Per-atom router features of every frame of ``cache`` (labels unused).

    Parameters
    ----------
    cache : any cache, with or without ``forces_ref``
    radii : Å, radii for the ion counts (below half the smallest box width)
    species : atomic numbers for the one-hot block; the cache's own species if ``None``
    cap : Å, nearest-ion distances above this (or with no other ion) read as ``cap``

    Returns
    -------
    features : (F, N, n_features) float64; (T, n_features) for a ragged cache (flat order)
    names : n_features names
    """
    species = tuple(sorted(set(cache.numbers.tolist()))) if species is None else tuple(species)
    if getattr(cache, "ragged", False):
        nearest, counts = _ragged_ion_features(cache, radii, cap)
        onehot = (cache.numbers[:, None] == np.asarray(species)[None, :]).astype(np.float64)
        f0, f1 = cache.anchor_forces()
        disagreement = np.linalg.norm(f1.astype(np.float64) - f0, axis=-1)
        features = np.concatenate([nearest[:, None], counts, onehot, disagreement[:, None]], axis=-1)
        return features, _names(radii, species)
    dist = atom_ion_distances(cache.positions, cache.numbers, cache.cell)  # (F, N, n_ions), self = 0
    n_frames, n_atoms, n_ions = dist.shape
    if n_ions:
        ions = np.flatnonzero(ion_mask(cache.numbers))
        others = dist.copy()
        others[:, ions, np.arange(n_ions)] = np.inf
        nearest = np.minimum(others.min(axis=-1), cap)
        counts = ion_counts(dist, radii)
    else:
        nearest = np.full((n_frames, n_atoms), cap)
        counts = np.zeros((n_frames, n_atoms, len(radii)))
    onehot = (cache.numbers[:, None] == np.asarray(species)[None, :]).astype(np.float64)
    f0, f1 = cache.anchor_forces()
    disagreement = np.linalg.norm(f1.astype(np.float64) - f0, axis=-1)
    features = np.concatenate(
        [
            nearest[..., None],
            counts.astype(np.float64),
            np.broadcast_to(onehot, (n_frames, n_atoms, len(species))),
            disagreement[..., None],
        ],
        axis=-1,
    )
    return features, _names(radii, species)


def _names(radii, species) -> list[str]:
    return (
        ["nearest_ion_A"]
        + [f"ions_within_{r:g}A" for r in radii]
        + [f"species_{z}" for z in species]
        + ["branch_disagreement_eV_A"]
    )


def _ragged_ion_features(cache, radii, cap: float) -> tuple[np.ndarray, np.ndarray]:
    """Flat ``(T,)`` capped nearest-other-ion distance (Å) and ``(T, len(radii))`` ion counts,
    frame by frame with each frame's own cell (open frames: plain distances)."""
    nearest, counts = [], []
    for i in range(cache.n_frames):
        positions, numbers, cell = cache.frame_geometry(i)
        dist = atom_ion_distances(
            positions[None], numbers, None if cell is None else cell[None]
        )  # (1, n, n_ions)
        n_ions = dist.shape[-1]
        if n_ions == 0:
            nearest.append(np.full(len(numbers), cap))
            counts.append(np.zeros((len(numbers), len(radii))))
            continue
        others = dist[0].copy()
        others[np.flatnonzero(ion_mask(numbers)), np.arange(n_ions)] = np.inf
        nearest.append(np.minimum(others.min(axis=-1), cap))
        counts.append(ion_counts(dist, radii)[0])
    return np.concatenate(nearest), np.concatenate(counts).astype(np.float64)
