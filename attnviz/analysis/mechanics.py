"""How attention is computed, one step at a time, in plain numpy (the mechanics lab).

Shapes: ``q [queries, d_k]``, ``k [keys, d_k]``, ``v [keys, d_v]``; scores and weights
``[queries, keys]`` (row i: query i over every key); the output ``[queries, d_v]``. Queries and
keys from the same sequence give self-attention; queries from another sequence give
encoder-decoder (cross) attention, with the same code.

The steps (docs/methods.md, "Attention itself"):

1. scores: ``q k^T`` (dot), ``q k^T / sqrt(d_k)`` (scaled, Vaswani et al. 2017) or
   ``v^T tanh(W_q q + W_k k)`` (additive, Bahdanau et al. 2015);
2. temperature: scores / tau (tau < 1 sharpens, tau > 1 flattens);
3. mask: keys outside a local window ``|i - j| <= w`` get -inf (global attention keeps all);
4. softmax over the keys of each row, then optionally hard selection (argmax one-hot, or the
   top k weights renormalised to sum to 1);
5. output: the weighted sum of the values, ``weights v``.

Breadth is the entropy of a row in nats, ``H_i = -sum_j a_ij log a_ij``; normalised by
log(number of keys the row may see) it is 1 for uniform weights and 0 for one key.

The cost formulas count what each variant computes and keeps, for one head of dimension d on
a sequence of n tokens in float32: see :func:`cost_formula`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import entr

SCORES = ("dot", "scaled", "additive")
SELECTIONS = ("soft", "hard", "top-k")
COST_METHODS = ("global", "local", "top-k")
FLOAT_BYTES = 4


# -- step 1: scores -----------------------------------------------------------------------
def dot_scores(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``q k^T``: [queries, keys]."""
    return q @ k.T


