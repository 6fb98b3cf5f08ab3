"""Physics properties every force model must have, as assertion helpers.

Each helper takes a model and a small :class:`AtomsBatch`, evaluates the model
in eval mode, and raises ``AssertionError`` with the size of the violation and
the tolerance.  Tolerances default to :data:`TOLERANCES` for the batch dtype.
Model tests become short lists of these calls (as in NequIP's and e3nn's test
utilities).
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch

from ..models import AtomsBatch, ForceModel

#: Default absolute and relative tolerances (energies in eV, forces in eV/Å).
TOLERANCES = {
    torch.float32: {"atol": 2e-4, "rtol": 1e-4},
    torch.float64: {"atol": 1e-9, "rtol": 1e-9},
}


def tolerance(
    dtype: torch.dtype, atol: float | None = None, rtol: float | None = None
) -> tuple[float, float]:
    """``(atol, rtol)``: the given values, or the defaults for ``dtype``."""
    table = TOLERANCES.get(dtype, TOLERANCES[torch.float32])
    return (table["atol"] if atol is None else atol, table["rtol"] if rtol is None else rtol)


# ----------------------------------------------------------------- utilities
def evaluate(model: ForceModel, batch: AtomsBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies (n_frames,) eV and forces (n_atoms, 3) eV/Å in eval mode, detached."""
    was_training = model.training
    model.eval()
    try:
        out = model(batch, compute_forces=True)
    finally:
        model.train(was_training)
    return out["energy"].detach(), out["forces"].detach()


def replace(batch: AtomsBatch, **fields) -> AtomsBatch:
    """A copy of ``batch`` with some fields replaced (tensors detached)."""
    fields = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in fields.items()}
    return dataclasses.replace(batch, **fields)


