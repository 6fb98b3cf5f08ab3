"""Chunked edge passes (recomputed in backward) against plain tensor ops and finite differences."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from scalepool import testing as T
from scalepool.models import AtomsBatch, LongRangeBranch, MuSE, PaiNN, ShortRangeBranch, _edge_chunks
from scalepool.models._edge_chunks import DEFAULT_EDGE_CHUNK, chunked_edge_sum, edge_chunk_size
from scalepool.units import CHLORINE, SODIUM


# ------------------------------------------------------------------ the primitive
def _messages(w, x_j, v_j, e):
    """A small nonlinear message: weights (3, F), node rows (E, F) and (E, 3, F), edge vectors (E, 3)."""
    r = torch.linalg.vector_norm(e, dim=-1, keepdim=True)
    filt = torch.tanh(r * w[0] + w[1])  # (E, F)
    return x_j * filt, e.unsqueeze(-1) * (x_j * w[2]).unsqueeze(1) + v_j * filt.unsqueeze(1)


def _reference(w, x, v, e, src, dst, n):
    ms, mv = _messages(w, x[src], v[src], e)
    return (
        torch.zeros(n, ms.shape[1], dtype=ms.dtype).index_add(0, dst, ms),
        torch.zeros(n, 3, mv.shape[2], dtype=mv.dtype).index_add(0, dst, mv),
    )


@pytest.fixture
def graph():
    n, E, F = 4, 9, 2
    gen = torch.Generator().manual_seed(3)
    mk = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_(True)  # noqa: E731
    src, dst = torch.randint(0, n, (E,), generator=gen), torch.randint(0, n, (E,), generator=gen)
    return dict(w=mk(3, F), x=mk(n, F), v=mk(n, 3, F), e=mk(E, 3), src=src, dst=dst, n=n)


@pytest.mark.parametrize("chunk", [2, 100])
def test_chunked_sum_equals_plain_ops_and_finite_differences(graph, chunk):
    g = graph
    fn = lambda w, x, v, e: chunked_edge_sum(  # noqa: E731
        _messages, [w], [(x, g["src"]), (v, g["src"])], [e], g["dst"], g["n"], chunk
    )
    args = (g["w"], g["x"], g["v"], g["e"])
    for a, b in zip(fn(*args), _reference(*args, g["src"], g["dst"], g["n"]), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert gradcheck(fn, args)  # first order against central differences
    assert gradgradcheck(fn, args)  # second order (forces, then a force loss)


def test_chunked_sum_without_edges_and_bad_input(graph):
    g = graph
    empty = torch.zeros(0, dtype=torch.long)
    ms, mv = chunked_edge_sum(
        _messages, [g["w"]], [(g["x"], empty), (g["v"], empty)], [g["e"][:0]], empty, g["n"], 4
    )
    assert ms.shape == (4, 2) and mv.shape == (4, 3, 2) and not ms.any() and not mv.any()
    with pytest.raises(ValueError, match="chunk must be a positive number of edges, got 0"):
        chunked_edge_sum(_messages, [g["w"]], [(g["x"], g["src"])], [g["e"]], g["dst"], g["n"], 0)
    with pytest.raises(ValueError, match="edge input 0 has 8 rows, expected 9"):
        chunked_edge_sum(_messages, [g["w"]], [(g["x"], g["src"])], [g["e"][:8]], g["dst"], g["n"], 4)
    with pytest.raises(ValueError, match="edge_chunk must be a non-negative whole number of edges, got -1"):
        PaiNN(edge_chunk=-1)


# ------------------------------------------------------------------ every branch
def _branch(kind: str, chunk: int):
    torch.manual_seed(0)
    small = dict(n_features=6, n_interactions=2, n_rbf=6, edge_chunk=chunk)
    if kind == "short_painn":
        model = ShortRangeBranch(cutoff=4.0, **small)
    elif kind == "short_schnet":
        model = ShortRangeBranch(cutoff=4.0, backbone="schnet", **small)
    elif kind == "long":
        model = LongRangeBranch(cutoff=4.5, electrostatics=dict(fixed_charges=False, method="ewald"), **small)
    else:  # MuSE around the short branch, both levels chunked
        model = MuSE(
            ShortRangeBranch(cutoff=4.0, **small),
            n_levels=2, coarse_cutoff=[6.0, 7.0], anchor_species=[None, [SODIUM, CHLORINE]],
            n_coarse_interactions=1, n_rbf=6, edge_chunk=chunk,
        )  # fmt: skip
        with torch.no_grad():  # the unpooling maps start at zero: switch the levels on
            for level in model.levels:
                level.unpool_scalar.weight.normal_(0.0, 0.3)
    return model.double().train()


@pytest.fixture(scope="module")
def periodic():
    return AtomsBatch.from_frameset(
        T.random_frames(n_atoms=14, box=7.0, n_frames=2, seed=5), dtype=torch.float64
    )


def _energy_forces_and_loss_gradients(model, batch):
    out = model(batch)
    loss = (out["forces"] ** 2).sum() + 0.1 * (out["energy"] ** 2).sum()
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    flat = torch.cat([torch.zeros(p.numel(), dtype=p.dtype) if g is None else g.flatten()
                      for p, g in zip(model.parameters(), grads, strict=True)])  # fmt: skip
    return out["energy"].detach(), out["forces"].detach(), flat


@pytest.mark.parametrize("kind", ["short_painn", "short_schnet", "long", "muse"])
def test_chunked_branch_equals_unchunked(kind, periodic):
    pairs, _ = periodic.neighbors(4.0)
    chunk = 37  # far fewer than the edges of either frame: many chunks and a partial last one
    assert pairs.shape[0] > 5 * chunk
    plain = _energy_forces_and_loss_gradients(_branch(kind, 0), periodic)
    chunked = _energy_forces_and_loss_gradients(_branch(kind, chunk), periodic)
    for name, a, b in zip(("energy", "forces", "loss gradient"), plain, chunked, strict=True):
        assert a.abs().max() > 0, name
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("kind", ["short_painn", "short_schnet"])
def test_chunked_forces_match_finite_differences(kind, periodic):
    model = _branch(kind, 50).eval()
    T.assert_finite_difference_forces(model, periodic, n_checks=4)


def test_chunked_hessian_vector_product_equals_unchunked(periodic):
    """Second derivative in positions (the Hessian of ``md.model_hessian``) along a random direction."""
    direction = torch.randn(periodic.positions.shape, dtype=torch.float64)
    products = []
    for chunk in (0, 45):
        model = _branch("short_painn", chunk).eval()
        positions = periodic.positions.clone().requires_grad_(True)
        batch = dataclasses.replace(periodic, positions=positions)
        forces = model(batch, create_graph=True)["forces"]
        (hvp,) = torch.autograd.grad((forces * direction).sum(), positions)
        products.append(hvp)
    assert products[0].abs().max() > 0
    torch.testing.assert_close(products[1], products[0], rtol=1e-10, atol=1e-10)


def test_default_edge_chunk_keeps_testbed_graphs_unchunked():
    """The 1,467-atom testbed's graphs (52k edges at 4.5 Å, 123k at 6 Å) take the plain path;
    larger graphs are chunked in chunks of at most MAX_CHUNK_EDGES."""
    assert edge_chunk_size(52_000, DEFAULT_EDGE_CHUNK) == 0
    assert edge_chunk_size(123_000, DEFAULT_EDGE_CHUNK) == 0
    assert edge_chunk_size(DEFAULT_EDGE_CHUNK + 1, DEFAULT_EDGE_CHUNK) == _edge_chunks.MAX_CHUNK_EDGES
    assert edge_chunk_size(1_500_000, DEFAULT_EDGE_CHUNK) == 8192
    assert edge_chunk_size(1_500_000, 0) == 0  # 0 never chunks
    assert edge_chunk_size(100, 37) == 37 and edge_chunk_size(37, 37) == 0
    assert edge_chunk_size(70_000, 65536) == 8192  # a saved config's 65,536 still chunks above 65,536 edges


@pytest.mark.parametrize("kind", ["short_painn", "muse"])
def test_chunks_smaller_than_threshold_equal_unchunked(kind, periodic, monkeypatch):
    """A threshold above the chunk size (the default's layout): chunks of 11 edges for graphs above 37."""
    monkeypatch.setattr(_edge_chunks, "MAX_CHUNK_EDGES", 11)
    plain = _energy_forces_and_loss_gradients(_branch(kind, 0), periodic)
    chunked = _energy_forces_and_loss_gradients(_branch(kind, 37), periodic)
    for name, a, b in zip(("energy", "forces", "loss gradient"), plain, chunked, strict=True):
        assert a.abs().max() > 0, name
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("name", ["short", "long", "muse"])
def test_build_branch_passes_edge_chunk_to_every_part(name, periodic):
    """``scalepool train --model-option edge_chunk=N`` reaches each part that sums over edges
    (the short branch refused it as an electrostatics option before), and chunks them."""
    from scalepool.models import build_branch

    model = build_branch(name, n_features=6, n_interactions=1, edge_chunk=23)
    parts = [m for m in model.modules() if hasattr(m, "edge_chunk")]
    assert parts and all(m.edge_chunk == 23 for m in parts)
    if name == "long":
        assert model.electrostatics.options["edge_chunk"] == 23
    default = build_branch(name, n_features=6, n_interactions=1)
    assert all(m.edge_chunk == DEFAULT_EDGE_CHUNK for m in default.modules() if hasattr(m, "edge_chunk"))
    default.load_state_dict(model.state_dict())
    model, default = model.double().eval(), default.double().eval()
    torch.testing.assert_close(model(periodic)["forces"], default(periodic)["forces"], rtol=1e-10, atol=1e-10)
