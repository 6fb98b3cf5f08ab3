"""Close-contact descriptors against MDAnalysis, scipy, brute force and hand-built cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from MDAnalysis.lib.distances import distance_array
from MDAnalysis.lib.mdamath import triclinic_box, triclinic_vectors
from scipy.spatial.distance import cdist

from scalepool.data import FrameSet
from scalepool.data._descriptors import (
    CLOSE_CONTACT,
    ION_INDEX,
    MIN_ION_ION,
    NEAREST_COUNTERION,
    NEAREST_ION,
    close_contact_mask,
    frameset_descriptors,
    min_ion_ion_distance,
    nearest_counterion_distance,
    nearest_ion_distance,
)
from scalepool.units import CHLORINE, CLOSE_CONTACT_CUTOFF, HYDROGEN, OXYGEN, SODIUM

# MDAnalysis computes in float32: positions of ~20 Å carry ~2e-6 Å of rounding.
MDA_ATOL = 2e-4


def _system(rng, n_atoms=240, n_ions=12):
    """Atomic numbers of a water-like system with alternating Na/Cl ions spread through it."""
    numbers = np.array([OXYGEN, HYDROGEN, HYDROGEN] * (n_atoms // 3))
    ion_sites = rng.choice(n_atoms, n_ions, replace=False)
    numbers[ion_sites] = [SODIUM, CHLORINE] * (n_ions // 2)
    return numbers


def _mda_nearest(positions, numbers, cell):
    """Nearest-ion and nearest-counterion distances from MDAnalysis.distance_array."""
    ions = np.flatnonzero(np.isin(numbers, (SODIUM, CHLORINE)))
    box = triclinic_box(*cell) if cell is not None else None
    table = distance_array(positions, positions[ions], box=box)
    table[ions, np.arange(len(ions))] = np.inf
    signs = np.where(numbers[ions] == SODIUM, 1, -1)
    counter = np.where(signs[:, None] != signs[None, :], table[ions], np.inf).min(axis=1)
    return table.min(axis=1), counter, ions


def _brute_table(points, targets, cell):
    """(n, m) minimum-image distances over every image that can matter.

    An image n of the difference d (fractional coordinates f = d @ inv(cell))
    can only be shorter than the bound R if |f_k + n_k| <= R |b_k|; R is any
    image's length (here the longest wrapped one), so the range is complete.
    """
    delta = targets[None, :, :] - points[:, None, :]
    inverse = np.linalg.inv(cell)
    recip = np.linalg.norm(inverse, axis=0)
    frac = delta @ inverse
    bound = np.linalg.norm((frac - np.round(frac)) @ cell, axis=-1).max()
    reach = np.ceil(np.abs(frac).max(axis=(0, 1)) + bound * recip).astype(int)
    shifts = np.array(list(itertools.product(*[range(-m, m + 1) for m in reach]))) @ cell
    longest = np.linalg.norm(delta, axis=-1).max() + bound
    best = np.full(delta.shape[:2], np.inf)
    for shift in shifts[np.linalg.norm(shifts, axis=1) <= longest + 1e-9]:
        best = np.minimum(best, np.linalg.norm(delta + shift, axis=-1))
    return best


def _mild_triclinic():
    # angles within 15 degrees of 90 and a GROMACS-style lower-triangular box
    return triclinic_vectors(np.array([20.0, 21.0, 22.0, 80.0, 100.0, 76.0])).astype(np.float64)


# ----------------------------------------------------- the reference itself
def test_mdanalysis_reference_is_exact_for_the_mild_triclinic_cell():
    """MDAnalysis wraps both atoms into the box and tries the 27 images n in
    {-1, 0, 1}^3 of the difference; that is only guaranteed for mildly skewed
    cells, so check it here against the complete brute-force search."""
    rng = np.random.default_rng(11)
    cell = _mild_triclinic()
    points = rng.uniform(-0.3, 1.3, (150, 3)) @ cell
    targets = points[:20]
    reference = _brute_table(points, targets, cell)
    mda = distance_array(points, targets, box=triclinic_box(*cell))
    np.testing.assert_allclose(mda, reference, atol=MDA_ATOL)


# ------------------------------------------------------ against MDAnalysis
@pytest.mark.parametrize(("kind", "n_ions"), [("cubic", 12), ("triclinic", 12), ("triclinic", 2)])
def test_nearest_ion_matches_mdanalysis(kind, n_ions):
    rng = np.random.default_rng(n_ions + (kind == "cubic"))
    cell = np.diag([19.0, 19.0, 19.0]) if kind == "cubic" else _mild_triclinic()
    numbers = _system(rng, n_ions=n_ions)
    positions = rng.uniform(-0.2, 1.2, (len(numbers), 3)) @ cell
    nearest_ref, counter_ref, ions = _mda_nearest(positions, numbers, cell)

    nearest = nearest_ion_distance(positions, numbers, cell)
    np.testing.assert_allclose(nearest, nearest_ref, atol=MDA_ATOL)
    counter, ion_index = nearest_counterion_distance(positions, numbers, cell)
    np.testing.assert_array_equal(ion_index, ions)
    np.testing.assert_allclose(counter, counter_ref, atol=MDA_ATOL)
    assert min_ion_ion_distance(positions, numbers, cell) == pytest.approx(
        nearest_ref[ions].min(), abs=MDA_ATOL
    )
    # the periodic answer really differs from the open-boundary one here
    assert (nearest < nearest_ion_distance(positions, numbers, None) - 0.1).any()
    if n_ions == 2:  # sparse ions: many atoms need the image search (beyond half a plane spacing)
        half_spacing = 0.5 / np.linalg.norm(np.linalg.inv(cell), axis=0).max()
        assert (nearest > half_spacing).mean() > 0.1


def test_skewed_cell_is_exact_where_wrapping_is_not():
    """A strongly sheared cell: the wrapped fractional difference is wrong for
    many atoms, the descriptor still equals the complete search."""
    rng = np.random.default_rng(3)
    cell = np.array([[10.0, 0.0, 0.0], [17.0, 6.0, 0.0], [-13.0, 25.0, 7.0]])
    numbers = _system(rng, n_atoms=90, n_ions=8)
    positions = rng.uniform(-10.0, 30.0, (len(numbers), 3))
    ions = np.flatnonzero(np.isin(numbers, (SODIUM, CHLORINE)))
    table = _brute_table(positions, positions[ions], cell)
    table[ions, np.arange(len(ions))] = np.inf
    expected = table.min(axis=1)

    nearest = nearest_ion_distance(positions, numbers, cell)
    np.testing.assert_allclose(nearest, expected, rtol=0, atol=1e-9)

    frac = (positions[ions][None] - positions[:, None]) @ np.linalg.inv(cell)
    wrapped = np.linalg.norm((frac - np.round(frac)) @ cell, axis=-1)
    wrapped[ions, np.arange(len(ions))] = np.inf
    assert (wrapped.min(axis=1) > expected + 0.5).sum() > 10  # the naive method fails here


# -------------------------------------------------------------- hand-built
def test_ions_across_the_periodic_boundary_cubic():
    cell = np.diag([10.0, 10.0, 10.0])
    positions = np.array([[0.5, 5.0, 5.0], [9.7, 5.0, 5.0], [5.0, 5.0, 5.0], [5.0, 9.0, 9.5]])
    numbers = np.array([SODIUM, CHLORINE, OXYGEN, HYDROGEN])
    nearest = nearest_ion_distance(positions, numbers, cell)
    # Na-Cl through the x boundary: 0.5 + (10 - 9.7) = 0.8; O-Na 4.5 directly;
    # H-Na |(4.5, 4, 4.5)| (every image is farther), H-Cl |(4.7, 4, 4.5)|.
    expected_h = np.linalg.norm([4.5, 4.0, 4.5])
    np.testing.assert_allclose(nearest, [0.8, 0.8, 4.5, expected_h], atol=1e-12)
    counter, index = nearest_counterion_distance(positions, numbers, cell)
    np.testing.assert_array_equal(index, [0, 1])
    np.testing.assert_allclose(counter, [0.8, 0.8], atol=1e-12)
    assert min_ion_ion_distance(positions, numbers, cell) == pytest.approx(0.8, abs=1e-12)


def test_ions_across_the_periodic_boundary_triclinic_and_far_images():
    a, b, c = np.array([10.0, 0, 0]), np.array([5.0, 8.660254, 0]), np.array([2.0, 3.0, 9.0])
    cell = np.stack([a, b, c])
    na = np.array([9.8, 8.0, 8.5])
    # Cl is 0.3 Å from Na along x and the O atom 1.7 Å above it, each moved
    # by several lattice vectors.
    cl = na + np.array([0.3, 0.0, 0.0]) + 3 * a - 2 * b + c
    water = na + np.array([0.0, 0.0, 1.7]) - 2 * c + a
    positions = np.stack([na, cl, water])
    numbers = np.array([SODIUM, CHLORINE, OXYGEN])
    nearest = nearest_ion_distance(positions, numbers, cell)
    np.testing.assert_allclose(nearest, [0.3, 0.3, 1.7], atol=1e-9)


def test_lone_ion_and_no_ions_give_inf():
    rng = np.random.default_rng(4)
    positions = rng.uniform(0, 12, (30, 3))
    numbers = np.full(30, OXYGEN)
    numbers[7] = SODIUM
    cell = np.diag([12.0, 12.0, 12.0])
    nearest = nearest_ion_distance(positions, numbers, cell)
    assert nearest[7] == np.inf  # its own periodic images do not count
    assert np.isfinite(np.delete(nearest, 7)).all()
    counter, index = nearest_counterion_distance(positions, numbers, cell)
    assert index.tolist() == [7] and counter.tolist() == [np.inf]
    assert min_ion_ion_distance(positions, numbers, cell) == np.inf

    numbers[7] = OXYGEN
    nearest = nearest_ion_distance(positions, numbers, cell)
    assert np.isinf(nearest).all()
    assert not close_contact_mask(nearest).any()
    counter, index = nearest_counterion_distance(positions, numbers, None)
    assert counter.shape == (0,) and index.shape == (0,)


def test_same_sign_ions_have_no_counterion():
    positions = np.array([[0.0, 0, 0], [2.0, 0, 0], [0.0, 3.0, 0]])
    numbers = np.array([SODIUM, SODIUM, OXYGEN])
    counter, _ = nearest_counterion_distance(positions, numbers, None)
    assert counter.tolist() == [np.inf, np.inf]
    np.testing.assert_allclose(nearest_ion_distance(positions, numbers, None), [2.0, 2.0, 3.0])
    # K+ and Br- from the charge-sign table pair up when asked for
    numbers = np.array([19, 35, OXYGEN])
    counter, index = nearest_counterion_distance(positions, numbers, None, ion_numbers=(19, 35))
    assert index.tolist() == [0, 1]
    np.testing.assert_allclose(counter, [2.0, 2.0])


# ------------------------------------------------------ open boundaries
def test_open_boundaries_match_scipy_cdist():
    rng = np.random.default_rng(5)
    numbers = _system(rng, n_atoms=150, n_ions=10)
    positions = rng.normal(scale=8.0, size=(150, 3))
    ions = np.flatnonzero(np.isin(numbers, (SODIUM, CHLORINE)))
    table = cdist(positions, positions[ions])
    table[ions, np.arange(len(ions))] = np.inf
    np.testing.assert_allclose(nearest_ion_distance(positions, numbers, None), table.min(axis=1), atol=1e-12)
    assert min_ion_ion_distance(positions, numbers, None) == pytest.approx(table[ions].min(), abs=1e-12)


# ---------------------------------------------------------------- invariances
def test_lattice_translations_and_rigid_shifts_change_nothing():
    rng = np.random.default_rng(6)
    cell = _mild_triclinic()
    numbers = _system(rng, n_atoms=120, n_ions=8)
    positions = rng.uniform(0, 1, (120, 3)) @ cell
    reference = nearest_ion_distance(positions, numbers, cell)
    moved = positions + rng.integers(-3, 4, (120, 3)) @ cell + np.array([1.3, -7.2, 40.0])
    np.testing.assert_allclose(nearest_ion_distance(moved, numbers, cell), reference, atol=1e-9)


# ----------------------------------------------------------------- FrameSet
@pytest.mark.parametrize("periodic", [True, False])
def test_frameset_descriptors_match_per_frame_functions(periodic):
    rng = np.random.default_rng(7)
    numbers = _system(rng, n_atoms=180, n_ions=10)
    n_frames = 5
    cells = np.stack([np.diag([15.0 + f, 16.0, 17.0]) for f in range(n_frames)])
    cells[2] = _mild_triclinic() * 0.8
    cells[3] = cells[2]
    positions = rng.uniform(0, 1, (n_frames, 180, 3)) @ cells
    frames = FrameSet(
        positions=positions,
        forces=np.zeros_like(positions),
        numbers=numbers,
        cell=cells if periodic else None,
    )
    out = frameset_descriptors(frames, cutoff=4.0)
    ions = np.flatnonzero(np.isin(numbers, (SODIUM, CHLORINE)))
    np.testing.assert_array_equal(out[ION_INDEX], ions)
    assert out[NEAREST_ION].shape == (n_frames, 180)
    assert out[NEAREST_COUNTERION].shape == (n_frames, len(ions))
    for f in range(n_frames):
        cell = cells[f] if periodic else None
        nearest = nearest_ion_distance(positions[f], numbers, cell)
        np.testing.assert_allclose(out[NEAREST_ION][f], nearest, atol=1e-12)
        np.testing.assert_array_equal(out[CLOSE_CONTACT][f], nearest < 4.0)
        counter, _ = nearest_counterion_distance(positions[f], numbers, cell)
        np.testing.assert_allclose(out[NEAREST_COUNTERION][f], counter, atol=1e-12)
        assert out[MIN_ION_ION][f] == pytest.approx(
            min_ion_ion_distance(positions[f], numbers, cell), abs=1e-12
        )
    assert 0 < out[CLOSE_CONTACT].mean() < 1


def test_close_contact_mask_threshold():
    nearest = np.array([0.5, CLOSE_CONTACT_CUTOFF - 1e-9, CLOSE_CONTACT_CUTOFF, 7.0, np.inf])
    assert close_contact_mask(nearest).tolist() == [True, True, False, False, False]
    assert close_contact_mask(nearest, cutoff=10.0).tolist() == [True, True, True, True, False]


# --------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("positions", "numbers", "cell", "message"),
    [
        (
            np.zeros((4, 2)),
            np.full(4, SODIUM),
            None,
            r"positions must have shape \(n_atoms, 3\), got \(4, 2\)",
        ),
        (np.full((3, 3), np.nan), np.full(3, SODIUM), None, "positions contain 9 non-finite"),
        (np.zeros((4, 3)), np.full(3, SODIUM), None, r"numbers must have shape \(4,\)"),
        (np.zeros((2, 3)), np.array([11.0, 17.0]), None, "numbers must be integer"),
        (np.zeros((2, 3)), np.array([11, 17]), np.eye(2), r"cell must have shape \(3, 3\)"),
        (np.zeros((2, 3)), np.array([11, 17]), np.diag([1.0, 1.0, 0.0]), "cell is degenerate"),
        (np.zeros((2, 3)), np.array([11, 17]), np.diag([1.0, np.inf, 1.0]), "cell contains non-finite"),
    ],
)
def test_invalid_frames_are_rejected(positions, numbers, cell, message):
    with pytest.raises(ValueError, match=message):
        nearest_ion_distance(positions, numbers, cell)


def test_invalid_options_are_rejected():
    positions, numbers = np.zeros((2, 3)), np.array([SODIUM, 12])
    with pytest.raises(ValueError, match=r"no charge sign known for atomic number\(s\) \[12\]"):
        nearest_counterion_distance(positions, numbers, None, ion_numbers=(SODIUM, 12))
    with pytest.raises(ValueError, match="cutoff must be a positive"):
        close_contact_mask(np.ones(3), cutoff=-1.0)
    with pytest.raises(ValueError, match="1 NaN"):
        close_contact_mask(np.array([1.0, np.nan]))
    with pytest.raises(TypeError, match="frames must be a FrameSet, got ndarray"):
        frameset_descriptors(np.zeros((1, 2, 3)))


def test_certificate_alone_repairs_an_unreduced_cell():
    """Without the Minkowski reduction the 27-image search is wrong for a
    sheared cell; the bound on the image range must then widen the search."""
    from scalepool.data._descriptors import _distances, _image_vectors, _Lattice

    rng = np.random.default_rng(8)
    cell = np.array([[10.0, 0.0, 0.0], [17.0, 6.0, 0.0], [-13.0, 25.0, 7.0]])
    inverse = np.linalg.inv(cell)
    recip = np.linalg.norm(inverse, axis=0)
    unreduced = _Lattice(cell, inverse, recip, _image_vectors((1, 1, 1), cell), 0.5 / recip.max())
    points = rng.uniform(-5.0, 25.0, (60, 3))
    expected = _brute_table(points, points[:6], cell)
    np.testing.assert_allclose(_distances(points, points[:6], unreduced), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(_distances(points, points[:6], _Lattice.from_cell(cell)), expected, atol=1e-9)
