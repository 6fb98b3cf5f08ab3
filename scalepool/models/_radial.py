"""Radial bases, smooth cutoff envelopes and small layers shared by the backbones.

All functions are pure maths on distances in Å; they are differentiable so that
forces come from autograd.
"""

from __future__ import annotations

import math

import torch
from torch import nn

CUTOFF_FUNCTIONS = ("cosine", "polynomial")
RADIAL_BASES = ("bessel", "gaussian")


def cosine_cutoff(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    """``0.5 (cos(pi r / rc) + 1)`` inside the cutoff, 0 outside.

    Value and first derivative vanish at ``rc`` (energies and forces continuous).

    r : (n_pairs,), Å; returns (n_pairs,), dimensionless in [0, 1]
    """
    return torch.where(r < cutoff, 0.5 * (torch.cos(r * (math.pi / cutoff)) + 1.0), torch.zeros_like(r))


def polynomial_cutoff(r: torch.Tensor, cutoff: float, p: int = 6) -> torch.Tensor:
    """The polynomial envelope of DimeNet with exponent ``p`` (6 as in NequIP).

    ``1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)`` with
    ``x = r / rc``; value and first two derivatives vanish at ``rc``.

    r : (n_pairs,), Å; returns (n_pairs,), dimensionless in [0, 1]
    """
    x = r / cutoff
    xp = x.pow(p)
    envelope = 1.0 - 0.5 * (p + 1) * (p + 2) * xp + p * (p + 2) * xp * x - 0.5 * p * (p + 1) * xp * x * x
    return torch.where(x < 1.0, envelope, torch.zeros_like(r))


def bessel_basis(r: torch.Tensor, n_basis: int, cutoff: float) -> torch.Tensor:
    """``sqrt(2/rc) sin(n pi r / rc) / r`` for ``n = 1..n_basis`` (PaiNN, DimeNet).

    r : (n_pairs,), Å, positive; returns (n_pairs, n_basis), 1/Å^(3/2)
    """
    n = torch.arange(1, n_basis + 1, device=r.device, dtype=r.dtype) * (math.pi / cutoff)
    return math.sqrt(2.0 / cutoff) * torch.sin(r.unsqueeze(-1) * n) / r.unsqueeze(-1)


def gaussian_basis(r: torch.Tensor, n_basis: int, cutoff: float) -> torch.Tensor:
    """Gaussians of width equal to their spacing, centred on ``linspace(0, rc, n_basis)`` (SchNet).

    r : (n_pairs,), Å; returns (n_pairs, n_basis), dimensionless
    """
    centers = torch.linspace(0.0, cutoff, n_basis, device=r.device, dtype=r.dtype)
    width = cutoff / max(n_basis - 1, 1)
    return torch.exp(-0.5 * ((r.unsqueeze(-1) - centers) / width) ** 2)


def radial_basis(r: torch.Tensor, n_basis: int, cutoff: float, basis: str = "bessel") -> torch.Tensor:
    """``"bessel"`` or ``"gaussian"`` basis; r : (n_pairs,), Å -> (n_pairs, n_basis)."""
    if basis == "bessel":
        return bessel_basis(r, n_basis, cutoff)
    if basis == "gaussian":
        return gaussian_basis(r, n_basis, cutoff)
    raise ValueError(f"radial basis must be one of {RADIAL_BASES}, got {basis!r}")


def cutoff_envelope(r: torch.Tensor, cutoff: float, kind: str = "polynomial") -> torch.Tensor:
    """``"polynomial"`` or ``"cosine"`` envelope; r : (n_pairs,), Å -> (n_pairs,)."""
    if kind == "polynomial":
        return polynomial_cutoff(r, cutoff)
    if kind == "cosine":
        return cosine_cutoff(r, cutoff)
    raise ValueError(f"cutoff function must be one of {CUTOFF_FUNCTIONS}, got {kind!r}")


def radial_features(
    r: torch.Tensor, n_basis: int, cutoff: float, basis: str = "bessel", envelope: str = "polynomial"
) -> torch.Tensor:
    """Radial basis times the smooth cutoff envelope, computed once per edge.

    r : (n_pairs,), Å; returns (n_pairs, n_basis), zero beyond ``cutoff``
    """
    return radial_basis(r, n_basis, cutoff, basis) * cutoff_envelope(r, cutoff, envelope).unsqueeze(-1)


def shifted_softplus(x: torch.Tensor) -> torch.Tensor:
    """``softplus(x) - log 2`` (SchNet's activation, zero at zero)."""
    return nn.functional.softplus(x) - math.log(2.0)


class MLP(nn.Sequential):
    """Linear, activation, linear: the two-layer perceptron used everywhere here.

    x : (..., n_in) -> (..., n_out)
    """

    def __init__(self, n_in: int, n_hidden: int, n_out: int, activation: str = "silu"):
        act = {"silu": nn.SiLU(), "ssp": _ShiftedSoftplus()}[activation]
        super().__init__(nn.Linear(n_in, n_hidden), act, nn.Linear(n_hidden, n_out))


class _ShiftedSoftplus(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shifted_softplus(x)
