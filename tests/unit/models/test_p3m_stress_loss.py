"""A stress loss trains every branch: its gradient to the weights is finite and exact.

The stress is a cell derivative of the energy, so a stress loss needs the second
derivative of the energy (cell, then weights).  torch-pme's k-space filter has
NaN second derivatives at k = 0 (``linalg.norm(k) ** 2``, ``torch.sinc``), which
made every weight gradient of the long branch NaN under ``--stress-weight``;
scalepool's smooth filter fixes that.  The reference here is independent of
autograd's second order: a central finite difference of the loss (first-order
stress only) along one weight direction.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalepool.models import AtomsBatch, build_branch

METHODS = {"p3m": dict(method="p3m"), "pme": dict(method="pme"), "ewald": dict(method="ewald")}


def _frame():
    rng = np.random.default_rng(3)
    cell = np.array([[9.0, 0.0, 0.0], [0.7, 9.5, 0.0], [-0.4, 0.5, 10.0]])
    numbers = np.array([8, 1, 1] * 6 + [11, 17])
    positions = rng.uniform(0.0, 1.0, (len(numbers), 3)) @ cell
    return AtomsBatch.from_arrays(positions[None], numbers, cell[None], dtype=torch.float64)


def _stress_loss(model, batch, create_graph):
    out = model(batch, compute_stress=True, create_graph=create_graph)
    return out["stress"].square().sum() * 1e4


@pytest.mark.parametrize(
    "method",
    ["p3m", pytest.param("pme", marks=pytest.mark.slow), pytest.param("ewald", marks=pytest.mark.slow)],
)
def test_long_branch_stress_loss_gradient_is_finite_and_matches_finite_differences(method):
    torch.manual_seed(0)
    model = build_branch("long", n_features=8, n_interactions=1, electrostatics=METHODS[method]).double()
    batch = _frame()
    loss = _stress_loss(model, batch, create_graph=True)
    (grad,) = torch.autograd.grad(loss, [model.electrostatics.charge_head[0].weight])
    assert torch.isfinite(grad).all()
    # every weight gradient, not just one tensor
    model.zero_grad()
    _stress_loss(model, batch, create_graph=True).backward()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name

    weight = model.electrostatics.charge_head[0].weight
    direction = torch.randn_like(weight)
    h = 1e-5
    with torch.no_grad():
        weight += h * direction
    plus = float(_stress_loss(model, batch, create_graph=False))
    with torch.no_grad():
        weight -= 2 * h * direction
    minus = float(_stress_loss(model, batch, create_graph=False))
    with torch.no_grad():
        weight += h * direction
    numeric = (plus - minus) / (2 * h)
    analytic = float((grad * direction).sum())
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-9)
