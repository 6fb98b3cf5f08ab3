"""Small synthetic systems for tests and benchmarks (fixed seeds, no physics engine)."""

from __future__ import annotations

import math

import numpy as np

from .. import units
from ..data import FrameSet, minimum_image_vectors

#: Water number density at 300 K, molecules per Å^3.
WATER_DENSITY = 0.0334
_OH = 0.9572  # Å, TIP3P O-H bond length
_HOH = math.radians(104.52)


def _random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3, 3) rotation matrices, uniform on SO(3) (QR of Gaussian matrices)."""
    q, r = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    det = np.linalg.det(q)
    q[:, :, 0] *= det[:, None]
    return q


def random_frames(
    n_atoms: int = 8,
    box: float = 7.0,
    numbers: tuple[int, ...] = (units.OXYGEN, units.HYDROGEN, units.SODIUM, units.CHLORINE),
    n_frames: int = 2,
    seed: int = 0,
    min_distance: float = 1.2,
    triclinic: bool = True,
    periodic: bool = True,
) -> FrameSet:
    """Random atoms in a small box, at least ``min_distance`` Å apart (minimum image).

    Parameters
    ----------
    n_atoms : atoms per frame; species cycle through ``numbers``
    box : Å, edge of the (slightly sheared when ``triclinic``) cell
    periodic : False gives open boundaries (cell ``None``) with atoms inside the box

    Returns a FrameSet with random reference forces (unit normal, eV/Å) and
    energies, so statistics fits have something to fit.
    """
    rng = np.random.default_rng(seed)
    cell = np.eye(3) * box
    if triclinic:
        cell[1, 0] = 0.15 * box
        cell[2, 0], cell[2, 1] = -0.1 * box, 0.12 * box
    frames = np.zeros((n_frames, n_atoms, 3))
    for f in range(n_frames):
        placed: list[np.ndarray] = []
        for _ in range(200 * n_atoms):
            x = rng.uniform(size=3) @ cell
            d = x - np.array(placed).reshape(-1, 3)
            if periodic:
                d = minimum_image_vectors(d, cell)
            if not len(placed) or np.linalg.norm(d, axis=1).min() >= min_distance:
                placed.append(x)
                if len(placed) == n_atoms:
                    break
        if len(placed) < n_atoms:
            raise ValueError(f"could not place {n_atoms} atoms {min_distance} Å apart in a {box} Å box")
        frames[f] = np.array(placed)
    species = np.array([numbers[k % len(numbers)] for k in range(n_atoms)], dtype=np.int64)
    return FrameSet(
        positions=frames,
        forces=rng.normal(size=frames.shape),
        numbers=species,
        cell=np.broadcast_to(cell, (n_frames, 3, 3)).copy() if periodic else None,
        energy=rng.normal(size=n_frames),
        meta={"generator": "scalepool.testing.random_frames", "seed": seed},
    )


def water_box(
    box: float = 25.0, n_ion_pairs: int = 9, seed: int = 0, n_frames: int = 1, jitter: float = 0.3
) -> FrameSet:
    """A water-density box of rigid TIP3P-shaped waters plus Na+/Cl- ions.

    Molecules sit on randomly chosen sites of a cubic grid (jittered by up to
    ``jitter`` Å) with random orientations: the neighbour counts of liquid
    water without its structure, for benchmarks and smoke tests.  A 25 Å box
    holds about 1,530 atoms (504 waters, 9 ion pairs).  Forces are zero and
    energies absent: this is an input, not a reference.

    Returns a FrameSet of ``n_frames`` independent placements (same species order).
    """
    rng = np.random.default_rng(seed)
    n_sites = int(round(WATER_DENSITY * box**3))
    n_water = n_sites - 2 * n_ion_pairs
    if n_water < 0:
        raise ValueError(f"a {box} Å box holds {n_sites} molecules, fewer than {2 * n_ion_pairs} ions")
    m = math.ceil(n_sites ** (1 / 3))
    grid = (np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5) * (box / m)
    local = np.array([[0, 0, 0], [_OH, 0, 0], [_OH * math.cos(_HOH), _OH * math.sin(_HOH), 0]])
    numbers = np.array(
        [units.OXYGEN, units.HYDROGEN, units.HYDROGEN] * n_water
        + [units.SODIUM] * n_ion_pairs
        + [units.CHLORINE] * n_ion_pairs
    )
    positions = np.zeros((n_frames, len(numbers), 3))
    for f in range(n_frames):
        sites = grid[rng.choice(len(grid), n_sites, replace=False)]
        sites = sites + rng.uniform(-jitter, jitter, size=sites.shape)
        rot = _random_rotations(rng, n_water)
        water = sites[:n_water, None, :] + np.einsum("mij,aj->mai", rot, local)
        positions[f] = np.concatenate([water.reshape(-1, 3), sites[n_water:]]) % box
    return FrameSet(
        positions=positions,
        forces=np.zeros_like(positions),
        numbers=numbers,
        cell=np.broadcast_to(np.eye(3) * box, (n_frames, 3, 3)).copy(),
        meta={"generator": "scalepool.testing.water_box", "seed": seed, "box": box},
    )
