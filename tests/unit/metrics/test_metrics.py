"""Force error tables and the constant baseline, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scalepool.metrics import (
    MAE,
    N_ATOMS,
    N_COMPONENTS,
    RMSE,
    constant_force_baseline,
    element_symbol,
    force_errors,
)

# water oxygen, hydrogen, hydrogen, Na+, Cl-
NUMBERS = np.array([8, 1, 1, 11, 17])


def test_known_errors_per_subset():
    ref = np.zeros((2, 5, 3))
    pred = np.zeros((2, 5, 3))
    pred[:, 0] = [0.003, 0.0, 0.0]  # O: |e| components 3, 0, 0 meV/Å
    pred[:, 3] = [0.001, -0.001, 0.001]  # Na: 1, 1, 1 meV/Å
    pred[0, 4] = [0.0, 0.0, -0.006]  # Cl in frame 0 only: 0, 0, 6
    nearest = np.array([[2.0, 9.0, 9.0, 3.0, 3.0], [9.0, 9.0, 9.0, 7.0, 7.0]])  # Å
    table = force_errors(pred, ref, NUMBERS, nearest_ion=nearest)
    assert list(table.index) == ["overall", "H", "O", "Na", "Cl", "ions", "near-ion", "far-from-ions"]
    assert list(table.columns) == [MAE, RMSE, N_ATOMS, N_COMPONENTS]
    # overall: 30 components; sum |e| = 2*3 + 2*3 + 6 = 18 meV/Å, sum e^2 = 2*9 + 2*3 + 36 = 60
    assert table.loc["overall", MAE] == pytest.approx(18 / 30)
    assert table.loc["overall", RMSE] == pytest.approx(np.sqrt(60 / 30))
    assert table.loc["overall", N_ATOMS] == 10 and table.loc["overall", N_COMPONENTS] == 30
    assert table.loc["H", MAE] == 0 and table.loc["H", N_ATOMS] == 4
    assert table.loc["O", MAE] == pytest.approx(1.0) and table.loc["O", RMSE] == pytest.approx(np.sqrt(3))
    assert table.loc["Na", MAE] == pytest.approx(1.0) and table.loc["Na", RMSE] == pytest.approx(1.0)
    assert table.loc["Cl", MAE] == pytest.approx(1.0) and table.loc["Cl", RMSE] == pytest.approx(np.sqrt(6))
    assert table.loc["ions", MAE] == pytest.approx(12 / 12) and table.loc["ions", N_ATOMS] == 4
    # close: O and both ions in frame 0 (errors 3 + 3 + 6 = 12 over 9 components)
    assert table.loc["near-ion", N_ATOMS] == 3 and table.loc["near-ion", MAE] == pytest.approx(12 / 9)
    assert table.loc["far-from-ions", N_ATOMS] == 7 and table.loc["far-from-ions", MAE] == pytest.approx(6 / 21)


def test_single_frame_no_close_rows_and_empty_subsets():
    ref = np.ones((5, 3))
    table = force_errors(ref + 0.002, ref, NUMBERS)
    assert "near-ion" not in table.index
    np.testing.assert_allclose(table[MAE], 2.0)
    everything_far = force_errors(ref, ref, NUMBERS, nearest_ion=np.full(5, 10.0))
    assert everything_far.loc["near-ion", N_ATOMS] == 0 and np.isnan(everything_far.loc["near-ion", MAE])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pred": np.zeros((2, 4, 3))}, "pred has 4 atoms per frame but numbers has 5"),
        ({"pred": np.zeros((3, 5, 3))}, r"pred has shape \(3, 5, 3\) but ref has \(2, 5, 3\)"),
        ({"pred": np.full((2, 5, 3), np.nan)}, "pred contains 30 non-finite"),
        ({"numbers": NUMBERS.astype(float)}, "numbers must be a 1-D integer array"),
        ({"nearest_ion": np.zeros((2, 4))}, r"nearest_ion must have shape \(2, 5\)"),
    ],
)
def test_validation_messages(kwargs, message):
    args = {"pred": np.zeros((2, 5, 3)), "ref": np.zeros((2, 5, 3)), "numbers": NUMBERS, **kwargs}
    with pytest.raises(ValueError, match=message):
        force_errors(**args)


def test_constant_baseline_is_per_species_train_mean():
    rng = np.random.default_rng(0)
    forces = rng.normal(size=(6, 5, 3))
    forces[:, 0] += [1.0, 2.0, 3.0]  # O has a mean force in every frame
    train = np.array([0, 1, 2, 3])
    base = constant_force_baseline(forces, NUMBERS, train)
    assert base.shape == forces.shape
    np.testing.assert_allclose(base[5, 0], forces[train, 0].mean(axis=0))
    np.testing.assert_allclose(base[4, 1], forces[train][:, [1, 2]].reshape(-1, 3).mean(axis=0))
    np.testing.assert_allclose(base[0], base[5])  # the same prediction for every frame
    mask = np.zeros(6, bool)
    mask[train] = True
    np.testing.assert_allclose(constant_force_baseline(forces, NUMBERS, mask), base)
    with pytest.raises(ValueError, match="at least one training frame"):
        constant_force_baseline(forces, NUMBERS, [])
    # a zero-mean reference: the baseline's MAE is the mean absolute force
    table = force_errors(np.zeros_like(forces), forces, NUMBERS)
    assert table.loc["H", MAE] == pytest.approx(np.abs(forces[:, [1, 2]]).mean() * 1e3)


def test_element_symbols():
    assert [element_symbol(z) for z in (1, 8, 11, 17)] == ["H", "O", "Na", "Cl"]
    with pytest.raises(ValueError, match="no element"):
        element_symbol(0)
    assert isinstance(force_errors(np.zeros((5, 3)), np.zeros((5, 3)), NUMBERS), pd.DataFrame)


def test_subsets_against_brute_force_images():
    """Contact ions, contact frames and the 6 Å near-ion subset against an explicit search over
    the 27 nearest images (cubic box, so that is exact), and the MAEs against numpy by hand."""
    import itertools

    from scalepool.metrics import Subsets, subset_errors
    from scalepool.testing import random_frames

    frames = random_frames(n_atoms=24, box=9.0, n_frames=3, seed=5, min_distance=1.8, triclinic=False)
    subsets = Subsets.of(frames.positions, frames.numbers, frames.cell, contact_distance=3.5, near_cutoff=6.0)
    images = np.array(list(itertools.product((-1, 0, 1), repeat=3))) @ frames.cell[0]
    sign = {11: 1, 17: -1}
    expected_contact = np.zeros((3, 24), bool)
    expected_near = np.zeros((3, 24), bool)
    for f in range(3):
        x = frames.positions[f]
        for i in range(24):
            best_counter, best_any = np.inf, np.inf
            for j in range(24):
                if j == i or frames.numbers[j] not in sign:
                    continue
                d = np.linalg.norm(x[j] + images - x[i], axis=1).min()
                best_any = min(best_any, d)
                if frames.numbers[i] in sign and sign[frames.numbers[i]] != sign[frames.numbers[j]]:
                    best_counter = min(best_counter, d)
            expected_contact[f, i] = best_counter <= 3.5
            expected_near[f, i] = best_any < 6.0
    np.testing.assert_array_equal(subsets.contact_ions, expected_contact)
    np.testing.assert_array_equal(subsets.near_ion, expected_near)
    assert subsets.contact_ions.any() and not subsets.contact_ions.all()  # the check can fail both ways
    np.testing.assert_array_equal(
        subsets.contact_frames, expected_contact.any(1, keepdims=True) & np.ones((3, 24), bool)
    )
    error = np.abs(np.random.default_rng(0).normal(size=(3, 24, 3)))
    got = subset_errors(error, subsets)
    assert got["close_contact_mae"] == pytest.approx(1e3 * error[expected_contact].mean())
    assert got["near_ion_mae"] == pytest.approx(1e3 * error[expected_near].mean())
    assert got["ion_mae"] == pytest.approx(1e3 * error[:, np.isin(frames.numbers, (11, 17))].mean())
    assert subsets.sizes() == {
        "n_contact_ions": int(expected_contact.sum()),
        "n_contact_frames": int(expected_contact.any(1).sum()),
    }
