"""Information-flow routes (after Ferrando & Voita 2024): the edges of the token x layer graph
that carry at least a threshold of a node's input, followed down from the output. Pure numpy;
the definitions are in docs/routes.md.

The input is one context-mixing matrix per layer, ``matrices[l, i, j]`` ``[L, N, N]``: how much
token i's output of (0-based) layer l takes from token j of that layer's input, rows summing
to 1. Each is first turned into the matrix the routes follow, ``M'[l]``:

- alti, globenc, value_zeroing: the matrix as it is (its diagonal already holds the residual);
- attention, attention_norm: ``rownorm(0.5 * M + 0.5 * I)``, as their rollout is.

Nodes are ``(layer, token)`` for layers 0..L (0: the input embeddings; l: the output of model
layer l, 1-based). The edge from ``[l, j]`` to ``[l + 1, i]`` (l = 0..L-1) has weight
``M'[l, i, j]``. The output is a set of rows of layer L (a decoder's predicted position, CLS,
or every token for a mean-pooled embedding), read as their mean.

- An edge is **kept** when its weight is at least the threshold and its target is reachable
  from the output through kept edges; a node is kept when it is an output or the source of a
  kept edge.
- A node's **share** is the rollout of the full matrices from the output down to it:
  ``s_L = mix`` (1 / k on each of the k output rows), ``s_l = s_(l+1) M'[l]``.
- The **routed share** of an input token is the same rollout over the kept edges only
  (every other weight set to 0): how much of the output reaches it along the kept routes.
  It sums to at most 1; the rest went through edges under the threshold.

The walk goes from the output down, a layer at a time, over the reachable rows only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnviz.analysis.mixing import METHODS, layers_of
from attnviz.errors import AttnvizError

DEFAULT_FRACTION = 0.05  # the default threshold keeps about this share of the L x N x N edges
MAX_EDGES = 8_000_000  # L x N x N at most (30 layers at 516 tokens): 64 MB of float64 matrices


@dataclass(frozen=True)
class Routes:
    """The routes from one output, as defined in the module docstring.

    method, threshold: what was followed, and from what weight on an edge is kept.
    outputs: the output rows (int ``[k]``, sorted). shares: float64 ``[L + 1, N]``, the
    rollout share of every node (``shares[L]`` is the output's mix; ``shares[0]`` the
    rollout over the input tokens). kept_nodes: bool ``[L + 1, N]``. edges: int ``[E, 3]``
    rows ``(l, i, j)``, the kept edge from ``[l, j]`` to ``[l + 1, i]``, sorted by l, i, j.
    weights: float64 ``[E]``, ``M'[l, i, j]``. heads: float64 ``[E, H]``, each head's own
    contribution to the edge (they need not add up to its weight), or None when the method
    has no per-head values. routed: float64 ``[N]``, the routed share of each input token.
    """

    method: str
    threshold: float
    outputs: np.ndarray
    shares: np.ndarray
    kept_nodes: np.ndarray
    edges: np.ndarray
    weights: np.ndarray
    heads: np.ndarray | None
    routed: np.ndarray

    @property
    def n_layers(self) -> int:
        return self.shares.shape[0] - 1

    @property
    def n_tokens(self) -> int:
        return self.shares.shape[1]

    def idle_tokens(self) -> np.ndarray:
        """bool ``[N]``: tokens with no kept node at any layer (no kept edge touches them and
        they are not an output), which a drawing can collapse."""
        return ~self.kept_nodes.any(axis=0)


def layer_matrices(matrices: np.ndarray, method: str) -> np.ndarray:
    """The matrices the routes follow, ``M'`` float64 ``[L, N, N]``, from a method's per-layer
    mixing matrices (checked: a stack of square matrices of finite, non-negative weights),
    as attnviz.analysis.mixing.layers_of takes them for rollout and flow."""
    if method not in METHODS:
        raise AttnvizError(f"Routes follow one of {', '.join(METHODS)}, not {method!r}.")
    m = np.asarray(matrices)
    if m.ndim != 3 or m.shape[1] != m.shape[2] or m.shape[0] == 0:
        raise AttnvizError(f"Routes need one square matrix per layer [layers, tokens, tokens], not {m.shape}.")
    if m.size > MAX_EDGES:
        raise AttnvizError(f"Routes over {m.shape[1]} tokens and {m.shape[0]} layers are too big a graph "
                           f"({m.size:,} edges, at most {MAX_EDGES:,}); use a shorter input.")
    if not np.isfinite(m).all() or (m < 0).any():
        raise AttnvizError(f"The {method} matrices hold negative or non-finite weights.")
    return layers_of(m, method)


def output_rows(outputs, n: int) -> np.ndarray:
    """Output rows checked: one token index or several (distinct), each in ``0..n-1``;
    sorted int ``[k]``."""
    rows = np.atleast_1d(np.asarray(outputs))
    if rows.ndim != 1 or len(rows) == 0 or rows.dtype.kind not in "iu":
        raise AttnvizError("The output is one token index or a list of them.")
    outside = rows[(rows < 0) | (rows >= n)]
    if len(outside):
        raise AttnvizError(f"Output token {int(outside[0])} is out of range: there are {n} tokens (0..{n - 1}).")
    if len(np.unique(rows)) != len(rows):
        raise AttnvizError("The output rows repeat a token.")
    return np.sort(rows).astype(np.int64)


def check_threshold(threshold: float) -> float:
    """The threshold as a float in (0, 1] (weights are shares of a row that sums to 1; a weight
    of 0 carries nothing), or one clear message."""
    t = float(threshold)
    if not 0.0 < t <= 1.0:
        raise AttnvizError(f"The threshold is a weight in (0, 1], not {threshold}.")
    return t


def kept_count(m: np.ndarray, outputs: np.ndarray, threshold: float) -> int:
    """How many edges the routes of ``M'`` (``[L, N, N]``) from ``outputs`` keep at
    ``threshold``; it can only fall as the threshold rises."""
    reach = np.zeros(m.shape[-1], dtype=bool)
    reach[outputs] = True
    count = 0
    for layer in reversed(range(m.shape[0])):
        keep = m[layer, reach] >= threshold
        count += int(keep.sum())
        reach = keep.any(axis=0)
    return count


def default_threshold(m: np.ndarray, outputs: np.ndarray, fraction: float = DEFAULT_FRACTION,
                      max_edges: int | None = None) -> float:
    """The threshold the routes of ``M'`` (``[L, N, N]``) from ``outputs`` start at: the
    largest edge weight that keeps at least ``fraction`` of the L x N x N edges (the smallest
    positive weight when none keeps that many); when that keeps more than ``max_edges``, the
    smallest weight that keeps at most ``max_edges``. Found by bisection over the sorted
    weights, since the count only falls as the threshold rises."""
    values = np.unique(m[m > 0])
    if len(values) == 0:
        raise AttnvizError("Every weight is 0: there is no route to follow.")
    at = max(last_keeping(m, outputs, values, max(1, round(fraction * m.size))), 0)
    if max_edges is not None and kept_count(m, outputs, values[at]) > max_edges:
        at = min(last_keeping(m, outputs, values, max_edges + 1) + 1, len(values) - 1)
    return float(values[at])


def last_keeping(m: np.ndarray, outputs: np.ndarray, values: np.ndarray, count: int) -> int:
    """The largest index i of the sorted ``values`` whose threshold keeps at least ``count``
    edges, or -1 when none does."""
    lo, hi = -1, len(values) - 1  # the answer is in lo..hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if kept_count(m, outputs, values[mid]) >= count:
            lo = mid
        else:
            hi = mid - 1
    return lo


def routes(matrices: np.ndarray, method: str, outputs, *, threshold: float | None = None,
           heads: np.ndarray | None = None, fraction: float = DEFAULT_FRACTION,
           max_edges: int | None = None) -> Routes:
    """The routes of a method's per-layer mixing ``matrices`` ``[L, N, N]`` from ``outputs``
    (one token index, or several read as their mean) at ``threshold`` (by default
    :func:`default_threshold` with ``fraction`` and ``max_edges``).

    ``heads``: the per-head contributions ``[L, H, N, N]`` (ALTI's, or attention x value norm),
    or None when the method has none; only the kept edges' entries are read, a layer at a
    time, so a lazily computed array works as well as a dense one.
    """
    m = layer_matrices(matrices, method)
    n_layers, n, _ = m.shape
    rows = output_rows(outputs, n)
    if heads is not None and (len(heads.shape) != 4 or heads.shape[0] != n_layers or tuple(heads.shape[2:]) != (n, n)):
        raise AttnvizError(f"Per-head contributions must be [layers, heads, tokens, tokens] = "
                           f"[{n_layers}, H, {n}, {n}], not {list(heads.shape)}.")
    threshold = default_threshold(m, rows, fraction, max_edges) if threshold is None else check_threshold(threshold)

    shares = np.empty((n_layers + 1, n))
    shares[n_layers] = 0.0
    shares[n_layers, rows] = 1.0 / len(rows)
    for layer in reversed(range(n_layers)):
        shares[layer] = shares[layer + 1] @ m[layer]

    kept_nodes = np.zeros((n_layers + 1, n), dtype=bool)
    kept_nodes[n_layers, rows] = True
    routed = shares[n_layers].copy()
    found = []  # (edges [e, 3], weights [e], heads [e, H] or None) of each layer, from the top
    for layer in reversed(range(n_layers)):
        targets = np.flatnonzero(kept_nodes[layer + 1])
        block = m[layer, targets]
        keep = block >= threshold
        ii, jj = np.nonzero(keep)
        i = targets[ii]
        kept_nodes[layer] = keep.any(axis=0)
        routed = routed[targets] @ np.where(keep, block, 0.0)
        per_head = None if heads is None else np.asarray(heads[layer])[:, i, jj].T.astype(np.float64)
        found.append((np.stack([np.full(len(i), layer), i, jj], axis=1), block[ii, jj], per_head))
    found.reverse()
    return Routes(method=method, threshold=threshold, outputs=rows, shares=shares, kept_nodes=kept_nodes,
                  edges=np.concatenate([f[0] for f in found]).astype(np.int64),
                  weights=np.concatenate([f[1] for f in found]),
                  heads=None if heads is None else np.concatenate([f[2] for f in found]),
                  routed=routed)


def routes_json(r: Routes, tokens: list[str], output: dict | None = None) -> dict:
    """The routes as ``{"method", "threshold", "output", "tokens", "nodes", "edges"}``:
    ``output`` is ``{"rows": [...], "pooled": bool}`` plus what ``output`` describes (as
    explain's output); ``nodes`` the kept nodes ``{"layer", "token", "share"}`` by layer and
    token; ``edges`` the kept edges ``{"from": [l, j], "to": [l + 1, i], "weight", "heads"}``,
    ``heads`` mapping each head's index (a string) to its contribution, empty when the method
    has no per-head values."""
    if len(tokens) != r.n_tokens:
        raise AttnvizError(f"{len(tokens)} tokens for routes over {r.n_tokens}.")
    layers, tokens_at = np.nonzero(r.kept_nodes)
    nodes = [{"layer": int(l), "token": int(t), "share": float(r.shares[l, t])} for l, t in zip(layers, tokens_at)]
    names = [] if r.heads is None else [str(h) for h in range(r.heads.shape[1])]
    edges = []
    for e, (l, i, j) in enumerate(r.edges.tolist()):
        heads = {} if r.heads is None else dict(zip(names, r.heads[e].tolist()))
        edges.append({"from": [l, j], "to": [l + 1, i], "weight": float(r.weights[e]), "heads": heads})
    rows = [int(x) for x in r.outputs]
    return {"method": r.method, "threshold": r.threshold,
            "output": {"rows": rows, "pooled": len(rows) > 1, **(output or {})},
            "tokens": list(tokens), "nodes": nodes, "edges": edges}
