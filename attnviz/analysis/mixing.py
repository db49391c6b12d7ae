"""Context mixing, the arithmetic: pure numpy on matrices and decomposed vectors that
:mod:`attnviz.mixing` computes from a model (definitions in docs/mixing.md).

A mixing matrix ``M[i, j]`` of one layer says how much token i's output of the layer takes
from token j of its input; its rows sum to 1 (a row that is all zero stays zero). A stack of
them is ``[layers, N, N]``, layer 0 first.

- :func:`rownorm`: rows normalised; :func:`layers_of`: a method's matrices as its rollout, flow
  and routes take them (``rownorm(0.5 M + 0.5 I)`` for the methods in RESIDUAL_LEFT_OUT).
- :func:`rollout`, :func:`flow`: a method's layers carried from the output down to the input:
  their product, or the exact max-flow of attnviz.analysis.flow with them as capacities.
- :func:`norm_parts`, :func:`proximity`: LayerNorm split over the vectors of a sum, ALTI's
  contribution of a vector to a sum; :func:`alti`, :func:`globenc`: a post-norm layer's rows
  from its tokens' vectors; :func:`head_contributions`: ALTI with the heads kept.
- :func:`value_zeroing`: scores from the cosine distances of a layer's outputs.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from attnviz.analysis.flow import check_flow_size, matrix_flow, residual_augmented

METHODS = ("attention", "attention_norm", "globenc", "alti", "value_zeroing")
RESIDUAL_LEFT_OUT = ("attention", "attention_norm")  # rolled out, flowed and routed as rownorm(0.5 M + 0.5 I)


def rownorm(m: np.ndarray) -> np.ndarray:
    """``m`` with each row (last axis) divided by its sum; a row that sums to zero stays zero."""
    m = np.asarray(m)
    sums = m.sum(axis=-1, keepdims=True)
    return np.divide(m, sums, out=np.zeros_like(m), where=sums != 0)


def layers_of(matrices: np.ndarray, method: str) -> np.ndarray:
    """The per-layer matrices a method is rolled out, flowed and routed with: for attention and
    attention_norm (they leave the residual out) ``rownorm(0.5 M + 0.5 I)``
    (attnviz.analysis.flow.residual_augmented, as the flow page does for attention), the
    matrices as they are for the others (their diagonal holds it). float64 ``[layers, N, N]``."""
    if method in RESIDUAL_LEFT_OUT:
        return residual_augmented(matrices)
    return np.asarray(matrices, dtype=np.float64)


def rollout(matrices: np.ndarray, method: str) -> np.ndarray:
    """``R = M_(L-1) ... M_1 M_0`` over :func:`layers_of` ``(matrices, method)``: row i is how
    much output token i draws on each input token, float64 ``[N, N]``."""
    layers = layers_of(matrices, method)
    r = np.eye(layers.shape[-1])
    for m in layers[::-1]:
        r = r @ m
    return r


def flow(matrices: np.ndarray, method: str, source: int,
         progress: Callable[[float], None] | None = None) -> np.ndarray:
    """Exact max-flow from output token ``source`` to every input token through the layers of
    :func:`layers_of` ``(matrices, method)`` as capacities (attnviz.analysis.flow.matrix_flow):
    ``[N]`` float64 summing to 1."""
    check_flow_size(matrices.shape[0], matrices.shape[-1])  # before a float64 copy of a stack too big
    return matrix_flow(layers_of(matrices, method), source, progress)


def norm_parts(parts: np.ndarray, weight: np.ndarray, std: np.ndarray) -> np.ndarray:
    """LayerNorm's linear part applied to each vector of a sum: ``weight * (z - mean(z)) / std``
    for every ``z`` of ``parts [..., d]``, where ``std [...]`` (broadcast over the parts) is
    sqrt(var + eps) of the whole sum the norm actually normalised. The parts so mapped, plus
    ``bias``, add up to the norm's output."""
    parts = np.asarray(parts, dtype=np.float32)
    centred = parts - parts.mean(axis=-1, keepdims=True)
    return centred * (np.asarray(weight, np.float32) / np.asarray(std, np.float32)[..., None])


def proximity(parts: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """ALTI's contribution of each vector to a sum: ``max(0, |y|_1 - |y - z|_1)`` for every
    part ``z`` of ``parts [..., P, d]`` and its whole ``y`` of ``whole [..., d]``: ``[..., P]``
    (unnormalised)."""
    whole = np.asarray(whole, dtype=np.float32)
    distance = np.abs(whole[..., None, :] - parts).sum(axis=-1)
    return np.maximum(0.0, np.abs(whole).sum(axis=-1)[..., None] - distance)


def alti(transformed: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """ALTI of a post-norm layer (Ferrando et al. 2022), rows ``[B, N]``: the :func:`proximity` of
    each token's transformed vector ``transformed [B, N, d]`` (its share of the attention and
    residual sum, carried through the norm by :func:`norm_parts`) to the norm's output
    ``whole [B, d]``, rows normalised."""
    return rownorm(proximity(transformed, whole))


def globenc(transformed: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """GlobEnc's layer matrix rows ``[B, N]`` (Modarressi et al. 2022): each token's transformed
    vector after the first norm, ``transformed [B, N, d]``, carried through the second norm's
    linear part (its ``weight [d]``; the feed-forward block itself is left out, only its
    residual kept), its Euclidean norm, rows normalised. The second norm divides every vector
    of row i by the same ``sqrt(var + eps)`` of what it normalises, which the row
    normalisation cancels, so it is not needed."""
    return rownorm(np.linalg.norm(norm_parts(transformed, weight, np.ones(transformed.shape[:-1], np.float32)), axis=-1))


def head_contributions(head_parts: np.ndarray, residual: np.ndarray, whole: np.ndarray,
                       rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ALTI with the heads kept (Ferrando & Voita's decoder form): the parts of the whole ``y_i``
    of row i are each head's vector from each token, ``head_parts [B, N, H, d]``, and the
    residual ``residual [B, d]``; each gets :func:`proximity`, normalised over all the parts
    of its row. ``rows [B]``: the token index of each row (where its residual goes). Returns
    (token [B, N]: the sum over heads, the residual added at the row's own token; heads
    [B, H, N]), float32; a row whose parts all get zero stays zero."""
    c = proximity(head_parts, whole[:, None])  # [B, N, H]
    r = proximity(np.asarray(residual, np.float32)[:, None], whole)[:, 0]  # [B]
    total = c.sum(axis=(1, 2)) + r
    scale = np.divide(1.0, total, out=np.zeros_like(total), where=total > 0)
    heads = (c * scale[:, None, None]).transpose(0, 2, 1)
    token = heads.sum(axis=1)
    token[np.arange(len(rows)), rows] += r * scale
    return token, heads


def value_zeroing(distances: np.ndarray, causal: bool) -> np.ndarray:
    """Value-zeroing scores of one layer from ``distances[i, j] = 1 - cos(y_i, y_i^(not j))``
    ``[N, N]``: negatives (rounding) clipped to 0, keys after the query set to 0 in a causal
    model, each row normalised to sum 1 (a row that is all zero stays zero). float32."""
    d = np.maximum(np.asarray(distances, dtype=np.float64), 0.0)
    if causal:
        d = np.tril(d)
    return rownorm(d).astype(np.float32)
