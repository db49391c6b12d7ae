"""Per-head statistics of an AttentionResult: how broad, how far, how local, how sunk.

Definitions: docs/methods.md, "Per-head statistics". For a stack ``attn[layer, head, query, key]`` (rows sum
to 1) every statistic is one number per (layer, head), an average over the queries:

- ``entropy``: H_i = -sum_j a_ij log a_ij in nats, the mean over all queries.
- ``entropy_norm``: H_i / log(n_keys of row i), the mean over the rows that have at least two
  keys. A causal row i sees i + 1 keys (so row 0 is skipped); other rows see every key.
- ``sink_mass``: the share of attention that goes to special keys ([CLS], [SEP], BOS, image
  prefix tokens such as CLS and registers), the mean over the content (non-special) queries.
- ``mean_distance``: sum_j a_ij d(i, j) with special tokens excluded both as queries and as keys
  and each row's remaining weights renormalised to sum to 1 (their mass is ``sink_mass``). For
  text d is |i - j| in tokens; for images the Euclidean distance between the two patches'
  centres on the grid times the patch size, in pixels (the ViT paper's measure).
- ``local_share``: the share of the renormalised content attention that stays within ``window``
  of the query: |i - j| <= window tokens for text, for images the patches at most ``window``
  patches away along both rows and columns (a (2w+1) x (2w+1) square).
- ``distance_ratio``: mean_distance / uniform_distance, where uniform_distance is the mean
  distance a head that spread its content attention evenly over the keys it can see would
  have. About 1 means global, near 0 means local; it compares inputs of different lengths.

The cross stack (target queries over source keys) has no shared positions: its distance, local
share and ratio are NaN. Work is done one head and one block of query rows at a time in float32
(AttentionResult.attention), so memory does not grow with the square of the length.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
from scipy.special import entr

from attnviz.result import AttentionResult

CLASSES = ("local", "mixed", "global")
LOCAL_MIN = 0.5  # a head is local when at least this share of its attention stays in the window
GLOBAL_MIN = 0.75  # ...and global when its distance is at least this share of a uniform head's
ARRAY_FIELDS = ("entropy", "entropy_norm", "sink_mass", "mean_distance", "local_share", "distance_ratio")


@dataclass
class HeadStats:
    """Statistics of one stack, each array ``[layers, heads]`` (see the module docstring).

    distance_unit: "tokens" (text) or "px" (images); window: the local window, in
    ``window_unit`` ("tokens" or "patches"); uniform_distance: the mean distance of a head
    that spreads evenly, in ``distance_unit``.
    """

    stack: str
    kind: str
    distance_unit: str
    window: int
    window_unit: str
    uniform_distance: float
    entropy: np.ndarray
    entropy_norm: np.ndarray
    sink_mass: np.ndarray
    mean_distance: np.ndarray
    local_share: np.ndarray
    distance_ratio: np.ndarray

    @property
    def n_layers(self) -> int:
        return self.entropy.shape[0]

    @property
    def n_heads(self) -> int:
        return self.entropy.shape[1]

    def classes(self, local_min: float = LOCAL_MIN, global_min: float = GLOBAL_MIN) -> np.ndarray:
        """``[layers, heads]`` strings: "local" when local_share >= local_min, else "global"
        when distance_ratio >= global_min, else "mixed"; "n/a" where there are no distances."""
        out = np.full(self.entropy.shape, "mixed", dtype=object)
        out[self.distance_ratio >= global_min] = "global"
        out[self.local_share >= local_min] = "local"
        out[np.isnan(self.distance_ratio)] = "n/a"
        return out

    def to_json(self, local_min: float = LOCAL_MIN, global_min: float = GLOBAL_MIN) -> dict:
        """Plain JSON values: nested lists [layer][head], NaN written as None."""
        out = {
            "stack": self.stack, "kind": self.kind, "layers": self.n_layers, "heads": self.n_heads,
            "distance_unit": self.distance_unit, "window": self.window, "window_unit": self.window_unit,
            "uniform_distance": _plain(self.uniform_distance),
            "local_min": local_min, "global_min": global_min,
        }
        for name in ARRAY_FIELDS:
            out[name] = [[_plain(v) for v in row] for row in getattr(self, name)]
        out["classes"] = self.classes(local_min, global_min).tolist()
        return out


@dataclass
class StatsSpread:
    """Statistics averaged over ``n`` inputs: ``mean`` and ``std`` (population standard
    deviation over the inputs) of every array, NaNs ignored."""

    mean: HeadStats
    std: HeadStats
    n: int


def _plain(v: float):
    v = float(v)
    return None if np.isnan(v) else v


def _geometry(result: AttentionResult, stack: str, q_idx: np.ndarray, k_idx: np.ndarray, window: int):
    """Distances ``[content queries, content keys]`` (float32) and the window mask, with units.

    Returns (distance, near, distance_unit, window_unit); distance is None for the cross stack.
    """
    if result.kind == "image":
        grid = result.grid
        if np.any(q_idx < grid.prefix) or np.any(k_idx < grid.prefix):
            raise ValueError("an image's content tokens must come after its prefix tokens")
        cells = np.stack(np.divmod(np.arange(grid.n_patches), grid.cols), axis=1)  # (row, col)
        q, k = cells[q_idx - grid.prefix], cells[k_idx - grid.prefix]
        step = q[:, None, :] - k[None, :, :]
        distance = np.sqrt((step ** 2).sum(-1)) * grid.patch_px
        near = np.abs(step).max(-1) <= window
        return distance.astype(np.float32), near, "px", "patches"
    if stack == "cross":
        return None, None, "tokens", "tokens"
    distance = np.abs(q_idx[:, None] - k_idx[None, :])
    return distance.astype(np.float32), distance <= window, "tokens", "tokens"


STATS_ROWS = 1024  # query rows read at once


def head_stats_bytes(n_queries: int, n_keys: int) -> int:
    """Working memory of :func:`head_stats` on a stack of ``n_queries`` x ``n_keys``, bytes: the
    distances (float32) and the window mask (bool) of every query and key, kept for the whole
    run, and the temporaries of one block of STATS_ROWS rows (the rows, their entropy terms and
    the content rows, about eight float32 blocks). Not counted: reading the rows themselves
    (a lazy stack's working memory, attnviz.lazy.READ_BYTES)."""
    return 5 * n_queries * n_keys + 8 * 4 * min(STATS_ROWS, n_queries) * n_keys


def head_stats(result: AttentionResult, stack: str = "encoder", window: int = 2,
               progress: Callable[[float], None] | None = None) -> HeadStats:
    """Per-head statistics of ``result.attn[stack]`` (see the module docstring). Each head is
    read STATS_ROWS query rows at a time (AttentionResult.attention), so a lazy stack of any
    length works; ``progress(fraction)`` is called after each layer."""
    if stack not in result.attn:
        raise ValueError(f"{result.model} has no {stack!r} stack; it has {result.stacks}")
    if window < 0:
        raise ValueError("window must be >= 0")
    n_layers, n_heads, n_q, n_k = result.attn[stack].shape
    causal = result.is_causal(stack)
    content_q = ~np.asarray(result.query_special(stack), dtype=bool)[:n_q]
    k_idx = np.flatnonzero(~np.asarray(result.key_special(stack), dtype=bool)[:n_k])
    k_special = np.flatnonzero(np.asarray(result.key_special(stack), dtype=bool)[:n_k])
    _, _, distance_unit, window_unit = _geometry(result, stack, np.flatnonzero(content_q)[:1], k_idx[:1], window)

    # log(number of keys) per query row; rows with a single key have no breadth to measure
    n_keys = np.arange(1, n_q + 1) if causal else np.full(n_q, n_k)
    has_breadth = n_keys > 1
    log_keys = np.where(has_breadth, np.log(np.maximum(n_keys, 1)), 1.0).astype(np.float32)

    blocks = []  # (query rows, content rows within them, content query indices, distance, near)
    uniform_sum, uniform_count = 0.0, 0
    for start in range(0, n_q, STATS_ROWS):
        rows = np.arange(start, min(start + STATS_ROWS, n_q))
        content = np.flatnonzero(content_q[rows])
        q_idx = rows[content]
        distance, near, _, _ = _geometry(result, stack, q_idx, k_idx, window)
        if distance is not None and q_idx.size:
            visible = k_idx[None, :] <= q_idx[:, None] if causal else np.ones(distance.shape, bool)
            per_query = (distance * visible).sum(-1) / np.maximum(visible.sum(-1), 1)
            uniform_sum, uniform_count = uniform_sum + float(per_query.sum()), uniform_count + per_query.size
        blocks.append((rows, content, distance, near))
    uniform_distance = uniform_sum / uniform_count if uniform_count and blocks[0][2] is not None else np.nan

    out = {name: np.full((n_layers, n_heads), np.nan) for name in ARRAY_FIELDS}
    for layer in range(n_layers):
        for head in range(n_heads):
            entropy = np.zeros(n_q)  # per query row, nats
            sink, row_distance, row_local = [], [], []
            for rows, content, distance, near in blocks:
                a = result.attention(layer, head, stack, rows)  # [rows, keys]
                entropy[rows] = entr(a).sum(-1)
                if content.size == 0:
                    continue
                c = a[content]  # [content queries, keys]
                sink.append(c[:, k_special].sum(-1))
                if distance is None or k_idx.size == 0:
                    continue
                kept = c[:, k_idx]  # [content queries, content keys]
                kept_sum = kept.sum(-1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    row_distance.append(np.where(kept_sum > 0, (kept * distance).sum(-1) / kept_sum, np.nan))
                    row_local.append(np.where(kept_sum > 0, (kept * near).sum(-1) / kept_sum, np.nan))
            out["entropy"][layer, head] = entropy.mean()
            if has_breadth.any():
                out["entropy_norm"][layer, head] = (entropy[has_breadth] / log_keys[has_breadth]).mean()
            if sink:
                out["sink_mass"][layer, head] = np.concatenate(sink).mean()
            if row_distance:
                out["mean_distance"][layer, head] = _nanmean(np.concatenate(row_distance))
                out["local_share"][layer, head] = _nanmean(np.concatenate(row_local))
        if progress is not None:
            progress((layer + 1) / n_layers)
    if uniform_distance > 0:
        out["distance_ratio"] = out["mean_distance"] / uniform_distance
    return HeadStats(stack=stack, kind=result.kind, distance_unit=distance_unit, window=window,
                     window_unit=window_unit, uniform_distance=uniform_distance, **out)


def _nanmean(rows: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN (without a warning) where a row is all NaN."""
    count = (~np.isnan(rows)).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.nansum(rows, -1) / count, np.nan)


def average_stats(stats: Sequence[HeadStats]) -> StatsSpread:
    """Mean and spread of per-head statistics over several inputs to the same model and stack."""
    if not stats:
        raise ValueError("no statistics to average")
    first = stats[0]
    for s in stats[1:]:
        if (s.stack, s.kind, s.window, s.entropy.shape) != (first.stack, first.kind, first.window, first.entropy.shape):
            raise ValueError("can only average statistics of the same model, stack and window")
    mean, std = {}, {}
    for name in ARRAY_FIELDS + ("uniform_distance",):
        values = np.moveaxis(np.array([getattr(s, name) for s in stats], dtype=np.float64), 0, -1)
        mean[name] = _nanmean(values)  # values: [..., inputs]
        std[name] = np.sqrt(_nanmean((values - mean[name][..., None]) ** 2))
    for spread in (mean, std):
        spread["uniform_distance"] = float(spread["uniform_distance"])
    return StatsSpread(mean=replace(first, **mean), std=replace(first, **std), n=len(stats))
