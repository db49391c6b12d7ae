"""Attention rollout and exact attention flow (Abnar & Zuidema 2020), defined in docs/methods.md.

Both work on one square stack ``attn[layer, head, query, key]`` (rows sum to 1) with n tokens.
Each layer l = 1..L is first turned into the residual-augmented, head-fused matrix

    A'_l = rownorm(0.5 * fuse(attn[l - 1]) + 0.5 * I)        (rows renormalised, keepdim)

where ``fuse`` is the mean, max or min over heads. Row i of A'_l says how token i after layer l
draws on the tokens before layer l.

- Rollout multiplies them up: R = A'_L A'_(L-1) ... A'_1, so row i of R is how much output
  token i draws on each input token (each row sums to 1).
- Attention flow treats them as capacities of a layered DAG: node (l, i) is token i after layer
  l (l = 0 is the input), an edge (l, i) -> (l-1, j) has capacity A'_l[i, j]; the flow from
  output token u to input token v is the max-flow value from (L, u) to (0, v). The vector over v
  is normalised to sum to 1.

A stack of mixing matrices (attnviz.mixing: one "head" per layer, ``[layers, 1, n, n]``) is rolled
out and flowed the same way; with ``residual=False`` each layer is taken as it is (A'_l =
fuse(attn[l - 1])), for the methods that already contain the residual (alti, globenc,
value_zeroing; docs/mixing.md).

Max-flow needs integer capacities: each A'_l[i, j] is rounded to a multiple of 1 / FLOW_SCALE
(2**-24, about 6e-8). The source (L, u) sends at most 1 in total, so an edge of capacity under
half a unit carries nothing worth reporting and is dropped; a flow value differs from the one
with real capacities by at most (edges in its min cut) * 3e-8. The values returned are exact
max-flows of the rounded network: equal to networkx's Edmonds-Karp on the same integers.
How they are found fast (one scipy Dinic per input token on a sparse skeleton of the graph,
proved maximal by a cut) is told at :class:`_Network`. The graph has L * n * n edges; past
MAX_FLOW_EDGES, flow is refused (rollout still works).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

from attnviz.errors import AttnvizError

FUSIONS = ("mean", "max", "min")
FLOW_SCALE = 2 ** 24  # integer capacity units per unit of attention
MAX_FLOW_EDGES = 20_000_000  # layers * tokens**2: 1290 tokens over 12 layers
FLOW_BYTES_PER_EDGE = 32  # exact flow's memory per edge: the int64 capacities, the fused weights, the network's arrays

Progress = Callable[[float], None]


def fuse_heads(attn_layer: np.ndarray, how: str = "mean") -> np.ndarray:
    """One layer's heads ``[heads, queries, keys]`` fused into ``[queries, keys]`` (float64)
    by their mean, max or min."""
    if how not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, not {how!r}")
    a = np.asarray(attn_layer)
    if how == "mean":  # accumulated in float64 without a float64 copy of every head
        return a.mean(axis=0, dtype=np.float64)
    return (a.max if how == "max" else a.min)(axis=0).astype(np.float64)


def fuse_stream(heads, how: str = "mean") -> np.ndarray:
    """:func:`fuse_heads` of heads given one at a time (an iterable of equal-shape arrays),
    holding one running array (float64)."""
    if how not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, not {how!r}")
    out, count = None, 0
    for a in heads:
        a = np.asarray(a, dtype=np.float64)
        count += 1
        if out is None:
            out = a.copy()
        elif how == "mean":
            out += a
        else:
            (np.maximum if how == "max" else np.minimum)(out, a, out=out)
    if out is None:
        raise ValueError("no heads to fuse")
    return out / count if how == "mean" else out


def head_rows(attn, layer: int, head: int, queries) -> np.ndarray:
    """float32 ``[len(queries), keys]`` rows of one head of a stack: an array
    ``[layers, heads, queries, keys]`` or anything with a ``rows(layer, head, queries)`` method
    (attnviz.lazy.LazyStack, which computes only those rows)."""
    rows = getattr(attn, "rows", None)
    if rows is not None:
        return rows(layer, head, queries)
    return np.asarray(attn[layer, head][queries], dtype=np.float32)


ROLLOUT_ROWS = 512  # rows of a layer read at once by the streamed rollout


def rollout_bytes(n_heads: int, n: int, streamed: bool) -> int:
    """Working memory of :func:`rollout` over ``n`` tokens and ``n_heads`` heads, bytes: streamed
    (a ``source`` and no discarding) about five float64 blocks of ROLLOUT_ROWS rows (a head's
    rows, the fused rows, the residual added and normalised); else a layer's heads as float32
    and about six float64 ``[n, n]`` matrices (fused, the discarded copy and its ranking, the
    product). Reading a lazy stack's rows is not counted."""
    if streamed:
        return 5 * 8 * min(ROLLOUT_ROWS, n) * n
    return 4 * n_heads * n * n + 6 * 8 * n * n


