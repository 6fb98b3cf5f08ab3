"""Cache-friendly gather-multiply-scatter kernels for equivariant message passing.

A PaiNN vector message ``dv_i = sum_j (r_ij ⊗ a_ij + v_j ⊙ b_ij)`` written with
plain tensor ops materialises several (n_edges, 3, F) tensors per block and as
many again in the backward pass; on CPU those passes over memory, not the
arithmetic, set the cost.  The five bilinear operations below process the
edges in chunks that stay in cache and never build an (n_edges, 3, F) tensor.

They form a closed family under differentiation: the backward of each is
written with the others, so gradients of any order (forces by autograd, then
a force loss, then Hessians) stay exact and stay chunked.  Indices are int64
tensors of shape (n_edges,); ``n`` is the number of nodes.

Shapes: ``x, G`` are node tensors (n, F) or (n, 3, F); ``w, a`` edge scalars
(n_edges, F); ``u`` edge vectors (n_edges, 3).
"""

from __future__ import annotations

import torch

#: Edges per chunk are chosen so one chunk of an (n_edges, 3, F) message holds
#: about this many floats (~1.5 MB in float32, ~3 MB in float64).
CHUNK_ELEMENTS = 1 << 19
_MIN_CHUNK = 256


def _chunks(n_edges: int, row_size: int):
    step = max(_MIN_CHUNK, CHUNK_ELEMENTS // max(row_size, 1))
    for start in range(0, n_edges, step):
        yield slice(start, min(start + step, n_edges))


def _summing_dtype(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The inputs in one dtype, the widest of theirs and at least float32.

    Under mixed precision (``torch.autocast``) the linear layers hand bfloat16 or
    float16 features to these kernels; their sums over neighbours accumulate in
    float32 (a half-precision running sum of ~50 messages loses the small ones).
    Inputs already in one float32 or float64 dtype are returned unchanged.
    """
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t if t.dtype == dtype else t.to(dtype) for t in tensors)


def _expand_edge(w: torch.Tensor, node_dim: int) -> torch.Tensor:
    """(E, F) -> (E, 1, F) when node tensors carry a Cartesian axis."""
    return w.unsqueeze(1) if node_dim == 3 else w


class _GatherMulScatter(torch.autograd.Function):
    """out[dst_e] += x[src_e] * w_e."""

    @staticmethod
    def forward(ctx, x, w, src, dst, n):
        ctx.save_for_backward(x, w)
        ctx.src, ctx.dst, ctx.n = src, dst, n
        out = x.new_zeros((n, *x.shape[1:]))
        row = x[0].numel() if x.shape[0] else 1
        for sl in _chunks(w.shape[0], row):
            msg = torch.index_select(x, 0, src[sl])
            msg.mul_(_expand_edge(w[sl], x.dim()))
            out.index_add_(0, dst[sl], msg)
        return out

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = gather_mul_scatter(g, w, ctx.dst, ctx.src, x.shape[0])
        if ctx.needs_input_grad[1]:
            grad_w = gather_pair_dot(g, x, ctx.dst, ctx.src)
        return grad_x, grad_w, None, None, None


class _GatherPairDot(torch.autograd.Function):
    """out_e = sum over the Cartesian axis (if any) of G[i1_e] * x[i2_e]; (E, F)."""

    @staticmethod
    def forward(ctx, G, x, i1, i2):
        ctx.save_for_backward(G, x)
        ctx.i1, ctx.i2 = i1, i2
        n_edges = i1.shape[0]
        out = G.new_empty((n_edges, G.shape[-1]))
        for sl in _chunks(n_edges, G[0].numel() if G.shape[0] else 1):
            prod = torch.index_select(G, 0, i1[sl])
            prod.mul_(torch.index_select(x, 0, i2[sl]))
            if G.dim() == 3:
                torch.sum(prod, dim=1, out=out[sl])
            else:
                out[sl] = prod
        return out

    @staticmethod
    def backward(ctx, g):
        G, x = ctx.saved_tensors
        grad_G = grad_x = None
        if ctx.needs_input_grad[0]:
            grad_G = gather_mul_scatter(x, g, ctx.i2, ctx.i1, G.shape[0])
        if ctx.needs_input_grad[1]:
            grad_x = gather_mul_scatter(G, g, ctx.i1, ctx.i2, x.shape[0])
        return grad_G, grad_x, None, None


class _OuterScatter(torch.autograd.Function):
    """out[dst_e] += u_e ⊗ a_e; u (E, 3), a (E, F) -> (n, 3, F)."""

    @staticmethod
    def forward(ctx, u, a, dst, n):
        ctx.save_for_backward(u, a)
        ctx.dst, ctx.n = dst, n
        out = a.new_zeros((n, u.shape[1], a.shape[1]))
        for sl in _chunks(a.shape[0], u.shape[1] * a.shape[1]):
            msg = u[sl].unsqueeze(-1) * a[sl].unsqueeze(1)
            out.index_add_(0, dst[sl], msg)
        return out

    @staticmethod
    def backward(ctx, g):
        u, a = ctx.saved_tensors
        grad_u = grad_a = None
        if ctx.needs_input_grad[0]:
            grad_u = gather_dot_features(g, a, ctx.dst)
        if ctx.needs_input_grad[1]:
            grad_a = gather_dot_vector(g, u, ctx.dst)
        return grad_u, grad_a, None, None


class _GatherDotVector(torch.autograd.Function):
    """out_e = sum_c G[idx_e, c, :] u_e[c]; G (n, 3, F), u (E, 3) -> (E, F)."""

    @staticmethod
    def forward(ctx, G, u, idx):
        ctx.save_for_backward(G, u)
        ctx.idx = idx
        out = G.new_empty((idx.shape[0], G.shape[-1]))
        for sl in _chunks(idx.shape[0], G[0].numel() if G.shape[0] else 1):
            rows = torch.index_select(G, 0, idx[sl])  # (e, 3, F)
            uu, o = u[sl], out[sl]
            torch.mul(rows[:, 0], uu[:, 0:1], out=o)
            for c in range(1, rows.shape[1]):
                o.addcmul_(rows[:, c], uu[:, c : c + 1])
        return out

    @staticmethod
    def backward(ctx, g):
        G, u = ctx.saved_tensors
        grad_G = grad_u = None
        if ctx.needs_input_grad[0]:
            grad_G = outer_scatter(u, g, ctx.idx, G.shape[0])
        if ctx.needs_input_grad[1]:
            grad_u = gather_dot_features(G, g, ctx.idx)
        return grad_G, grad_u, None


class _GatherDotFeatures(torch.autograd.Function):
    """out_e = sum_f G[idx_e, :, f] a_e[f]; G (n, 3, F), a (E, F) -> (E, 3)."""

    @staticmethod
    def forward(ctx, G, a, idx):
        ctx.save_for_backward(G, a)
        ctx.idx = idx
        out = G.new_empty((idx.shape[0], G.shape[1]))
        for sl in _chunks(idx.shape[0], G[0].numel() if G.shape[0] else 1):
            rows = torch.index_select(G, 0, idx[sl])  # (e, 3, F)
            rows.mul_(a[sl].unsqueeze(1))
            torch.sum(rows, dim=-1, out=out[sl])
        return out

    @staticmethod
    def backward(ctx, g):
        G, a = ctx.saved_tensors
        grad_G = grad_a = None
        if ctx.needs_input_grad[0]:
            grad_G = outer_scatter(g, a, ctx.idx, G.shape[0])
        if ctx.needs_input_grad[1]:
            grad_a = gather_dot_vector(G, g, ctx.idx)
        return grad_G, grad_a, None


def gather_mul_scatter(
    x: torch.Tensor, w: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, n: int
) -> torch.Tensor:
    """``out[dst_e] += x[src_e] * w_e``.

    x : (n_src, F) or (n_src, 3, F); w : (E, F), broadcast over the Cartesian
    axis; src, dst : (E,) int64.  Returns (n, F) or (n, 3, F).
    """
    return _GatherMulScatter.apply(*_summing_dtype(x, w), src, dst, n)


def gather_pair_dot(G: torch.Tensor, x: torch.Tensor, i1: torch.Tensor, i2: torch.Tensor) -> torch.Tensor:
    """``out_e = sum_c G[i1_e, c] * x[i2_e, c]`` (no sum for (n, F) inputs); returns (E, F)."""
    return _GatherPairDot.apply(*_summing_dtype(G, x), i1, i2)


def outer_scatter(u: torch.Tensor, a: torch.Tensor, dst: torch.Tensor, n: int) -> torch.Tensor:
    """``out[dst_e] += u_e ⊗ a_e``; u : (E, 3), a : (E, F); returns (n, 3, F)."""
    return _OuterScatter.apply(*_summing_dtype(u, a), dst, n)


def gather_dot_vector(G: torch.Tensor, u: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``out_e = sum_c G[idx_e, c, :] u_e[c]``; G : (n, 3, F), u : (E, 3); returns (E, F)."""
    return _GatherDotVector.apply(*_summing_dtype(G, u), idx)


def gather_dot_features(G: torch.Tensor, a: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``out_e = sum_f G[idx_e, :, f] a_e[f]``; G : (n, 3, F), a : (E, F); returns (E, 3)."""
    return _GatherDotFeatures.apply(*_summing_dtype(G, a), idx)
