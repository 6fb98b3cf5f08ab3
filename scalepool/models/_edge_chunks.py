"""Edge sums in chunks, recomputed in backward: memory in O(atoms x features).

A message-passing block computes per-edge messages from per-edge geometry, the
rows of node tensors gathered at one end of each edge and a few weights, and
sums them onto the other end::

    out[dst_e] += fn(weights, x[idx_e] ..., vectors_e ...)

Written with plain tensor ops, autograd keeps every per-edge intermediate of
every block for the backward pass (filters, products, (E, 3, F) messages):
several (n_edges, F) tensors per block, and the force loss of training keeps
those of the backward pass too.  :func:`chunked_edge_sum` instead runs ``fn``
on chunks of edges and keeps only its inputs (node tensors, the (E, 3) edge
vectors, the weights).  The backward pass recomputes each chunk and takes its
vector-Jacobian product; that product is itself a chunked function whose own
backward recomputes again with ``create_graph``, so forces (first order) and a
force loss back-propagated to the weights, or a Hessian (second order), are
exact.  A third derivative raises (``once_differentiable``).

Node inputs are gathered per chunk and their gradients scattered back per
chunk, so no step allocates a node-sized tensor per chunk: the cost is linear
in edges plus nodes, with one recomputation of each chunk per backward level.

Shapes: ``weights`` any tensors (full gradients); node tensors (n_src, ...)
gathered by an (E,) int64 index; edge tensors (E, ...) sliced; ``dst`` (E,)
int64; outputs (n, ...), one per message ``fn`` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

#: Default ``edge_chunk`` of the message-passing backbones: graphs with more
#: edges than this run their edge pass in chunks.  Graphs of the 1,467-atom
#: testbed (52k edges at 4.5 Å, 123k at 6 Å) stay below it and take the
#: unchunked path (chunking them cost ~2x the time for no memory gain).
#: Models saved with an ``edge_chunk`` in their config keep theirs.
DEFAULT_EDGE_CHUNK = 262144
#: Edges per chunk once a graph is chunked (at most): with 64 features one
#: chunk's (E, 3, F) float32 message is 6.3 MB.  Inference of the short branch
#: at 17.6k atoms peaked 3.3 GB above baseline with chunks of 262,144 edges,
#: 1.47 GB with 65,536 and 0.84 GB with 16,384.  From 16,384 to 8,192 the peak
#: at 17.6k atoms fell from 48.1 to 40.7 KB/atom (short), 55.4 to 48.2 (MuSE) and
#: 62.1 to 54.0 (long) for inference and from 86.2 to 74.6 (short) for a training
#: step, at the same CPU time to within 6 %; 4,096 saved 3 KB/atom more and cost
#: 15 % more time (long branch inference).
MAX_CHUNK_EDGES = 8192


def edge_chunk_size(n_edges: int, edge_chunk: int) -> int:
    """Edges per chunk for a graph of ``n_edges`` edges, or 0 for the unchunked path.

    A graph is chunked when ``0 < edge_chunk < n_edges``; its chunks then hold
    ``min(edge_chunk, MAX_CHUNK_EDGES)`` edges.
    """
    if not 0 < edge_chunk < n_edges:
        return 0
    return min(int(edge_chunk), MAX_CHUNK_EDGES)


def _slices(n_edges: int, chunk: int):
    if n_edges == 0:
        yield slice(0, 0)
        return
    for start in range(0, n_edges, chunk):
        yield slice(start, min(start + chunk, n_edges))


class _Spec:
    """Static description of one call: the message function and how inputs are laid out."""

    def __init__(self, fn, chunk, n_weights, node_index, n_edge, dst, n):
        self.fn, self.chunk, self.n = fn, int(chunk), int(n)
        self.n_weights, self.node_index, self.n_edge = n_weights, tuple(node_index), n_edge
        self.dst = tuple(dst)  # one (E,) index, or one per message
        self.n_edges = int(self.dst[0].shape[0])
        self.n_inputs = n_weights + len(self.node_index) + n_edge

    def dst_of(self, o: int) -> torch.Tensor:
        """(E,) int64: the node each edge's message ``o`` is summed onto."""
        return self.dst[o] if len(self.dst) > 1 else self.dst[0]

    def kind(self, k: int) -> str:
        if k < self.n_weights:
            return "weight"
        return "node" if k < self.n_weights + len(self.node_index) else "edge"

    def chunk_inputs(self, inputs: Sequence[torch.Tensor], sl: slice) -> list[torch.Tensor]:
        """Weights as they are, node rows gathered for the chunk's edges, edge rows sliced."""
        out = list(inputs[: self.n_weights])
        for x, index in zip(
            inputs[self.n_weights : self.n_weights + len(self.node_index)], self.node_index, strict=True
        ):
            out.append(torch.index_select(x, 0, index[sl]))
        out.extend(e[sl] for e in inputs[self.n_weights + len(self.node_index) :])
        return out

    def scatter(self, messages: Sequence[torch.Tensor], sl: slice, totals: list | None) -> list[torch.Tensor]:
        if totals is None:
            totals = [m.new_zeros((self.n, *m.shape[1:])) for m in messages]
        for o, (total, m) in enumerate(zip(totals, messages, strict=True)):
            total.index_add_(0, self.dst_of(o)[sl], m)
        return totals

    def accumulate(self, k: int, total: torch.Tensor, grad: torch.Tensor | None, sl: slice) -> None:
        """Add the chunk's gradient ``grad`` of input ``k`` into its full-size gradient ``total``."""
        if grad is None:
            return
        kind = self.kind(k)
        if kind == "weight":
            total.add_(grad)
        elif kind == "node":
            total.index_add_(0, self.node_index[k - self.n_weights][sl], grad)
        else:
            total[sl] += grad


