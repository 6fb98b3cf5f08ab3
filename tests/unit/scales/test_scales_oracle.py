"""Closed-form oracles against brute force, interpolation and routing granularity."""

from __future__ import annotations

import numpy as np
import pytest

from scalepool.scales import (
    RoutingProblem,
    hard_route,
    interpolate,
    ion_mask,
    optimal_scale_mae,
    optimal_scale_mse,
    sample_groups,
    sample_losses_linear,
    synthetic_cache,
)

GRID = np.linspace(0.0, 1.0, 20001)
STEP = GRID[1] - GRID[0]


def _random_problem(seed: int, n_samples: int = 40):
    """Residuals a, d of samples with 1 to 30 components; optima inside and outside [0, 1]."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 31, size=n_samples)
    sample = np.repeat(np.arange(n_samples), sizes)
    d = rng.normal(size=sample.size) * rng.uniform(0.1, 2.0, size=n_samples)[sample]
    target = rng.uniform(-0.5, 1.5, size=n_samples)[sample]  # some optima outside [0, 1]
    a = target * d + rng.normal(scale=0.3, size=sample.size)
    return a, d, sample, n_samples


def _grid_losses(a, d, sample, n_samples, loss):
    return sample_losses_linear(a, d, sample, n_samples, GRID, loss)  # (n_grid, G)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mse_oracle_matches_fine_grid(seed):
    a, d, sample, n = _random_problem(seed)
    s_star = optimal_scale_mse(a, d, sample, n)
    grid = _grid_losses(a, d, sample, n, "mse")
    at_star = np.array(
        [sample_losses_linear(a, d, sample, n, [s], "mse")[0][g] for g, s in enumerate(s_star)]
    )
    assert np.all(at_star <= grid.min(axis=0) + 1e-10)  # exact optimum beats every grid point
    # strictly convex (|d| > 0): the grid argmin lies within one step of s*
    np.testing.assert_allclose(s_star, GRID[grid.argmin(axis=0)], atol=STEP)
    assert ((s_star == 0) | (s_star == 1)).sum() > 5  # clipping was exercised
    assert ((s_star > 0) & (s_star < 1)).sum() > 5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mae_oracle_matches_fine_grid(seed):
    a, d, sample, n = _random_problem(seed)
    s_star = optimal_scale_mae(a, d, sample, n)
    grid = _grid_losses(a, d, sample, n, "mae")
    at_star = np.array(
        [sample_losses_linear(a, d, sample, n, [s], "mae")[0][g] for g, s in enumerate(s_star)]
    )
    best_grid = grid.min(axis=0)
    assert np.all(at_star <= best_grid + 1e-10)
    # the grid minimum is within Lipschitz * step/2 of the exact minimum
    lipschitz = np.bincount(sample, weights=np.abs(d), minlength=n)
    assert np.all(best_grid - at_star <= lipschitz * STEP / 2 + 1e-12)
    assert ((s_star == 0) | (s_star == 1)).sum() > 5
    assert ((s_star > 0) & (s_star < 1)).sum() > 5


def test_mae_oracle_is_a_weighted_median_not_a_grid():
    # one sample, breakpoints a/d = 0.1, 0.37, 0.9 with weights |d| = 1, 1, 3:
    # cumulative weights 1, 2, 5 first reach half the total (2.5) at 0.9
    d = np.array([1.0, -1.0, 3.0])
    a = np.array([0.1, -0.37, 2.7])
    s = optimal_scale_mae(a, d, np.zeros(3, int), 1)
    assert s[0] == pytest.approx(0.9)
    d = np.array([1.0, 2.0, 1.0])  # cumulative 1, 3, 4 over t = 0.1, 0.37, 0.9: median 0.37
    a = d * np.array([0.1, 0.37, 0.9])
    assert optimal_scale_mae(a, d, np.zeros(3, int), 1)[0] == pytest.approx(0.37)


def test_oracles_handle_agreeing_branches():
    a = np.array([0.5, -0.2, 1.0, 2.0])
    d = np.array([0.0, 0.0, 1.0, 1.0])
    sample = np.array([0, 0, 1, 1])
    np.testing.assert_array_equal(optimal_scale_mae(a, d, sample, 2), [0.0, 1.0])
    np.testing.assert_array_equal(optimal_scale_mse(a, d, sample, 2), [0.0, 1.0])


def test_hard_route_breaks_ties_to_the_smaller_scale():
    losses = np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 4.0], [5.0, 0.5, 3.0]])
    np.testing.assert_array_equal(hard_route(losses), [0, 2, 0])


def test_interpolation_granularities():
    rng = np.random.default_rng(0)
    f0, f1 = rng.normal(size=(2, 3, 4, 3))
    np.testing.assert_allclose(interpolate(f0, f1, 0.25), 0.75 * f0 + 0.25 * f1)
    per_frame = np.array([0.0, 0.5, 1.0])
    np.testing.assert_allclose(interpolate(f0, f1, per_frame)[2], f1[2])
    per_atom = rng.uniform(size=(3, 4))
    np.testing.assert_allclose(interpolate(f0, f1, per_atom), f0 + per_atom[..., None] * (f1 - f0))
    with pytest.raises(ValueError, match=r"scales must be a scalar, \(3,\) or \(3, 4\); got \(4,\)"):
        interpolate(f0, f1, np.zeros(4))


def test_ion_domains_follow_the_nearest_ion():
    cache = synthetic_cache(n_frames=3, n_atoms=60, n_ions=5, seed=3)
    groups = sample_groups("ion", cache.numbers, cache.positions, cache.cell)
    ions = np.flatnonzero(ion_mask(cache.numbers))
    box = cache.cell[0, 0, 0]
    delta = cache.positions[:, :, None, :] - cache.positions[:, None, ions, :]
    delta -= box * np.round(delta / box)  # cubic minimum image, brute force
    nearest = np.linalg.norm(delta, axis=-1).argmin(axis=-1)
    expected = np.arange(3)[:, None] * ions.size + nearest
    np.testing.assert_array_equal(groups.atom_sample, expected)
    np.testing.assert_array_equal(groups.atom_sample[:, ions], np.arange(3)[:, None] * 5 + np.arange(5))
    assert groups.n_samples == 15
    frame = sample_groups("frame", cache.numbers, cache.positions)
    atom = sample_groups("atom", cache.numbers, cache.positions)
    assert (frame.n_samples, atom.n_samples) == (3, 180)
    with pytest.raises(ValueError, match="granularity must be one of"):
        sample_groups("molecule", cache.numbers, cache.positions)
    water = synthetic_cache(n_frames=3, n_atoms=30, n_ions=0, seed=1)
    with pytest.raises(ValueError, match="granularity 'ion' needs ions"):
        sample_groups("ion", water.numbers, water.positions, water.cell)


@pytest.mark.parametrize("granularity", ["frame", "ion", "atom"])
def test_problem_oracles_are_ordered(granularity):
    """continuous oracle <= hard oracle over any pool with {0, 1} <= each branch."""
    cache = synthetic_cache(n_frames=10, n_atoms=90, granularity=granularity, rule="random", seed=5)
    problem = RoutingProblem(cache, "test", granularity)
    branch = [problem.routed_loss(np.full(problem.n_samples, s)) for s in (0.0, 1.0)]
    hard = problem.hard_oracle([0.0, 1.0])[2]
    pool = problem.hard_oracle([0.0, 0.3, 0.6, 1.0])[2]
    continuous = problem.routed_loss(problem.continuous_oracle())
    assert continuous <= pool + 1e-12 <= hard + 2e-12 <= min(branch) + 3e-12
    assert continuous < hard  # the data make a real difference
    # MAE is the mean over all force components
    f0, f1 = cache.anchor_forces()
    test = cache.frames("test")
    direct = np.abs(f0[test].astype(float) - cache.forces_ref[test]).mean()
    assert branch[0] == pytest.approx(direct, rel=1e-12)