def augmented_rows(attn, layer: int, queries: np.ndarray, fusion: str = "mean", residual: bool = True) -> np.ndarray:
    """Rows ``queries`` of A'_l = rownorm(0.5 * fuse(attn[layer]) + 0.5 * I) (or fuse(attn[layer])
    without ``residual``), float64 ``[len(queries), n]``, reading only those rows of each head."""
    fused = fuse_stream((head_rows(attn, layer, h, queries) for h in range(attn.shape[1])), fusion)
    if fused.shape[1] != attn.shape[2]:
        raise ValueError(f"rollout and flow need a square stack (queries = keys), got {tuple(attn.shape[2:])}")
    if not residual:
        return fused
    a = 0.5 * fused
    a[np.arange(len(queries)), queries] += 0.5
    return a / a.sum(axis=-1, keepdims=True)


def _rollout_step(attn, layer: int, r: np.ndarray, fusion: str, each=None, residual: bool = True) -> np.ndarray:
    """r A'_layer for a vector r ``[n]``, over the rows where r is not zero, a block at a time;
    ``each(rows, block_of_A')`` sees every block read."""
    out = np.zeros(attn.shape[-1])
    nonzero = np.flatnonzero(r)
    for start in range(0, len(nonzero), ROLLOUT_ROWS):
        rows = nonzero[start:start + ROLLOUT_ROWS]
        a = augmented_rows(attn, layer, rows, fusion, residual)
        if each is not None:
            each(rows, a)
        out += r[rows] @ a
    return out