def _messages(spec: _Spec, xs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    out = spec.fn(*xs)
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


class _ChunkedEdgeSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: _Spec, *inputs):
        totals = None
        with torch.no_grad():
            for sl in _slices(spec.n_edges, spec.chunk):
                totals = spec.scatter(_messages(spec, spec.chunk_inputs(inputs, sl)), sl, totals)
        ctx.spec = spec
        ctx.save_for_backward(*inputs)
        return tuple(totals)

    @staticmethod
    def backward(ctx, *grads):
        spec = ctx.spec
        wanted = tuple(k for k in range(spec.n_inputs) if ctx.needs_input_grad[1 + k])
        if not wanted:
            return (None,) * (1 + spec.n_inputs)
        result = _ChunkedEdgeVJP.apply(spec, wanted, *ctx.saved_tensors, *grads)
        out = [None] * spec.n_inputs
        for k, g in zip(wanted, result, strict=True):
            out[k] = g
        return (None, *out)


class _ChunkedEdgeVJP(torch.autograd.Function):
    """Gradients of ``sum_out <chunked_edge_sum(inputs)[out], grads[out]>`` w.r.t. the ``wanted`` inputs."""

    @staticmethod
    def forward(ctx, spec: _Spec, wanted: tuple[int, ...], *args):
        inputs, grads = args[: spec.n_inputs], args[spec.n_inputs :]
        totals = [torch.zeros_like(inputs[k]) for k in wanted]
        for sl in _slices(spec.n_edges, spec.chunk):
            with torch.enable_grad():
                xs = [x.detach() for x in spec.chunk_inputs(inputs, sl)]
                for k in wanted:
                    xs[k].requires_grad_(True)
                messages = _messages(spec, xs)
                cot = [torch.index_select(g, 0, spec.dst_of(o)[sl]) for o, g in enumerate(grads)]
                pairs = [(m, c) for m, c in zip(messages, cot, strict=True) if m.requires_grad]
                if not pairs:
                    continue
                chunk_grads = torch.autograd.grad(
                    [m for m, _ in pairs], [xs[k] for k in wanted], [c for _, c in pairs], allow_unused=True
                )
            for k, total, g in zip(wanted, totals, chunk_grads, strict=True):
                spec.accumulate(k, total, g, sl)
        ctx.spec, ctx.wanted = spec, wanted
        ctx.save_for_backward(*args)
        return tuple(totals)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *tangents):
        spec, wanted = ctx.spec, ctx.wanted
        args = ctx.saved_tensors
        inputs, grads = args[: spec.n_inputs], args[spec.n_inputs :]
        need_in = [k for k in range(spec.n_inputs) if ctx.needs_input_grad[2 + k]]
        need_g = [o for o in range(len(grads)) if ctx.needs_input_grad[2 + spec.n_inputs + o]]
        in_totals = {k: torch.zeros_like(inputs[k]) for k in need_in}
        g_totals = {o: torch.zeros_like(grads[o]) for o in need_g}
        if not need_in and not need_g:
            return (None, None) + (None,) * len(args)
        for sl in _slices(spec.n_edges, spec.chunk):
            with torch.enable_grad():
                xs = [x.detach() for x in spec.chunk_inputs(inputs, sl)]
                for k in set(wanted) | set(need_in):
                    xs[k].requires_grad_(True)
                cot = [
                    torch.index_select(g.detach(), 0, spec.dst_of(o)[sl]).requires_grad_(True)
                    for o, g in enumerate(grads)
                ]
                messages = _messages(spec, xs)
                pairs = [(m, c) for m, c in zip(messages, cot, strict=True) if m.requires_grad]
                if not pairs:
                    continue
                first = torch.autograd.grad(
                    [m for m, _ in pairs], [xs[k] for k in wanted], [c for _, c in pairs],
                    create_graph=True, allow_unused=True,
                )  # fmt: skip
                inner = None
                for k, g, t in zip(wanted, first, tangents, strict=True):
                    if g is None:
                        continue
                    kind = spec.kind(k)
                    if kind == "node":
                        t = torch.index_select(t, 0, spec.node_index[k - spec.n_weights][sl])
                    elif kind == "edge":
                        t = t[sl]
                    term = (g * t).sum()
                    inner = term if inner is None else inner + term
                if inner is None or not inner.requires_grad:
                    continue
                targets = [xs[k] for k in need_in] + [cot[o] for o in need_g]
                second = torch.autograd.grad(inner, targets, allow_unused=True)
            for k, g in zip(need_in, second[: len(need_in)], strict=True):
                spec.accumulate(k, in_totals[k], g, sl)
            for o, g in zip(need_g, second[len(need_in) :], strict=True):
                if g is not None:
                    g_totals[o].index_add_(0, spec.dst_of(o)[sl], g)
        grads_in = [in_totals.get(k) for k in range(spec.n_inputs)]
        grads_g = [g_totals.get(o) for o in range(len(grads))]
        return (None, None, *grads_in, *grads_g)


