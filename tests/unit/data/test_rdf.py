"""Radial distribution functions and contact ion pairs against known answers."""

from __future__ import annotations

import numpy as np
import pytest

from scalepool.data import FrameSet, contact_ion_mask, first_minimum, radial_distribution


def _frames(positions, numbers, box):
    n_frames, n_atoms = positions.shape[:2]
    return FrameSet(
        positions=positions,
        forces=np.zeros((n_frames, n_atoms, 3), np.float32),
        numbers=np.asarray(numbers),
        cell=np.broadcast_to(np.eye(3) * box, (n_frames, 3, 3)).copy(),
    )


def test_ideal_gas_is_flat():
    """Uncorrelated points: g(r) = 1 within counting noise at every r."""
    rng = np.random.default_rng(0)
    box, n = 20.0, 200
    positions = rng.uniform(0, box, size=(40, n, 3))
    numbers = np.array([11, 17] * (n // 2))
    r, g = radial_distribution(_frames(positions, numbers, box), 11, 17, r_max=8.0, width=0.5)
    far = r > 3.0  # enough pairs per bin for a 10 % check
    assert np.all(np.abs(g[far] - 1.0) < 0.1), g[far]


def test_rock_salt_peaks_and_minimum():
    """Rock salt of lattice constant a: Na-Cl shells at a/2, a*sqrt(3)/2; nothing below a/2."""
    a, reps = 5.64, 3
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    cells = np.array([[i, j, k] for i in range(reps) for j in range(reps) for k in range(reps)])
    na = (cells[:, None, :] + base[None]).reshape(-1, 3) * a
    cl = na + np.array([0.5, 0, 0]) * a
    rng = np.random.default_rng(1)
    positions = np.concatenate([na, cl])[None] + rng.normal(scale=0.05, size=(4, 2 * len(na), 3))
    numbers = [11] * len(na) + [17] * len(cl)
    frames = _frames(positions, numbers, a * reps)
    r, g = radial_distribution(frames, 11, 17, r_max=6.0, width=0.05)
    assert g[r < 2.5].max() == 0.0
    assert abs(r[np.argmax(g)] - a / 2) < 0.1
    minimum = first_minimum(r, g)
    assert a / 2 + 0.1 < minimum < a * np.sqrt(3) / 2 - 0.1
    # every ion has its 6 counter-ions at a/2 (+- noise): all in contact at 3.0 Å, none at 2.5 Å
    assert contact_ion_mask(positions, np.array(numbers), frames.cell, 3.0).all()
    assert not contact_ion_mask(positions, np.array(numbers), frames.cell, 2.5).any()


def test_refuses_a_radius_beyond_half_the_box():
    frames = _frames(np.zeros((1, 2, 3)) + [[0, 0, 0], [1, 1, 1]], [11, 17], 10.0)
    with pytest.raises(ValueError, match="exceeds half the smallest cell height"):
        radial_distribution(frames, 11, 17, r_max=6.0)