def scaled_scores(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``q k^T / sqrt(d_k)``: [queries, keys]; keeps the scores' spread independent of d_k."""
    return q @ k.T / np.sqrt(q.shape[-1])


@dataclass(frozen=True)
class Additive:
    """Parameters of additive attention: ``w_q [d_a, d_q]``, ``w_k [d_a, d_k]``, ``v [d_a]``.
    In Bahdanau's model they are learned; the lab draws them at random from a seed."""

    w_q: np.ndarray
    w_k: np.ndarray
    v: np.ndarray

    @classmethod
    def random(cls, d_q: int, d_k: int, d_a: int, seed: int) -> "Additive":
        rng = np.random.default_rng(seed)
        return cls(w_q=rng.normal(0, 1 / np.sqrt(d_q), (d_a, d_q)),
                   w_k=rng.normal(0, 1 / np.sqrt(d_k), (d_a, d_k)),
                   v=rng.normal(0, 1 / np.sqrt(d_a), d_a))


def additive_scores(q: np.ndarray, k: np.ndarray, p: Additive) -> np.ndarray:
    """``score[i, j] = v^T tanh(W_q q_i + W_k k_j)``: [queries, keys]."""
    hidden = np.tanh((q @ p.w_q.T)[:, None, :] + (k @ p.w_k.T)[None, :, :])  # [q, k, d_a]
    return hidden @ p.v


# -- step 3: masks ------------------------------------------------------------------------
def window_mask(n_queries: int, n_keys: int, window: int | None) -> np.ndarray:
    """Boolean [queries, keys]: True where key j may be seen by query i.

    ``window=None`` is global attention (every key); otherwise local attention keeps the keys
    with ``|i - j| <= window``, 2 * window + 1 keys away from the ends.
    """
    if window is None:
        return np.ones((n_queries, n_keys), dtype=bool)
    if window < 0:
        raise ValueError("window must be >= 0")
    i, j = np.arange(n_queries)[:, None], np.arange(n_keys)[None, :]
    return np.abs(i - j) <= window


def apply_mask(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Scores with -inf where ``mask`` is False, so softmax gives those keys weight 0."""
    return np.where(mask, scores, -np.inf)


# -- step 4: softmax and selection --------------------------------------------------------
def softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (keys); -inf scores get 0, an all -inf row is all 0."""
    top = np.max(scores, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.exp(scores - top)
    total = e.sum(axis=-1, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)


def hard(weights: np.ndarray) -> np.ndarray:
    """Hard attention: a one-hot row at each row's largest weight (the first one on ties)."""
    out = np.zeros_like(weights)
    np.put_along_axis(out, weights.argmax(axis=-1)[..., None], 1.0, axis=-1)
    return out * (weights.sum(axis=-1, keepdims=True) > 0)


def top_k(weights: np.ndarray, k: int) -> np.ndarray:
    """Keep each row's ``k`` largest weights (the first ones on ties), renormalised to sum to 1."""
    if k < 1:
        raise ValueError("k must be >= 1")
    order = np.argsort(-weights, axis=-1, kind="stable")[..., :k]
    kept = np.zeros_like(weights)
    np.put_along_axis(kept, order, np.take_along_axis(weights, order, axis=-1), axis=-1)
    total = kept.sum(axis=-1, keepdims=True)
    return np.divide(kept, total, out=np.zeros_like(kept), where=total > 0)


def entropy(weights: np.ndarray) -> np.ndarray:
    """Entropy of every row in nats, ``-sum_j a_ij log a_ij`` (0 log 0 = 0): [..., queries]."""
    return entr(weights).sum(axis=-1)


def normalised_entropy(weights: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row entropy / log(keys the row may see): 1 = uniform, 0 = one key; 0 for one-key rows."""
    n_keys = mask.sum(axis=-1)
    log_keys = np.log(np.maximum(n_keys, 1))
    return np.divide(entropy(weights), log_keys, out=np.zeros(weights.shape[:-1]), where=n_keys > 1)


# -- one head, every step -----------------------------------------------------------------
@dataclass
class Steps:
    """Every intermediate of one attention computation ([queries, keys] unless noted).

    scores: step 1; scaled: divided by the temperature (and by sqrt(d_k) for "scaled");
    masked: -inf outside the mask; soft: softmax; weights: after the selection (equal to
    soft for "soft"); output [queries, d_v]: weights v; entropy [queries]: nats of weights;
    entropy_norm [queries]: entropy / log(keys seen); mask: boolean, the keys each row sees.
    """

    scores: np.ndarray
    scaled: np.ndarray
    masked: np.ndarray
    soft: np.ndarray
    weights: np.ndarray
    output: np.ndarray
    entropy: np.ndarray
    entropy_norm: np.ndarray
    mask: np.ndarray


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, score: str = "scaled",
              additive: Additive | None = None, window: int | None = None,
              temperature: float = 1.0, selection: str = "soft", top: int = 2) -> Steps:
    """Attention of queries ``q`` over keys ``k`` and values ``v``, keeping every step.

    score: one of SCORES ("additive" needs ``additive``); window: None for global, else the
    local window half-width w; temperature tau > 0 divides the scores; selection: one of
    SELECTIONS, with ``top`` = k for "top-k".
    """
    if q.ndim != 2 or k.ndim != 2 or v.ndim != 2:
        raise ValueError("q, k and v must be matrices [rows, dimensions]")
    if k.shape[0] != v.shape[0]:
        raise ValueError(f"k and v need one row per key: {k.shape[0]} != {v.shape[0]}")
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    if score == "additive":
        if additive is None:
            raise ValueError("additive scores need their parameters (W_q, W_k, v)")
        scores = additive_scores(q, k, additive)
        scaled = scores / temperature
    elif score in ("dot", "scaled"):
        if q.shape[1] != k.shape[1]:
            raise ValueError(f"q and k need the same width for dot products: {q.shape[1]} != {k.shape[1]}")
        scores = dot_scores(q, k)
        scaled = scores / (np.sqrt(q.shape[1]) if score == "scaled" else 1.0) / temperature
    else:
        raise ValueError(f"score must be one of {SCORES}, not {score!r}")
    mask = window_mask(q.shape[0], k.shape[0], window)
    masked = apply_mask(scaled, mask)
    soft = softmax(masked)
    if selection == "soft":
        weights = soft
    elif selection == "hard":
        weights = hard(soft)
    elif selection == "top-k":
        weights = top_k(soft, top)
    else:
        raise ValueError(f"selection must be one of {SELECTIONS}, not {selection!r}")
    return Steps(scores=scores, scaled=scaled, masked=masked, soft=soft, weights=weights,
                 output=weights @ v, entropy=entropy(weights),
                 entropy_norm=normalised_entropy(weights, mask), mask=mask)


# -- what a choice changes ------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One variant's summary: ``entropy`` (mean row entropy, nats), ``breadth`` (mean
    normalised entropy, 0 = one key, 1 = uniform) and ``output_change`` (how far its output
    is from the base variant's: ||O - O_base|| / ||O_base||, Frobenius norms)."""

    label: str
    entropy: float
    breadth: float
    output_change: float


def compare(q: np.ndarray, k: np.ndarray, v: np.ndarray, base: dict,
            changes: list[tuple[str, dict]]) -> list[Variant]:
    """The ``base`` options of :func:`attention` (labelled "as chosen"), then each change
    ``(label, options)`` applied to the base on its own."""
    reference = attention(q, k, v, **base)
    scale = np.linalg.norm(reference.output) or 1.0
    out = []
    for label, change in [("as chosen", {})] + list(changes):
        s = reference if not change else attention(q, k, v, **{**base, **change})
        out.append(Variant(label, float(s.entropy.mean()), float(s.entropy_norm.mean()),
                           float(np.linalg.norm(s.output - reference.output) / scale)))
    return out


# -- multi-head ---------------------------------------------------------------------------
@dataclass
class MultiHead:
    """Multi-head attention: ``heads`` (one Steps per head, on its slice of the columns),
    ``concat [queries, heads * d_v_head]`` (the heads' outputs side by side) and
    ``output [queries, d_out] = concat W_o``."""

    heads: list[Steps]
    concat: np.ndarray
    output: np.ndarray

    @property
    def weights(self) -> np.ndarray:
        """[heads, queries, keys]."""
        return np.stack([h.weights for h in self.heads])


def split_heads(x: np.ndarray, n_heads: int) -> list[np.ndarray]:
    """The columns of ``x [rows, d]`` cut into ``n_heads`` consecutive blocks of d / n_heads."""
    if n_heads < 1 or x.shape[1] % n_heads:
        raise ValueError(f"{x.shape[1]} columns do not split into {n_heads} equal heads")
    return np.split(x, n_heads, axis=1)


def multi_head(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_heads: int, w_o: np.ndarray,
               **options) -> MultiHead:
    """Split the columns of q, k, v into ``n_heads`` heads, attend in each head (``options``
    as for :func:`attention`, additive parameters sized for one head), concatenate the heads'
    outputs and project with ``w_o [d_v, d_out]``."""
    heads = [attention(qh, kh, vh, **options)
             for qh, kh, vh in zip(split_heads(q, n_heads), split_heads(k, n_heads), split_heads(v, n_heads))]
    concat = np.concatenate([h.output for h in heads], axis=1)
    return MultiHead(heads=heads, concat=concat, output=concat @ w_o)


# -- cost -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cost:
    """What one attention head needs on n tokens: ``flops`` (multiply-adds count 2) and
    ``bytes``, the memory of the weights it must hold in float32."""

    flops: float
    bytes: float


def keys_per_query(n: int, method: str, window: int, top: int) -> int:
    """How many keys each query combines: n (global), 2w + 1 (local), k (top-k), at most n."""
    if method == "global":
        return n
    if method == "local":
        return min(n, 2 * window + 1)
    if method == "top-k":
        return min(n, top)
    raise ValueError(f"method must be one of {COST_METHODS}, not {method!r}")


def cost_formula(n: int, method: str, d: int, window: int, top: int) -> Cost:
    """The textbook cost of one head over n tokens of dimension d.

    - global: scores and weighted sum each 2 n^2 d flops; n^2 weights held: grows as n^2;
    - local (window w): m = 2w + 1 keys per query: 4 n m d flops and n m weights: grows as n w;
    - top-k: every pair is still scored to find the k best (2 n^2 d flops), the weighted sum
      takes only 2 n k d, and n k weights are kept.
    """
    m = keys_per_query(n, method, window, top)
    score_flops = 2.0 * n * n * d if method == "top-k" else 2.0 * n * m * d
    return Cost(flops=score_flops + 2.0 * n * m * d, bytes=float(n * m * FLOAT_BYTES))
