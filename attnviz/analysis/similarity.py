"""How alike two heads' attention patterns are, and heads clustered by it.

The divergence of heads ``a`` and ``b`` on one input is the Jensen-Shannon divergence of
their rows for the same query, averaged over the queries::

    JS(p, q) = H((p + q) / 2) - (H(p) + H(q)) / 2      (entropies in bits, so 0 <= JS <= 1)
    D[a, b]  = mean over queries i of JS(attn_a[i, :], attn_b[i, :])

0 means the two heads attend identically; 1 means that every query of one head looks only
where the other's does not. Over several inputs, D is the mean of the inputs' matrices.
Inputs with more than ``max_queries`` queries are measured on that many evenly spaced
queries (every query of shorter inputs), so the cost stays bounded. Heads are numbered
``layer * n_heads + head`` (row-major), over every layer of one stack.

Clustering is average-linkage (UPGMA) on D with scipy's hierarchy and an optimal leaf order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform
from scipy.special import entr

from attnviz.analysis.roles import map_rows
from attnviz.result import AttentionResult

MAX_QUERIES = 256
WORK_BUDGET = 1e9  # pairs of heads x queries x keys that an interactive view computes at most
BLOCK_FLOATS = 8_000_000  # float32 values of all heads' rows held at once (32 MB)
LN2 = np.log(2.0)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits of distributions along the last axis (broadcast)."""
    m = (p + q) / 2
    h = entr(m).sum(-1) - (entr(p).sum(-1) + entr(q).sum(-1)) / 2
    return np.clip(h / LN2, 0.0, 1.0)


def query_sample(n_queries: int, max_queries: int = MAX_QUERIES) -> np.ndarray:
    """The queries measured: all of them, or ``max_queries`` evenly spaced ones."""
    if n_queries <= max_queries:
        return np.arange(n_queries)
    return np.unique(np.linspace(0, n_queries - 1, max_queries).round().astype(np.int64))


