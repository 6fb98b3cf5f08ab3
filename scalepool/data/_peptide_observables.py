"""Folding coordinates of the peptide testbed: C-alpha RMSD, native contacts, radius of gyration
(used by :mod:`scalepool.data._peptide`)."""

from __future__ import annotations

import numpy as np

from ._frameset import FrameSet

#: Native contacts: C-alpha pairs |i - j| >= 3 closer than this (Å) in the reference.
NATIVE_CUTOFF = 8.0
NATIVE_BETA, NATIVE_LAMBDA = 5.0, 1.5  # 1/Å, tolerance factor of the smooth contact count


def _kabsch_rmsd(x: np.ndarray, ref: np.ndarray) -> float:
    """RMSD (Å) of (n, 3) ``x`` to ``ref`` after optimal superposition."""
    a, b = x - x.mean(axis=0), ref - ref.mean(axis=0)
    u, s, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(u @ vt))
    s[-1] *= d
    msd = (np.sum(a * a) + np.sum(b * b) - 2.0 * s.sum()) / len(x)
    return float(np.sqrt(max(msd, 0.0)))


def folding_observables(ca: np.ndarray, reference: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame folding coordinates of C-alpha positions ``ca`` (F, n, 3) Å against
    ``reference`` (n, 3) Å: ``ca_rmsd`` (Å), ``native_contacts`` (fraction, 0..1),
    ``radius_of_gyration`` (Å, C-alpha, unweighted), each (F,)."""
    ca = np.asarray(ca, dtype=np.float64)
    ref_d = np.linalg.norm(reference[:, None] - reference[None], axis=-1)
    i, j = np.triu_indices(len(reference), k=3)
    native = ref_d[i, j] < NATIVE_CUTOFF
    i, j, r0 = i[native], j[native], ref_d[i, j][native]
    r = np.linalg.norm(ca[:, i] - ca[:, j], axis=-1)
    q = (1.0 / (1.0 + np.exp(NATIVE_BETA * (r - NATIVE_LAMBDA * r0)))).mean(axis=1)
    centred = ca - ca.mean(axis=1, keepdims=True)
    return {
        "ca_rmsd": np.array([_kabsch_rmsd(x, reference) for x in ca]),
        "native_contacts": q,
        "radius_of_gyration": np.sqrt((centred**2).sum(axis=-1).mean(axis=1)),
    }


def peptide_observables(frames: FrameSet) -> dict[str, np.ndarray]:
    """(F,) arrays of a peptide dataset: ``ca_rmsd`` Å, ``native_contacts``, ``radius_of_gyration`` Å,
    ``temperature_k`` K and ``segment`` (index into ``meta["segments"]``)."""
    stored = frames.meta.get("observables")
    if not isinstance(stored, dict):
        raise ValueError(
            "not a peptide dataset: meta['observables'] is missing (made by scalepool data peptide?)"
        )
    return {key: np.asarray(value) for key, value in stored.items()}