def chunked_edge_sum(
    fn: Callable[..., tuple[torch.Tensor, ...]],
    weights: Sequence[torch.Tensor],
    nodes: Sequence[tuple[torch.Tensor, torch.Tensor]],
    edges: Sequence[torch.Tensor],
    dst: torch.Tensor | Sequence[torch.Tensor],
    n: int,
    chunk: int = DEFAULT_EDGE_CHUNK,
) -> tuple[torch.Tensor, ...]:
    """``out[dst_e] += fn(*weights, *(x[index_e] for x, index in nodes), *(e_e for e in edges))``.

    Parameters
    ----------
    fn : per-edge messages from one chunk; called as
        ``fn(*weights, *gathered_node_rows, *edge_rows)`` and returning a tensor
        or tuple of tensors, each (E_chunk, ...); it must be a pure function of
        its arguments (closures may hold constants, never parameters)
    weights : tensors used whole by every chunk (filter weights), any shapes
    nodes : ``(x, index)`` pairs: x (n_src, ...) gathered by index (E,) int64
    edges : per-edge tensors (E, ...), e.g. edge vectors (E, 3) Å
    dst : (E,) int64, the node each message is summed onto; or a sequence of
        such indices, one per message ``fn`` returns (e.g. both ends of a
        half-list pair: ``(pairs[:, 0], pairs[:, 1])``)
    n : number of destination nodes
    chunk : edges per chunk (positive)

    Returns
    -------
    tuple of (n, ...) sums, one per message.  Differentiable twice in every
    floating input (weights, node tensors, edge tensors).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of edges, got {chunk}")
    dsts = (dst,) if isinstance(dst, torch.Tensor) else tuple(dst)
    if not dsts:
        raise ValueError("dst must be an (E,) int64 index or a non-empty sequence of them")
    n_edges = dsts[0].shape[0]
    for o, d in enumerate(dsts):
        if d.shape != (n_edges,):
            raise ValueError(f"dst {o} has shape {tuple(d.shape)}, expected ({n_edges},) like dst 0")
    for k, (_, index) in enumerate(nodes):
        if index.shape != (n_edges,):
            raise ValueError(f"node input {k}: index has shape {tuple(index.shape)}, expected ({n_edges},)")
    for k, e in enumerate(edges):
        if e.shape[0] != n_edges:
            raise ValueError(f"edge input {k} has {e.shape[0]} rows, expected {n_edges} (one per edge)")
    spec = _Spec(fn, chunk, len(weights), [index for _, index in nodes], len(edges), dsts, n)
    return _ChunkedEdgeSum.apply(spec, *weights, *(x for x, _ in nodes), *edges)
