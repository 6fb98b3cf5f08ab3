"""MuSE pooling and unpooling in chunks (recomputed in backward) against the dense
matrix S and against the unchunked path, float64: values, gradients, second order."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from scalepool.models import MuSE, PaiNN, _muse
from scalepool.models._batch import AtomsBatch
from scalepool.models._pooling import SoftCoarseGraining
from scalepool.testing import TOLERANCES
from scalepool.testing._systems import water_box

TOL = dict(rtol=0, atol=TOLERANCES[torch.float64]["atol"])


@pytest.fixture(scope="module")
def water() -> AtomsBatch:
    return AtomsBatch.from_frameset(water_box(box=9.0, n_ion_pairs=1, seed=5), dtype=torch.float64)


def test_chunked_pool_and_unpool_equal_dense_s_with_exact_derivatives(water):
    torch.manual_seed(0)
    a = SoftCoarseGraining(sigma=1.1, cutoff=3.2).double()(water)
    n_entries = a.point.shape[0]
    assert n_entries > 40  # chunks of 7 entries: several
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(water.n_atoms, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(a.n_nodes, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    dense = a.dense().detach()
    mass = dense.sum(0)
    # Against the dense matrix (an independent formula), then against the unchunked path.
    torch.testing.assert_close(
        a.pool(x, chunk=7), torch.einsum("ik,ijf->kjf", dense, x) / mass[:, None, None], **TOL
    )
    torch.testing.assert_close(a.unpool(y, chunk=7), dense @ y, **TOL)
    torch.testing.assert_close(a.pool(x, chunk=7), a.pool(x), **TOL)
    # Derivatives in the features and in the weights S (positions reach S): central
    # differences, on the first 30 entries (gradgradcheck is quadratic in the inputs).
    part = dataclasses.replace(a, point=a.point[:30], node=a.node[:30], mass=a.mass.detach())
    weight = a.weight.detach()[:30].clone().requires_grad_(True)
    features = x.detach()[:, 0, :2].clone().requires_grad_(True)

    def pooled(xx, w):
        b = dataclasses.replace(part, weight=w)
        return b.pool(xx, chunk=7), b.unpool(y.detach()[:, :2], chunk=7)

    assert gradcheck(pooled, (features, weight))
    assert gradgradcheck(pooled, (features, weight))


def test_muse_with_chunked_pooling_equals_unchunked(water, monkeypatch):
    torch.manual_seed(1)
    model = MuSE(
        PaiNN(n_features=8, n_interactions=1, cutoff=4.0), coarse_cutoff=5.0, n_coarse_interactions=1
    )
    model = model.double()
    with torch.no_grad():  # the unpooling starts at zero: make the coarse level count
        for level in model.levels:
            level.unpool_scalar.weight.normal_()

    def run():
        positions = water.positions.clone().requires_grad_(True)
        energy = model.atomic_energies(dataclasses.replace(water, positions=positions)).sum()
        (grad,) = torch.autograd.grad(energy, positions, create_graph=True)
        loss = (grad**2).sum()
        params = torch.autograd.grad(
            loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True
        )
        return energy.detach(), grad.detach(), [p for p in params if p is not None]

    monkeypatch.setattr(_muse, "MAX_CHUNK_EDGES", 10**9)  # never chunks (one chunk is all)
    plain = run()
    monkeypatch.setattr(_muse, "MAX_CHUNK_EDGES", 13)
    chunked = run()
    assert plain[1].abs().max() > 1e-3
    torch.testing.assert_close(chunked[0], plain[0], **TOL)
    torch.testing.assert_close(chunked[1], plain[1], **TOL)
    assert len(chunked[2]) == len(plain[2]) > 0
    for a, b in zip(chunked[2], plain[2], strict=True):
        torch.testing.assert_close(a, b, **TOL)
