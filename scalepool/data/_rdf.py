"""Radial distribution functions and the contact-ion-pair distance they define.

The contact ion pair (CIP) of an electrolyte is the first peak of the
cation-anion radial distribution function g(r); its first minimum separates
contact pairs from solvent-shared ones.  :func:`first_minimum` reads that
distance off a measured g(r), and :data:`scalepool.units.CONTACT_PAIR_DISTANCE`
holds the value measured on the NaCl testbed.
"""

from __future__ import annotations

import numpy as np

from ._descriptors import minimum_image_distances, nearest_ion_distance
from ._frameset import FrameSet


def radial_distribution(
    frames: FrameSet, species_a: int, species_b: int, r_max: float = 8.0, width: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """g_ab(r) over all frames, minimum image, normalised by the ideal-gas pair density.

    frames : a periodic FrameSet; species_a, species_b : atomic numbers;
    r_max : Å, at most half the shortest cell height; width : Å, bin width.
    Returns ``(r, g)``: bin centres (n_bins,) Å and g(r) (n_bins,), dimensionless.
    """
    if frames.cell is None:
        raise ValueError("a radial distribution needs a periodic dataset (cell is None)")
    a = np.flatnonzero(frames.numbers == species_a)
    b = np.flatnonzero(frames.numbers == species_b)
    if not len(a) or not len(b):
        raise ValueError(f"no atoms of species {species_a} or {species_b} in the dataset")
    edges = np.arange(0.0, r_max + width / 2, width)
    counts = np.zeros(len(edges) - 1)
    density = 0.0
    for f in range(frames.n_frames):
        cell = frames.cell[f]
        heights = abs(np.linalg.det(cell)) / np.linalg.norm(
            np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1
        )
        if r_max > heights.min() / 2:
            raise ValueError(
                f"r_max {r_max} Å exceeds half the smallest cell height {heights.min() / 2:.2f} Å"
            )
        d = minimum_image_distances(frames.positions[f, a], frames.positions[f, b], cell)
        if species_a == species_b:
            d = d[~np.eye(len(a), dtype=bool)]
        counts += np.histogram(d.ravel(), bins=edges)[0]
        pairs = len(a) * (len(b) - (species_a == species_b))
        density += pairs / abs(np.linalg.det(cell))  # pairs per Å^3
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    return 0.5 * (edges[1:] + edges[:-1]), counts / (shell * density)


def first_minimum(r: np.ndarray, g: np.ndarray, smooth: int = 3) -> float:
    """Å: the first minimum of g(r) after its first peak (g smoothed by a running mean of
    ``smooth`` bins, so a sampling dip inside the peak is not taken for it)."""
    kernel = np.ones(smooth) / smooth
    gs = np.convolve(g, kernel, mode="same")
    peak = int(np.argmax(gs > 1.0))  # first bin above the ideal-gas value
    if gs[peak] <= 1.0:
        raise ValueError("g(r) never exceeds 1: no first peak")
    while peak + 1 < len(gs) and gs[peak + 1] >= gs[peak]:
        peak += 1
    lowest = peak
    for i in range(peak + 1, len(gs)):
        if gs[i] < gs[lowest]:
            lowest = i
        elif gs[i] > gs[lowest] + 0.1 * (gs[peak] - gs[lowest]):  # climbed clearly out of the well
            break
    return float(r[lowest])


def contact_ion_mask(positions, numbers, cell, distance: float) -> np.ndarray:
    """Which atoms are ions in a contact pair: nearest counter-ion within ``distance`` Å.

    positions : (F, N, 3) Å; numbers : (N,); cell : (F, 3, 3) Å rows or ``None``;
    distance : Å, e.g. :data:`scalepool.units.CONTACT_PAIR_DISTANCE`.
    Returns (F, N) bool, False for every non-ion.
    """
    from ._descriptors import nearest_counterion_distance

    positions = np.asarray(positions, dtype=np.float64)
    out = np.zeros(positions.shape[:2], dtype=bool)
    for f in range(len(positions)):
        d, ions = nearest_counterion_distance(positions[f], numbers, None if cell is None else cell[f])
        out[f, ions] = d <= distance
    return out


def nearest_ion_distance_frames(
    positions: np.ndarray, numbers: np.ndarray, cell: np.ndarray | None
) -> np.ndarray:
    """``(F, N)`` distance of every atom to its nearest other ion, Å, frame by frame with
    :func:`nearest_ion_distance` (exact minimum image for any cell); ``inf`` where there is
    no other ion.  positions : (F, N, 3) Å; numbers : (N,); cell : (F, 3, 3) Å rows or None."""
    return np.stack(
        [
            np.asarray(nearest_ion_distance(positions[f], numbers, None if cell is None else cell[f]))
            for f in range(len(positions))
        ]
    ).astype(np.float64)
