"""Attention rollout and exact attention flow (Abnar & Zuidema 2020), see shared/methods.md.

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

Max-flow needs integer capacities: each A'_l[i, j] is rounded to a multiple of 1 / FLOW_SCALE
(2**-24, about 6e-8). The source (L, u) sends at most 1 in total, so an edge of capacity under
half a unit carries nothing worth reporting and is dropped; a flow value differs from the one
with real capacities by at most (edges in its min cut) * 3e-8. The values returned are exact
max-flows of the rounded network: equal to networkx's Edmonds-Karp on the same integers.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_flow

FUSIONS = ("mean", "max", "min")
FLOW_SCALE = 2 ** 24  # integer capacity units per unit of attention

Progress = Callable[[float], None]


def fuse_heads(attn_layer: np.ndarray, how: str = "mean") -> np.ndarray:
    """One layer's heads ``[heads, queries, keys]`` fused into ``[queries, keys]`` (float64)
    by their mean, max or min."""
    if how not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, not {how!r}")
    a = np.asarray(attn_layer, dtype=np.float64)
    return {"mean": a.mean, "max": a.max, "min": a.min}[how](axis=0)


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


def augmented_layer(attn_layer: np.ndarray, fusion: str = "mean", discard_ratio: float = 0.0) -> np.ndarray:
    """A'_l = rownorm(0.5 * fuse(attn_layer) + 0.5 * I) as float64 ``[n, n]``, the lowest
    ``discard_ratio`` of the fused weights zeroed first (see :func:`discard_lowest`)."""
    fused = fuse_heads(attn_layer, fusion)
    if fused.shape[0] != fused.shape[1]:
        raise ValueError(f"rollout and flow need a square stack (queries = keys), got {fused.shape}")
    if discard_ratio:
        fused = discard_lowest(fused, discard_ratio)
    a = 0.5 * fused + 0.5 * np.eye(fused.shape[0])
    return a / a.sum(axis=-1, keepdims=True)


def rollout(attn: np.ndarray, fusion: str = "mean", discard_ratio: float = 0.0,
            source: int | None = None) -> np.ndarray:
    """Attention rollout of ``attn[layer, head, n, n]``: ``R[i, j]``, how much output token i
    draws on input token j (rows sum to 1). With ``source``, only row ``source`` (``[n]``),
    computed with vector-matrix products, which is what a long text needs.

    Layers are fused one at a time from the top: R = (((I A'_L) A'_(L-1)) ... A'_1).
    """
    n = attn.shape[-1]
    r = np.eye(n) if source is None else np.eye(n)[source]
    for layer in reversed(range(attn.shape[0])):
        r = r @ augmented_layer(attn[layer], fusion, discard_ratio)
    return r


def flow_capacities(attn: np.ndarray, fusion: str = "mean") -> np.ndarray:
    """Integer capacities ``C[layer, i, j]`` = A'_(layer+1)[i, j] * FLOW_SCALE rounded (int64):
    ``C[l - 1]`` holds the edges (l, i) -> (l - 1, j)."""
    return np.stack([np.rint(augmented_layer(a, fusion) * FLOW_SCALE).astype(np.int64) for a in attn])


def attention_flow(attn: np.ndarray, source: int, fusion: str = "mean",
                   progress: Progress | None = None) -> np.ndarray:
    """Exact attention flow from output token ``source`` to every input token: ``[n]``
    float64 summing to 1 (see the module docstring). ``progress(fraction)`` is called as the
    input tokens are done."""
    values = max_flow_values(flow_capacities(attn, fusion), source, progress)
    return values / values.sum()


def max_flow_values(capacities: np.ndarray, source: int, progress: Progress | None = None) -> np.ndarray:
    """Max-flow values (int64 ``[n]``) from node (L, source) to every input node (0, v) of the
    layered DAG whose edges (l, i) -> (l-1, j) have capacities ``capacities[l - 1, i, j]``."""
    n_layers, n, _ = capacities.shape
    if not 0 <= source < n:
        raise ValueError(f"source must be a token index in [0, {n}), got {source}")
    if n_layers == 1:
        return capacities[0, source].copy()
    graph = _LayeredGraph(capacities, source)
    values = np.zeros(n, dtype=np.int64)
    for v in range(n):
        values[v] = graph.max_flow_to(v)
        if progress is not None:
            progress((v + 1) / n)
    return values


class _LayeredGraph:
    """The DAG of :func:`max_flow_values` as one CSR matrix for scipy, built once per source.

    Nodes: 0 is the source (L, source); then layer L-1 down to layer 1, n nodes each, token
    order; last, the sink. Only node (0, v) of the input layer matters for the flow to v, so the
    input layer is replaced by the one sink and, per v, layer 1's rows get their one edge to it.
    """

    def __init__(self, capacities: np.ndarray, source: int) -> None:
        n_layers, n, _ = capacities.shape
        self.n, self.sink_caps = n, capacities[0]
        self.n_nodes = 1 + (n_layers - 1) * n + 1
        self.sink = self.n_nodes - 1
        first = lambda layer: 1 + (n_layers - 1 - layer) * n  # noqa: E731, node of (layer, 0)
        rows = [np.zeros(n, dtype=np.int64)]
        cols = [first(n_layers - 1) + np.arange(n)]
        data = [capacities[n_layers - 1, source]]
        for layer in range(n_layers - 1, 1, -1):
            i, j = np.nonzero(capacities[layer - 1])
            rows.append(first(layer) + i)
            cols.append(first(layer - 1) + j)
            data.append(capacities[layer - 1, i, j])
        rows, cols, data = (np.concatenate(x) for x in (rows, cols, data))
        keep = data > 0
        base = csr_matrix((data[keep].astype(np.int32), (rows[keep], cols[keep])), shape=(self.n_nodes,) * 2)
        self.layer1 = first(1)
        self.indptr = base.indptr[: self.layer1 + 1]  # rows of the source and layers L-1..2
        self.indices, self.data = base.indices, base.data

    def max_flow_to(self, v: int) -> int:
        caps = self.sink_caps[:, v]
        has_edge = caps > 0
        indptr = np.concatenate([self.indptr, self.indptr[-1] + np.cumsum(has_edge), [self.indptr[-1] + has_edge.sum()]])
        indices = np.concatenate([self.indices, np.full(has_edge.sum(), self.sink, dtype=self.indices.dtype)])
        data = np.concatenate([self.data, caps[has_edge].astype(np.int32)])
        graph = csr_matrix((data, indices, indptr), shape=(self.n_nodes,) * 2)
        return int(maximum_flow(graph, 0, self.sink).flow_value)