def queries_within(n_heads: int, n_keys: int, budget: float = WORK_BUDGET, most: int = MAX_QUERIES) -> int:
    """How many queries :func:`head_divergence` may measure for ``n_heads`` heads (all layers)
    over ``n_keys`` keys so that pairs x queries x keys stays within ``budget`` (at least 8)."""
    pairs = max(1, n_heads * (n_heads + 1) // 2)
    return int(max(8, min(most, budget // (pairs * max(n_keys, 1)))))


def head_divergence(result: AttentionResult, stack: str, max_queries: int = MAX_QUERIES,
                    progress: Callable[[float], None] | None = None) -> np.ndarray:
    """``D[a, b]``, float64 ``[layers * heads, layers * heads]``: the mean over queries of the
    JS divergence of heads ``a`` and ``b`` on ``result`` (see the module docstring). Rows of
    every head are read a block of queries at a time; ``progress(fraction)`` after each block."""
    n_layers, n_heads, n_q, n_k = result.shape(stack)
    n = n_layers * n_heads
    queries = query_sample(n_q, max_queries)
    block = max(1, BLOCK_FLOATS // (n * n_k))
    total = np.zeros((n, n))
    for s in range(0, len(queries), block):
        picked = queries[s:s + block]
        rows = np.stack([map_rows(result, stack, layer, head, picked)
                         for layer in range(n_layers) for head in range(n_heads)])  # [heads, rows, keys]
        own = entr(rows).sum(-1)  # [heads, rows], nats
        for a in range(n):
            mixed = entr((rows[a] + rows[a:]) / 2).sum(-1)  # [heads a.., rows]
            js = np.clip((mixed - (own[a] + own[a:]) / 2) / LN2, 0.0, 1.0).sum(-1)
            total[a, a:] += js
            total[a:, a] = total[a, a:]
        if progress is not None:
            progress(min(s + block, len(queries)) / len(queries))
    d = total / len(queries)
    np.fill_diagonal(d, 0.0)
    return d


def head_divergence_bytes(n_heads: int) -> int:
    """Working memory of :func:`head_divergence` over ``n_heads`` heads (every layer's), bytes:
    a block of every head's rows (BLOCK_FLOATS float32), the mixtures and entropy terms of one
    head against the rest (two more such blocks at most) and the float64 matrix. Reading the
    rows themselves is not counted."""
    return 3 * 4 * BLOCK_FLOATS + 8 * n_heads * n_heads


def cross_divergence(maps_a: np.ndarray, maps_b: np.ndarray) -> np.ndarray:
    """``D[a, b]`` between every head of one set and every head of another on the same
    queries and keys: ``maps_a[heads_a, query, key]``, ``maps_b[heads_b, query, key]`` (two
    models, checkpoints or inputs aligned on the same words) -> float64 ``[heads_a, heads_b]``,
    the mean over queries of the JS divergence."""
    a = np.asarray(maps_a, dtype=np.float32)
    b = np.asarray(maps_b, dtype=np.float32)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"the maps must share queries and keys: {a.shape[1:]} vs {b.shape[1:]}")
    return np.stack([js_divergence(a[i][None], b).mean(-1) for i in range(len(a))]).astype(np.float64)


def mean_divergence(results: Sequence[AttentionResult], stack: str, max_queries: int = MAX_QUERIES) -> np.ndarray:
    """:func:`head_divergence` averaged over several inputs to the same model."""
    if not results:
        raise ValueError("no results to compare heads on")
    shapes = {r.shape(stack)[:2] for r in results}
    if len(shapes) > 1:
        raise ValueError("every result must come from the same model (same layers and heads)")
    return np.mean([head_divergence(r, stack, max_queries) for r in results], axis=0)


@dataclass
class HeadClusters:
    """Heads clustered by divergence: ``linkage`` (scipy's ``[n - 1, 4]`` matrix) and
    ``order``, the heads (``layer * n_heads + head``) in dendrogram leaf order."""

    divergence: np.ndarray
    n_heads: int
    linkage: np.ndarray
    order: np.ndarray

    def name(self, index: int) -> str:
        layer, head = divmod(int(index), self.n_heads)
        return f"L{layer} H{head}"

    def tree_lines(self) -> list[tuple[list[float], list[float]]]:
        """The dendrogram as (x, y) polylines of 4 points each: x in leaf positions (leaf ``k``
        of ``order`` at x = k), y the divergence at which two clusters join."""
        if len(self.linkage) == 0:
            return []
        tree = hierarchy.dendrogram(self.linkage, no_plot=True)
        return [([(x - 5) / 10 for x in xs], list(ys)) for xs, ys in zip(tree["icoord"], tree["dcoord"])]

    def groups(self, n_groups: int) -> np.ndarray:
        """A group number 1..n_groups per head (cutting the tree into that many clusters)."""
        return hierarchy.fcluster(self.linkage, n_groups, criterion="maxclust")


def cluster_heads(divergence: np.ndarray, n_heads: int) -> HeadClusters:
    """Average-linkage clustering of the heads of a divergence matrix (see the module docstring)."""
    d = np.asarray(divergence, dtype=np.float64)
    if d.shape[0] < 2:
        return HeadClusters(d, n_heads, np.zeros((0, 4)), np.arange(d.shape[0]))
    condensed = squareform((d + d.T) / 2, checks=False)
    linkage = hierarchy.linkage(condensed, method="average", optimal_ordering=True)
    return HeadClusters(d, n_heads, linkage, hierarchy.leaves_list(linkage))


def similar_heads(divergence: np.ndarray, n_heads: int, layer: int, head: int, k: int = 10) -> list[tuple[int, int, float]]:
    """The ``k`` heads (any layer) closest to ``(layer, head)``, nearest first, as
    (layer, head, divergence); the head itself is left out."""
    a = layer * n_heads + head
    d = np.asarray(divergence)[a]
    order = [int(b) for b in np.argsort(d, kind="stable") if b != a][:k]
    return [(*divmod(b, n_heads), float(d[b])) for b in order]