def discard_lowest(fused: np.ndarray, ratio: float) -> np.ndarray:
    """Zero the lowest ``ratio`` of the entries of a fused ``[queries, keys]`` matrix, as
    vit-explain's ``discard_ratio`` does, except that the whole first-token column (attention
    to CLS, or to the first token of a text) is kept: vit-explain only protects CLS -> CLS, so
    the residual of a row that sent nearly everything to CLS could be all that was left of it.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError("discard_ratio must be in [0, 1)")
    out = fused.copy()
    rest = out[:, 1:]  # a view: every column but the first
    count = min(int(out.size * ratio), rest.size)
    if count:
        lowest = np.argpartition(rest, count - 1, axis=None)[:count]
        rest.flat[lowest] = 0.0
    return out


def augmented_layer(attn_layer: np.ndarray, fusion: str = "mean", discard_ratio: float = 0.0,
                    residual: bool = True) -> np.ndarray:
    """A'_l = rownorm(0.5 * fuse(attn_layer) + 0.5 * I) as float64 ``[n, n]`` (fuse(attn_layer)
    without ``residual``), the lowest ``discard_ratio`` of the fused weights zeroed first (see
    :func:`discard_lowest`)."""
    fused = fuse_heads(attn_layer, fusion)
    if fused.shape[0] != fused.shape[1]:
        raise ValueError(f"rollout and flow need a square stack (queries = keys), got {fused.shape}")
    if discard_ratio:
        fused = discard_lowest(fused, discard_ratio)
    return residual_augmented(fused) if residual else fused


def residual_augmented(matrix: np.ndarray) -> np.ndarray:
    """rownorm(0.5 * matrix + 0.5 * I) as float64, for one square matrix ``[n, n]`` or a stack
    ``[..., n, n]``: the residual stream added as half of every row, rows renormalised."""
    a = 0.5 * np.asarray(matrix, dtype=np.float64)
    diagonal = np.arange(a.shape[-1])
    a[..., diagonal, diagonal] += 0.5
    return a / a.sum(axis=-1, keepdims=True)


def rollout(attn: np.ndarray, fusion: str = "mean", discard_ratio: float = 0.0,
            source: int | None = None, layers: int | None = None, residual: bool = True,
            progress: Progress | None = None) -> np.ndarray:
    """Attention rollout of ``attn[layer, head, n, n]``: ``R[i, j]``, how much output token i
    draws on input token j (rows sum to 1). With ``source``, only row ``source`` (``[n]``),
    computed with vector-matrix products, which is what a long text needs. ``layers``: only
    the first that many layers (the rollout up to layer ``layers - 1``); None for all.
    ``residual=False``: the layers as they are (mixing matrices that contain the residual).
    ``progress(fraction)`` is called after each layer.

    Layers are fused one at a time from the top: R = (((I A'_L) A'_(L-1)) ... A'_1). With a
    ``source`` and no discarding, each layer is read a block of rows at a time (only the rows
    the source already draws on), so a lazy stack of any length works.
    """
    n = attn.shape[-1]
    n_layers = attn.shape[0] if layers is None else min(layers, attn.shape[0])
    streamed = source is not None and not discard_ratio
    r = np.eye(n) if source is None else np.eye(n)[source]
    for done, layer in enumerate(reversed(range(n_layers)), start=1):
        if streamed:
            r = _rollout_step(attn, layer, r, fusion, residual=residual)
        else:
            r = r @ augmented_layer(attn[layer], fusion, discard_ratio, residual)
        if progress is not None:
            progress(done / n_layers)
    return r


def last_layer_attention(attn: np.ndarray, source: int, fusion: str = "mean") -> np.ndarray:
    """Raw attention of output token ``source`` in the last layer, heads fused: ``[keys]``."""
    last = attn.shape[0] - 1
    return fuse_stream((head_rows(attn, last, h, [source])[0] for h in range(attn.shape[1])), fusion)


def rollout_spread(attn: np.ndarray, source: int, fusion: str = "mean", top_k: int = 5,
                   residual: bool = True, progress: Progress | None = None) -> np.ndarray:
    """How output token ``source`` spreads down the layers under rollout, strongest edges only.

    The source's share at layer L is r_L = e_source; passing layer l, the edge from token i
    (after layer l) to token j (before it) carries r_l[i] * A'_l[i, j], and r_(l-1) = r_l A'_l.
    Each layer's edges sum to 1. Returns the ``top_k`` strongest edges of every layer as a
    float64 array ``[edges, 4]`` of rows (layer l, i, j, share), layers from L down to 1.
    ``progress(fraction)`` is called after each layer.
    """
    r = np.eye(attn.shape[-1])[source]
    rows = []
    for layer in reversed(range(attn.shape[0])):
        found = []  # (share, i, j) of the strongest edges of each block

        def strongest(block_rows, a, r=r, found=found):
            share = r[block_rows, None] * a
            k = min(top_k, share.size)
            top = np.argpartition(share, share.size - k, axis=None)[-k:]
            i, j = np.unravel_index(top, share.shape)
            found.append(np.stack([share[i, j], block_rows[i], j], axis=1))

        r_next = _rollout_step(attn, layer, r, fusion, each=strongest, residual=residual)
        edges = np.concatenate(found)
        edges = edges[np.argsort(-edges[:, 0], kind="stable")[:top_k]]
        rows.append(np.stack([np.full(len(edges), layer + 1), edges[:, 1], edges[:, 2], edges[:, 0]], axis=1))
        r = r_next
        if progress is not None:
            progress(len(rows) / attn.shape[0])
    return np.concatenate(rows)


def flow_capacities(attn: np.ndarray, fusion: str = "mean") -> np.ndarray:
    """Integer capacities ``C[layer, i, j]`` = A'_(layer+1)[i, j] * FLOW_SCALE rounded (int64):
    ``C[l - 1]`` holds the edges (l, i) -> (l - 1, j)."""
    return np.stack([capacities(augmented_layer(a, fusion)) for a in attn])


def check_flow_size(layers: int, n: int) -> None:
    """Refuse a graph of more than MAX_FLOW_EDGES edges (layers * n * n) with one line."""
    if layers * n * n > MAX_FLOW_EDGES:
        raise AttnvizError(f"Exact attention flow over {n} tokens and {layers} layers is too big a graph "
                           f"({layers * n * n:,} edges, at most {MAX_FLOW_EDGES:,}); use rollout, or a shorter input.")


def attention_flow(attn: np.ndarray, source: int, fusion: str = "mean",
                   progress: Progress | None = None, residual: bool = True) -> np.ndarray:
    """Exact attention flow from output token ``source`` to every input token: ``[n]``
    float64 summing to 1 (see the module docstring). ``progress(fraction)`` is called as the
    input tokens are done."""
    check_flow_size(attn.shape[0], attn.shape[-1])
    return matrix_flow(np.stack([augmented_layer(a, fusion, residual=residual) for a in attn]), source, progress)


def matrix_flow(matrices: np.ndarray, source: int, progress: Progress | None = None) -> np.ndarray:
    """Exact flow from output token ``source`` to every input token through layers given as
    matrices ``[layers, n, n]`` (row i of layer l: how token i after layer l draws on the
    tokens before it, each row summing to at most 1), used as the capacities in place of
    A'_l: ``[n]`` float64 summing to 1 (all zero when nothing reaches the input)."""
    check_flow_size(matrices.shape[0], matrices.shape[-1])
    values = max_flow_values(capacities(matrices), source, progress)
    total = values.sum()
    return values / total if total else values.astype(np.float64)


def capacities(matrices: np.ndarray) -> np.ndarray:
    """Integer capacities ``rint(matrices * FLOW_SCALE)`` (int64)."""
    return np.rint(np.asarray(matrices, dtype=np.float64) * FLOW_SCALE).astype(np.int64)


def max_flow_values(capacities: np.ndarray, source: int, progress: Progress | None = None) -> np.ndarray:
    """Max-flow values (int64 ``[n]``) from node (L, source) to every input node (0, v) of the
    layered DAG whose edges (l, i) -> (l-1, j) have capacities ``capacities[l - 1, i, j]``.

    Each v is solved on a sparse skeleton of the graph first (see :class:`_Network`), grown
    only where the skeleton's min cut is not a cut of the whole graph, so the value is exact.
    """
    n_layers, n, _ = capacities.shape
    if not 0 <= source < n:
        raise ValueError(f"source must be a token index in [0, {n}), got {source}")
    if n_layers == 1:
        return capacities[0, source].copy()
    network = _Network(capacities, source)
    values = np.zeros(n, dtype=np.int64)
    for v in range(n):
        values[v] = network.max_flow(v)
        if progress is not None:
            progress((v + 1) / n)
    return values


class _Network:
    """The DAG of :func:`max_flow_values` for one source, solved with scipy's Dinic.

    Nodes: 0 is the source (L, source); then layers L-1 down to 1, n nodes each, in token
    order; last, the sink (0, v): the other input nodes have no way on and are left out.
    The edges from layer L-1 down to layer 1 are the "middle" ones.

    A dense graph (dinov2-small at 224 px: 660 000 middle edges) is slow to solve n times, but
    a flow needs few of its edges. The skeleton keeps, in the middle, each node's SKELETON_TOP
    strongest out- and in-edges, every out-edge of the SKELETON_HUBS nodes per layer that carry
    most of the source's attention (its rollout), and, per sink v, every edge into token v,
    along which flow gathers; the source's and the sink's edges are all kept. A flow in the
    skeleton is a flow in the graph, so its value is a lower bound, and it is the maximum when

    - it reaches min(source's out-capacity, sink's in-capacity), two cuts of the graph (on
      dinov2-small every v stops here, with 12 000 skeleton edges); or
    - the skeleton's min cut (the nodes the source still reaches in the residual graph) cuts
      no edge of the graph that the skeleton lacks. Otherwise those edges join and it is
      solved again, until that holds: the final cut and flow have equal values.
    """

    SKELETON_TOP = 2
    SKELETON_HUBS = 2

    def __init__(self, capacities: np.ndarray, source: int) -> None:
        self.caps, self.source = capacities, source
        n_layers, n, _ = capacities.shape
        self.n_nodes = (n_layers - 1) * n + 2
        self.sink = self.n_nodes - 1
        # middle[k] = C[l - 1] for layer l = L-1-k: edges (l, i) -> (l-1, j)
        self.middle = capacities[n_layers - 2:0:-1]
        self.first = 1 + n * np.arange(n_layers - 2)  # node of (l, token 0), same order
        skeleton = np.zeros(self.middle.shape, dtype=bool)
        reach = capacities[-1, source].astype(np.float64)  # source attention arriving at layer L-1
        for k, c in enumerate(self.middle):
            skeleton[k] = _strongest(c, self.SKELETON_TOP, axis=1) | _strongest(c, self.SKELETON_TOP, axis=0)
            skeleton[k, np.argsort(reach)[-self.SKELETON_HUBS:]] = True
            reach = reach @ (c / c.sum(axis=1, keepdims=True))
        self.skeleton = skeleton & (self.middle > 0)
        self.skeleton_edges = self._middle_edges(self.skeleton)
        self.bound = np.minimum(capacities[-1, source].sum(), capacities[0].sum(axis=0))

    def _middle_edges(self, keep: np.ndarray):
        """(rows, cols, capacities) of the middle edges where ``keep[k, i, j]``."""
        k, i, j = np.nonzero(keep)
        return self.first[k] + i, self.first[k] + self.caps.shape[1] + j, self.middle[k, i, j]

    def _graph(self, v: int, middle_edges) -> csr_matrix:
        """The CSR capacity matrix: the source's edges, ``middle_edges``, the sink's edges."""
        n = self.caps.shape[1]
        tokens = np.arange(n)
        rows, cols, data = _concat((np.zeros(n, np.int64), 1 + tokens, self.caps[-1, self.source]),
                                   middle_edges,
                                   (self.sink - n + tokens, np.full(n, self.sink), self.caps[0, :, v]))
        keep = data > 0
        return csr_matrix((data[keep].astype(np.int32), (rows[keep], cols[keep])), shape=(self.n_nodes,) * 2)

    def max_flow(self, v: int) -> int:
        """The exact max-flow value from the source to (0, v)."""
        n = self.caps.shape[1]
        k, i = np.nonzero((self.middle[:, :, v] > 0) & ~self.skeleton[:, :, v])  # edges into token v
        into_v = (self.first[k] + i, self.first[k] + n + v, self.middle[k, i, v])
        graph = self._graph(v, _concat(self.skeleton_edges, into_v))
        result = maximum_flow(graph, 0, self.sink)
        if result.flow_value >= self.bound[v]:
            return int(result.flow_value)
        keep = self.skeleton.copy()
        keep[:, :, v] = self.middle[:, :, v] > 0
        while True:
            residual = (graph - result.flow).tocsr()
            residual.data = (residual.data > 0).astype(np.int8)
            side = np.zeros(self.n_nodes, dtype=bool)
            side[breadth_first_order(residual, 0, return_predecessors=False)] = True
            tails = side[1:-1 - n].reshape(-1, n)  # [k, i]: (l, i) on the source side
            heads = side[1 + n:-1].reshape(-1, n)  # [k, j]: (l-1, j) on the source side
            missing = tails[:, :, None] & ~heads[:, None, :] & (self.middle > 0) & ~keep
            if not missing.any():
                return int(result.flow_value)
            keep |= missing
            graph = self._graph(v, self._middle_edges(keep))
            result = maximum_flow(graph, 0, self.sink)


def _concat(*parts):
    """Edge lists (rows, cols, capacities) joined into one."""
    return tuple(np.concatenate(x) for x in zip(*parts))


def _strongest(c: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Mask of the k largest entries of each row (axis=1) or column (axis=0); ties add more."""
    k = min(k, c.shape[axis])
    kth = np.take(np.partition(c, c.shape[axis] - k, axis=axis), [c.shape[axis] - k], axis=axis)
    return c >= kth