def random_rotation(seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(3, 3) proper rotation, uniform on SO(3), from ``seed``."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return torch.as_tensor(q, dtype=dtype)


def frames_of(batch: AtomsBatch) -> list[AtomsBatch]:
    """Split a batch into one batch per frame."""
    out = []
    for f in range(batch.n_frames):
        mask = batch.frame_index == f
        out.append(
            AtomsBatch(
                positions=batch.positions[mask].detach(),
                numbers=batch.numbers[mask],
                frame_index=torch.zeros(int(mask.sum()), dtype=torch.long, device=batch.device),
                cell=None if batch.cell is None else batch.cell[f : f + 1].detach(),
                n_frames=1,
            )
        )
    return out


def _assert_close(name: str, got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float, unit: str):
    err = (got - want).abs()
    allowed = atol + rtol * want.abs()
    if not bool((err <= allowed).all()):
        worst = int(torch.argmax(err - allowed))
        raise AssertionError(
            f"{name}: max deviation {float(err.max()):.3e} {unit} exceeds tolerance "
            f"(atol {atol:.1e}, rtol {rtol:.1e}); worst entry {worst}: got "
            f"{float(got.flatten()[worst]):.6e}, expected {float(want.flatten()[worst]):.6e}"
        )


# ---------------------------------------------------------------- properties
def assert_rotation_equivariance(
    model: ForceModel, batch: AtomsBatch, seed: int = 0, atol: float | None = None, rtol: float | None = None
) -> None:
    """Rotating positions (and the cell, rows rotated alike) keeps energies and rotates forces."""
    atol, rtol = tolerance(batch.positions.dtype, atol, rtol)
    rot = random_rotation(seed, batch.positions.dtype).to(batch.device)
    e0, f0 = evaluate(model, batch)
    moved = replace(
        batch,
        positions=batch.positions @ rot.T,
        cell=None if batch.cell is None else batch.cell @ rot.T,
    )
    e1, f1 = evaluate(model, moved)
    _assert_close("energy under rotation", e1, e0, atol, rtol, "eV")
    _assert_close("forces under rotation", f1, f0 @ rot.T, atol, rtol, "eV/Å")


def assert_translation_invariance(
    model: ForceModel,
    batch: AtomsBatch,
    shift: tuple[float, float, float] = (0.731, -1.29, 2.17),
    atol: float | None = None,
    rtol: float | None = None,
) -> None:
    """Translating every atom by ``shift`` (Å) changes neither energies nor forces."""
    atol, rtol = tolerance(batch.positions.dtype, atol, rtol)
    e0, f0 = evaluate(model, batch)
    vector = torch.as_tensor(shift, dtype=batch.positions.dtype, device=batch.device)
    e1, f1 = evaluate(model, replace(batch, positions=batch.positions + vector))
    _assert_close("energy under translation", e1, e0, atol, rtol, "eV")
    _assert_close("forces under translation", f1, f0, atol, rtol, "eV/Å")


def assert_permutation_equivariance(
    model: ForceModel, batch: AtomsBatch, seed: int = 0, atol: float | None = None, rtol: float | None = None
) -> None:
    """Relabelling atoms within each frame permutes forces and keeps energies."""
    atol, rtol = tolerance(batch.positions.dtype, atol, rtol)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.cat(
        [
            idx[torch.randperm(len(idx), generator=gen)]
            for idx in (torch.nonzero(batch.frame_index.cpu() == f).flatten() for f in range(batch.n_frames))
        ]
    ).to(batch.device)
    e0, f0 = evaluate(model, batch)
    e1, f1 = evaluate(model, replace(batch, positions=batch.positions[perm], numbers=batch.numbers[perm]))
    _assert_close("energy under permutation", e1, e0, atol, rtol, "eV")
    _assert_close("forces under permutation", f1, f0[perm], atol, rtol, "eV/Å")


def assert_periodic_image_invariance(
    model: ForceModel, batch: AtomsBatch, seed: int = 0, atol: float | None = None, rtol: float | None = None
) -> None:
    """Moving atoms by integer lattice vectors (to other images) changes nothing."""
    if batch.cell is None:
        raise ValueError("periodic-image invariance needs a periodic batch (cell is None)")
    atol, rtol = tolerance(batch.positions.dtype, atol, rtol)
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(-2, 3, (batch.n_atoms, 3), generator=gen).to(batch.device, batch.positions.dtype)
    if not bool((images != 0).any()):
        images[0, 0] = 1.0
    lattice = torch.einsum("ak,akl->al", images, batch.cell[batch.frame_index])
    e0, f0 = evaluate(model, batch)
    e1, f1 = evaluate(model, replace(batch, positions=batch.positions + lattice))
    _assert_close("energy under lattice translations of atoms", e1, e0, atol, rtol, "eV")
    _assert_close("forces under lattice translations of atoms", f1, f0, atol, rtol, "eV/Å")


def assert_finite_difference_forces(
    model: ForceModel,
    batch: AtomsBatch,
    delta: float = 1e-4,
    n_checks: int = 6,
    seed: int = 0,
    atol: float = 1e-6,
    rtol: float = 1e-5,
) -> None:
    """Forces equal the central difference ``-(E(x+h) - E(x-h)) / 2h``, in float64.

    The model and batch are copied to float64; ``n_checks`` random
    (atom, component) pairs are compared.
    """
    model64 = copy.deepcopy(model).double()
    batch64 = batch.to(dtype=torch.float64)
    _, forces = evaluate(model64, batch64)
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.randint(0, batch.n_atoms, (n_checks,), generator=gen).tolist()
    comps = torch.randint(0, 3, (n_checks,), generator=gen).tolist()
    for a, c in zip(atoms, comps, strict=True):
        frame = int(batch64.frame_index[a])
        energies = []
        for sign in (1.0, -1.0):
            pos = batch64.positions.detach().clone()
            pos[a, c] += sign * delta
            energies.append(evaluate(model64, replace(batch64, positions=pos))[0][frame])
        numeric = -(energies[0] - energies[1]) / (2 * delta)
        _assert_close(
            f"force on atom {a}, component {c} vs finite difference (h={delta} Å)",
            forces[a, c].reshape(1),
            numeric.reshape(1),
            atol,
            rtol,
            "eV/Å",
        )


def assert_cutoff_continuity(
    model: ForceModel,
    batch: AtomsBatch,
    cutoff: float | None = None,
    i: int = 0,
    j: int = 1,
    delta: float = 1e-6,
    atol: float = 1e-5,
) -> None:
    """Energies and forces are continuous when a pair crosses the cutoff.

    In float64, atom ``j`` of the first frame is placed at ``cutoff - delta``
    and ``cutoff + delta`` Å from atom ``i`` (fixed direction); energy and
    force changes must stay below ``atol`` (eV, eV/Å).  A hard cutoff jumps by
    the pair's whole contribution and fails.
    """
    cutoff = model.cutoff if cutoff is None else float(cutoff)
    model64 = copy.deepcopy(model).double()
    single = frames_of(batch.to(dtype=torch.float64))[0]
    direction = torch.tensor([1.0, 0.37, -0.21], dtype=torch.float64, device=batch.device)
    direction = direction / direction.norm()
    results = []
    for distance in (cutoff - delta, cutoff + delta):
        pos = single.positions.clone()
        pos[j] = pos[i] + distance * direction
        results.append(evaluate(model64, replace(single, positions=pos)))
    (e_in, f_in), (e_out, f_out) = results
    _assert_close(f"energy across the cutoff ({cutoff} Å)", e_in, e_out, atol, 0.0, "eV")
    _assert_close(f"forces across the cutoff ({cutoff} Å)", f_in, f_out, atol, 0.0, "eV/Å")


def assert_batch_consistency(
    model: ForceModel, batch: AtomsBatch, atol: float | None = None, rtol: float | None = None
) -> None:
    """A batch of several frames gives the same results as each frame computed alone."""
    if batch.n_frames < 2:
        raise ValueError(f"batch consistency needs at least 2 frames, got {batch.n_frames}")
    atol, rtol = tolerance(batch.positions.dtype, atol, rtol)
    energy, forces = evaluate(model, batch)
    for f, single in enumerate(frames_of(batch)):
        e1, f1 = evaluate(model, single)
        _assert_close(f"energy of frame {f} batched vs alone", energy[f : f + 1], e1, atol, rtol, "eV")
        _assert_close(
            f"forces of frame {f} batched vs alone", forces[batch.frame_index == f], f1, atol, rtol, "eV/Å"
        )


#: Å: a pair moved by +-1e-11 Å changes a smooth energy by ~1e-11 eV per eV/Å of force,
#: far below the float64 tolerance, while a jump at a cutoff does not shrink with the step.
CONTINUITY_STEP = 1e-11


def model_cutoffs(model) -> dict[str, float]:
    """Every pair cutoff of a model, Å: the backbone's and, with an electrostatics head,
    its real-space cutoff."""
    cutoffs = {"backbone": float(model.cutoff)}
    head = getattr(model, "electrostatics", None)
    if head is not None and getattr(head, "real_space_cutoff", None):
        cutoffs["real_space"] = float(head.real_space_cutoff)
    return cutoffs


ALL_PROPERTIES = (
    assert_rotation_equivariance,
    assert_translation_invariance,
    assert_permutation_equivariance,
    assert_periodic_image_invariance,
    assert_finite_difference_forces,
    assert_cutoff_continuity,
    assert_batch_consistency,
)
