"""Hessians of force models: double backprop, finite differences, spectra and block errors.

Used by ``studies/hessian.py`` to compare a trained model's Hessian with the
OpenMM force field that generated its labels.  Everything here is pure maths
on arrays except :func:`model_hessian`, which differentiates a model twice.

Partial Hessian
---------------
For a frame of a periodic box only the atoms of a selection (an ion pair and
the waters around it) are moved; the rest of the box stays frozen.  The
(3m, 3m) block of second derivatives over the selected atoms is the partial
Hessian of partial-Hessian vibrational analysis (Li and Jensen, Theor. Chem.
Acc. 2002): no surface is cut into the liquid and the periodic long-range
field stays the one the model was trained in.

Rigid water
-----------
Labels of a rigid-water dataset are force-field forces at geometries that
all satisfy the water constraints (O-H and H-H distances fixed).  Along a
tangent direction ``u`` of the constraint manifold ``u^T H u`` is the
derivative of ``g . u`` along a curve that stays on the manifold, so it is
determined by those labels; along the constrained directions it is not (the
data never leave the manifold, and OpenMM drops the bonded terms there).
:func:`constraint_tangent_basis` gives an orthonormal basis ``Q`` of the
tangent space (3 constraints per water, 6 rigid-body directions left); the
model and the reference are compared as ``Q^T H Q``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import torch

from ..data import minimum_image_vectors
from ..models import AtomsBatch
from ..units import HYDROGEN, ION_NUMBERS, OXYGEN

#: sqrt(eV / (Å^2 amu)) in cm^-1: a Hessian eigenvalue of 1 eV/Å^2 for 1 amu is 521.47 cm^-1.
EV_PER_A2_AMU_TO_WAVENUMBER = 521.4709
#: Atomic masses (amu) of the testbed species.
MASSES = {1: 1.00794, 8: 15.9994, 11: 22.98977, 17: 35.453}


def model_hessian(
    model: torch.nn.Module, batch: AtomsBatch, atoms: np.ndarray | None = None, symmetric: bool = True
) -> np.ndarray:
    """Second derivatives of a model's total energy by double backprop (one pass per row).

    model : a ForceModel (any dtype; float64 recommended)
    batch : one frame in the model's dtype
    atoms : (m,) indices of the atoms to differentiate over (all when ``None``)
    symmetric : return ``(H + H^T) / 2`` (True) or the raw rows (to check symmetry)
    Returns (3m, 3m) float64, eV/Å^2, ordered atom-major (x, y, z per atom).
    """
    atoms = np.arange(batch.n_atoms) if atoms is None else np.asarray(atoms)
    positions = batch.positions.detach().clone().requires_grad_(True)
    batch = dataclasses.replace(batch, positions=positions)
    energy = model.atomic_energies(batch).sum()
    (gradient,) = torch.autograd.grad(energy, positions, create_graph=True)
    rows = gradient[torch.as_tensor(atoms)].reshape(-1)
    index = torch.as_tensor(atoms, device=positions.device)
    hessian = np.zeros((rows.shape[0], rows.shape[0]))
    for r in range(rows.shape[0]):
        (second,) = torch.autograd.grad(rows[r], positions, retain_graph=True, allow_unused=True)
        if second is not None:
            hessian[r] = second[index].reshape(-1).detach().cpu().double().numpy()
    return symmetrize(hessian) if symmetric else hessian


def finite_difference_hessian(
    forces: Callable[[np.ndarray], np.ndarray],
    positions: np.ndarray,
    atoms: np.ndarray,
    step: float = 1e-3,
    symmetric: bool = True,
) -> np.ndarray:
    """Central differences of forces: ``H[(a,i),(b,j)] = -(F_b,j(x + h e_ai) - F_b,j(x - h e_ai)) / 2h``.

    forces : callable (N, 3) Å -> (N, 3) eV/Å
    positions : (N, 3), Å; atoms : (m,) indices moved and read
    step : h, Å
    symmetric : return ``(H + H^T) / 2`` (True) or the raw rows (their asymmetry
        measures the finite-difference error)
    Returns (3m, 3m) float64, eV/Å^2.
    """
    atoms = np.asarray(atoms)
    positions = np.asarray(positions, dtype=np.float64)
    hessian = np.zeros((3 * len(atoms), 3 * len(atoms)))
    for r, (a, i) in enumerate((a, i) for a in atoms for i in range(3)):
        plus, minus = positions.copy(), positions.copy()
        plus[a, i] += step
        minus[a, i] -= step
        hessian[r] = -(forces(plus)[atoms] - forces(minus)[atoms]).reshape(-1) / (2 * step)
    return symmetrize(hessian) if symmetric else hessian


def symmetrize(hessian: np.ndarray) -> np.ndarray:
    """``(H + H^T) / 2``."""
    return 0.5 * (hessian + hessian.T)


def water_molecules(numbers: np.ndarray) -> np.ndarray:
    """(n_water, 3) atom indices of the O, H, H waters (consecutive, as the testbed stores them)."""
    numbers = np.asarray(numbers)
    starts = [
        i
        for i in range(len(numbers) - 2)
        if numbers[i] == OXYGEN and numbers[i + 1] == HYDROGEN and numbers[i + 2] == HYDROGEN
    ]
    return np.array([[i, i + 1, i + 2] for i in starts], dtype=np.int64).reshape(-1, 3)


def constraint_tangent_basis(positions: np.ndarray, waters: np.ndarray, masses: np.ndarray | None = None):
    """Orthonormal basis of the directions that keep every water rigid.

    positions : (m, 3), Å, of the selected atoms (molecules whole)
    waters : (w, 3) local indices (into ``positions``) of O, H1, H2
    masses : (m,) amu; when given the basis is of mass-weighted coordinates
    Returns Q (3m, 3m - 3w): columns orthonormal, orthogonal to the gradients
    of the O-H1, O-H2 and H1-H2 distances.
    """
    m = positions.shape[0]
    if not len(waters):
        return np.eye(3 * m)
    scale = np.ones(3 * m) if masses is None else np.repeat(1.0 / np.sqrt(masses), 3)
    jac = np.zeros((3 * len(waters), 3 * m))
    for w, mol in enumerate(waters):
        for c, (p, q) in enumerate(((0, 1), (0, 2), (1, 2))):
            a, b = mol[p], mol[q]
            unit = positions[b] - positions[a]
            unit = unit / np.linalg.norm(unit)
            jac[3 * w + c, 3 * a : 3 * a + 3] = -unit
            jac[3 * w + c, 3 * b : 3 * b + 3] = unit
    jac = jac * scale  # d constraint / d (mass-weighted coordinate)
    _, sv, vt = np.linalg.svd(jac)
    rank = int((sv > 1e-10 * sv.max()).sum())
    return vt[rank:].T


def spectrum(hessian: np.ndarray, basis: np.ndarray | None = None, masses: np.ndarray | None = None):
    """Sorted eigenvalues and (when ``masses`` is given) wavenumbers.

    hessian : (3m, 3m), eV/Å^2
    basis : (3m, k) orthonormal columns restricting the Hessian (``Q^T H Q``);
        with ``masses`` it must be a basis of mass-weighted coordinates
    masses : (m,) amu
    Returns ``{"eigenvalues": (k,) eV/Å^2 (eV/(Å^2 amu) when mass-weighted),
    "wavenumbers": (k,) cm^-1, negative for imaginary modes, or None}``.
    """
    h = hessian
    if masses is not None:
        inv = np.repeat(1.0 / np.sqrt(masses), 3)
        h = h * inv[:, None] * inv[None, :]
    if basis is not None:
        h = basis.T @ h @ basis
    eigenvalues = np.linalg.eigvalsh(symmetrize(h))
    wavenumbers = None
    if masses is not None:
        wavenumbers = np.sign(eigenvalues) * np.sqrt(np.abs(eigenvalues)) * EV_PER_A2_AMU_TO_WAVENUMBER
    return {"eigenvalues": eigenvalues, "wavenumbers": wavenumbers}


def atom_groups(numbers: np.ndarray) -> np.ndarray:
    """(m,) labels: ``"ion"`` for Na/Cl, ``"water"`` otherwise."""
    return np.where(np.isin(numbers, ION_NUMBERS), "ion", "water")


def block_errors(
    model: np.ndarray, reference: np.ndarray, numbers: np.ndarray, molecule: np.ndarray | None = None
) -> dict[str, dict[str, float]]:
    """Element-wise errors of a Hessian per atom-pair block.

    model, reference : (3m, 3m), eV/Å^2; numbers : (m,) atomic numbers
    molecule : (m,) molecule id of each atom; splits water-water into
        ``water-water intra`` (same molecule) and ``water-water inter``
    Returns ``{block: {"mae", "rmse", "ref_rms", "relative_rmse", "n"}}`` in eV/Å^2
    for blocks ``ion-ion``, ``ion-water``, ``water-water`` (and the split)
    and ``all``.
    """
    groups = atom_groups(np.asarray(numbers))
    g3 = np.repeat(groups, 3)
    pair = np.char.add(np.char.add(g3[:, None], "-"), g3[None, :])
    pair = np.where(pair == "water-ion", "ion-water", pair)
    masks = {name: pair == name for name in ("ion-ion", "ion-water", "water-water")}
    if molecule is not None:
        mol3 = np.repeat(np.asarray(molecule), 3)
        same = mol3[:, None] == mol3[None, :]
        masks["water-water intra"] = masks["water-water"] & same
        masks["water-water inter"] = masks["water-water"] & ~same
    masks["all"] = np.ones_like(pair, dtype=bool)
    out = {}
    for name, mask in masks.items():
        if not mask.any():
            continue
        diff, ref = (model - reference)[mask], reference[mask]
        rmse, ref_rms = float(np.sqrt(np.mean(diff**2))), float(np.sqrt(np.mean(ref**2)))
        out[name] = {
            "mae": float(np.mean(np.abs(diff))),
            "rmse": rmse,
            "ref_rms": ref_rms,
            "relative_rmse": rmse / ref_rms if ref_rms > 0 else math.nan,
            "n": int(mask.sum()),
        }
    return out


def select_around_ion_pair(
    positions: np.ndarray, numbers: np.ndarray, cell: np.ndarray | None, n_atoms: int = 40
) -> np.ndarray:
    """Indices of the closest Na-Cl pair and the whole waters nearest its midpoint.

    positions : (N, 3) Å; numbers : (N,); cell : (3, 3) Å rows or ``None``
    n_atoms : target size; waters are added (nearest O first) while the
        selection stays within ``n_atoms``
    Returns sorted (m,) int64 indices, m <= n_atoms (at least the pair).
    """
    numbers = np.asarray(numbers)

    def minimum_image(d):
        return minimum_image_vectors(d, cell)

    na, cl = np.flatnonzero(numbers == 11), np.flatnonzero(numbers == 17)
    if not len(na) or not len(cl):
        raise ValueError("select_around_ion_pair needs at least one Na (11) and one Cl (17)")
    d = np.linalg.norm(minimum_image(positions[cl][None] - positions[na][:, None]), axis=-1)
    i, j = np.unravel_index(np.argmin(d), d.shape)
    a, b = na[i], cl[j]
    centre = positions[a] + 0.5 * minimum_image(positions[b] - positions[a])
    chosen = [a, b]
    waters = water_molecules(numbers)
    if len(waters):
        dist = np.linalg.norm(minimum_image(positions[waters[:, 0]] - centre), axis=-1)
        for w in np.argsort(dist, kind="stable"):
            if len(chosen) + 3 > n_atoms:
                break
            chosen.extend(waters[w])
    return np.sort(np.array(chosen, dtype=np.int64))
