"""Which picture follows what the model uses: attention-based importance of the input tokens
for one output, and its agreement with blank-out (docs/explain.md has the definitions).

Pure numpy/scipy. Every function takes one self-attention stack ``attn[layer, head, n, n]``
(rows sum to 1) and ``mix[n]``, how the explained output reads the last layer's rows: the
one-hot vector of the output position (the last token of a decoder's prompt, CLS of an image
model) or a distribution over positions (uniform for a mean-pooled sentence embedding). Each
returns ``[n]``, one number per input token.

- :func:`attention_scores`: ``mix @ mean_heads(attn[L-1])``, the raw last layer;
- :func:`rollout_scores`: ``mix @ A'_L ... A'_1`` with the residual-augmented layers of
  attnviz.analysis.flow;
- :func:`flow_scores`: exact attention flow from the output, a super-source feeding each
  output position ``mix[i]`` when the mix is not one position;
- :func:`grad_rollout_scores`: Chefer et al. 2021: ``R = I``, layer by layer up
  ``R <- R + Abar R``, then ``mix @ R``, with ``Abar = mean_heads(relu(dA * A))``
  (:func:`weighted_attention`) and ``dA`` the gradient of the output with respect to the
  attention probabilities;
- :func:`spearman`: rank correlation of a method with blank-out over the non-special tokens;
- :func:`summarise`: mean, spread and count of per-input correlations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

from attnviz.analysis.flow import FLOW_SCALE, MAX_FLOW_EDGES, augmented_layer, flow_capacities, fuse_heads, max_flow_values
from attnviz.errors import AttnvizError


def one_hot(n: int, position: int) -> np.ndarray:
    """The mix of an output read at one position: ``[n]`` float64, 1 at ``position``."""
    mix = np.zeros(n)
    mix[position] = 1.0
    return mix


def attention_scores(attn: np.ndarray, mix: np.ndarray) -> np.ndarray:
    """Raw attention of the last layer, heads averaged, rows weighted by ``mix``: ``[n]``."""
    return np.asarray(mix, np.float64) @ fuse_heads(attn[-1], "mean")


def rollout_scores(attn: np.ndarray, mix: np.ndarray) -> np.ndarray:
    """Attention rollout of the rows weighted by ``mix``: ``[n]``, summing to ``sum(mix)``.
    Computed from the top with vector-matrix products (one row, never the whole product)."""
    r = np.asarray(mix, np.float64)
    for layer in reversed(range(attn.shape[0])):
        r = r @ augmented_layer(attn[layer])
    return r


def flow_fits(attn: np.ndarray) -> bool:
    """Whether exact flow's graph is within attnviz.analysis.flow.MAX_FLOW_EDGES."""
    layers, _, n, _ = attn.shape
    return (layers + 1) * n * n <= MAX_FLOW_EDGES


def flow_scores(attn: np.ndarray, mix: np.ndarray) -> np.ndarray:
    """Exact attention flow (max-flow, heads averaged) from the output to every input token,
    normalised to sum 1: ``[n]``.

    A one-hot ``mix`` is the flow from that output position. Otherwise a super-source sends
    at most ``mix[i]`` to output position i (an extra top layer of the graph whose source row
    is ``mix``), and the max-flow from it to each input token is taken."""
    layers, _, n, _ = attn.shape
    if not flow_fits(attn):
        raise AttnvizError(f"Exact attention flow over {n} tokens and {layers} layers is too big a graph "
                           f"({layers * n * n:,} edges, at most {MAX_FLOW_EDGES:,}).")
    mix = np.asarray(mix, np.float64)
    capacities = flow_capacities(attn)
    nonzero = np.flatnonzero(mix)
    if len(nonzero) == 1:
        values = max_flow_values(capacities, int(nonzero[0]))
    else:
        top = np.zeros((1, n, n), dtype=np.int64)
        top[0, 0] = np.rint(mix / mix.sum() * FLOW_SCALE).astype(np.int64)
        values = max_flow_values(np.concatenate([capacities, top]), 0)
    total = values.sum()
    return values / total if total > 0 else values.astype(np.float64)


def weighted_attention(attn_layer: np.ndarray, grads_layer: np.ndarray) -> np.ndarray:
    """One layer's ``Abar = mean_heads(relu(grads * attn))`` (Chefer et al. 2021), float64
    ``[n, n]``, from its attention ``[heads, n, n]`` and the gradient of the explained output
    with respect to it (same shape). A caller can make each layer's as its gradient arrives
    and keep ``[n, n]`` a layer instead of the gradients."""
    return np.maximum(np.asarray(grads_layer, np.float64) * np.asarray(attn_layer, np.float64), 0.0).mean(axis=0)


def grad_rollout_scores(weighted: np.ndarray | list[np.ndarray], mix: np.ndarray) -> np.ndarray:
    """Chefer et al. 2021's relevance of the input tokens: ``[n]``.

    ``weighted[layer]`` is the layer's :func:`weighted_attention`. From ``R_0 = I``,
    ``R_l = R_(l-1) + Abar_l R_(l-1)``; the result is ``mix @ R_L``, computed from the top as
    ``r <- r + r @ Abar_l`` (which multiplies out to the same product)."""
    r = np.asarray(mix, np.float64)
    for layer in reversed(range(len(weighted))):
        r = r + r @ weighted[layer]
    return r


def spearman(scores: np.ndarray, reference: np.ndarray, special: list[bool] | np.ndarray) -> float:
    """Spearman's rank correlation (scipy.stats.spearmanr) of ``scores`` with ``reference``
    over the tokens that are not special; NaN when fewer than 3 tokens are left or either is
    constant there (no ranking to compare)."""
    keep = ~np.asarray(special, dtype=bool)
    a, b = np.asarray(scores, np.float64)[keep], np.asarray(reference, np.float64)[keep]
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def patch_sums(pixel_scores: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Per-pixel scores ``[height, width]`` summed over each patch of a ``rows x cols`` grid:
    ``[rows * cols]`` in row-major order (height and width are multiples of rows and cols)."""
    h, w = pixel_scores.shape
    blocks = np.asarray(pixel_scores, np.float64).reshape(rows, h // rows, cols, w // cols)
    return blocks.sum(axis=(1, 3)).ravel()


@dataclass(frozen=True)
class Agreement:
    """One method's Spearman correlation with blank-out over several inputs: ``mean`` and
    ``std`` (population) of the defined values, ``n`` of them, ``values`` per input (NaN where
    undefined)."""

    mean: float
    std: float
    n: int
    values: tuple[float, ...]


def summarise(per_input: list[dict[str, float]]) -> dict[str, Agreement]:
    """Per method, the mean and spread of its correlation over the inputs (NaN left out)."""
    methods = [m for m in dict.fromkeys(k for d in per_input for k in d)]
    out = {}
    for m in methods:
        values = np.array([d.get(m, math.nan) for d in per_input], np.float64)
        ok = values[np.isfinite(values)]
        out[m] = Agreement(float(ok.mean()) if len(ok) else math.nan, float(ok.std()) if len(ok) else math.nan,
                           int(len(ok)), tuple(float(v) for v in values))
    return out
