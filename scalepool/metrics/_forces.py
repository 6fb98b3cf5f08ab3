"""Force error tables and the constant-force baseline.

Every error is reported in **meV/Å**.  The mean absolute error (MAE) is the
mean of ``|F_pred - F_ref|`` over all Cartesian force *components* (three per
atom and frame), not over the norms of the error vectors; the RMSE is the root
of the mean squared component error.  Both are the usual conventions of force
field papers, and a component MAE is about 0.8 times a per-atom error-norm MAE
for isotropic errors.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..units import CLOSE_CONTACT_CUTOFF, EV_TO_MEV, ION_NUMBERS

#: Column names of the table returned by :func:`force_errors`.
MAE = "mae_meV_A"
RMSE = "rmse_meV_A"
N_ATOMS = "n_atoms"
N_COMPONENTS = "n_components"


def element_symbol(number: int) -> str:
    """Chemical symbol of an atomic number (``"Cl"`` for 17)."""
    from ase.data import chemical_symbols

    number = int(number)
    if not 1 <= number < len(chemical_symbols):
        raise ValueError(f"no element with atomic number {number}")
    return chemical_symbols[number]


def _as_frames(name: str, array, n_atoms: int | None = None) -> np.ndarray:
    """(F, N, 3) float64 view of ``array`` given as (F, N, 3) or (N, 3)."""
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (F, N, 3) or (N, 3), got {array.shape}")
    if n_atoms is not None and array.shape[1] != n_atoms:
        raise ValueError(f"{name} has {array.shape[1]} atoms per frame but numbers has {n_atoms}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains {int((~np.isfinite(array)).sum())} non-finite value(s)")
    return array


def _row(error: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Errors (F, N, 3) eV/Å restricted to the atoms ``mask`` (F, N)."""
    selected = error[mask]  # (n_selected_atoms, 3)
    n = int(mask.sum())
    if n == 0:
        return {MAE: np.nan, RMSE: np.nan, N_ATOMS: 0, N_COMPONENTS: 0}
    return {
        MAE: float(np.abs(selected).mean() * EV_TO_MEV),
        RMSE: float(np.sqrt(np.square(selected).mean()) * EV_TO_MEV),
        N_ATOMS: n,
        N_COMPONENTS: 3 * n,
    }


def force_errors(
    pred,
    ref,
    numbers,
    nearest_ion=None,
    close_cutoff: float = CLOSE_CONTACT_CUTOFF,
    ion_numbers=ION_NUMBERS,
) -> pd.DataFrame:
    """Force errors overall, per species, for ions and near ions (nearest ion within a radius).

    Parameters
    ----------
    pred, ref : (F, N, 3) or (N, 3), eV/Å, predicted and reference forces
    numbers : (N,) int, atomic numbers
    nearest_ion : (F, N) or (N,), Å, nearest-ion distance of every atom (see
        :func:`scalepool.data.frameset_descriptors`); without it the
        near-ion rows are left out
    close_cutoff : Å; an atom is near an ion when ``nearest_ion < close_cutoff`` (6 Å, the paper's radius)
    ion_numbers : atomic numbers counted in the ``ions`` row

    Returns
    -------
    DataFrame indexed by subset: ``overall``, one row per element symbol
    (ascending atomic number), ``ions``, and with ``nearest_ion`` also
    ``near-ion`` and ``far-from-ions``.  Columns ``mae_meV_A`` and ``rmse_meV_A``
    (meV/Å, over force components, see the module docstring), ``n_atoms``
    (atom-frame samples) and ``n_components`` (3 per sample).  An empty subset
    has NaN errors and zero counts.
    """
    numbers = np.asarray(numbers)
    if numbers.ndim != 1 or not np.issubdtype(numbers.dtype, np.integer):
        raise ValueError(
            f"numbers must be a 1-D integer array, got shape {numbers.shape} dtype {numbers.dtype}"
        )
    pred = _as_frames("pred", pred, len(numbers))
    ref = _as_frames("ref", ref, len(numbers))
    if pred.shape != ref.shape:
        raise ValueError(f"pred has shape {pred.shape} but ref has {ref.shape}")
    error = pred - ref
    n_frames = error.shape[0]
    everyone = np.ones(error.shape[:2], dtype=bool)
    rows = {"overall": _row(error, everyone)}
    for z in np.unique(numbers):
        rows[element_symbol(z)] = _row(error, everyone & (numbers == z)[None, :])
    rows["ions"] = _row(error, everyone & np.isin(numbers, ion_numbers)[None, :])
    if nearest_ion is not None:
        nearest = np.asarray(nearest_ion, dtype=np.float64)
        if nearest.ndim == 1:
            nearest = nearest[None]
        if nearest.shape != error.shape[:2]:
            raise ValueError(f"nearest_ion must have shape {(n_frames, len(numbers))}, got {nearest.shape}")
        if np.isnan(nearest).any():
            raise ValueError("nearest_ion contains NaN values")
        if not close_cutoff > 0:
            raise ValueError(f"close_cutoff must be a positive distance in Å, got {close_cutoff}")
        close = nearest < close_cutoff
        rows["near-ion"] = _row(error, close)
        rows["far-from-ions"] = _row(error, ~close)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "subset"
    return table.astype({N_ATOMS: "int64", N_COMPONENTS: "int64"})


def constant_force_baseline(forces, numbers, train_index) -> np.ndarray:
    """Per-species mean force of the training frames, predicted for every frame.

    The "beats a constant baseline" check: a model that learned anything must
    do better than predicting, for every atom, the mean training force of its
    species (about zero for a system at equilibrium, so this baseline's MAE is
    close to the mean absolute force).

    Parameters
    ----------
    forces : (F, N, 3), eV/Å, reference forces of all frames
    numbers : (N,) int, atomic numbers
    train_index : int indices or a (F,) bool mask of the training frames

    Returns
    -------
    (F, N, 3) float64, eV/Å, the baseline prediction for every frame
    """
    numbers = np.asarray(numbers)
    forces = _as_frames("forces", forces, len(numbers))
    train = np.asarray(train_index)
    if train.dtype == bool:
        if train.shape != (forces.shape[0],):
            raise ValueError(f"a train mask must have shape ({forces.shape[0]},), got {train.shape}")
        train = np.flatnonzero(train)
    if train.size == 0:
        raise ValueError("the baseline needs at least one training frame")
    train_forces = forces[train]  # (F_train, N, 3)
    out = np.empty_like(forces)
    for z in np.unique(numbers):
        atoms = numbers == z
        out[:, atoms, :] = train_forces[:, atoms, :].reshape(-1, 3).mean(axis=0)
    return out
