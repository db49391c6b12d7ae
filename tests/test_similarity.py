"""Head similarity (attnviz.analysis.similarity): JS divergence and clustering on planted patterns."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

import attnviz
from attnviz.analysis.similarity import (
    cluster_heads,
    head_divergence,
    js_divergence,
    mean_divergence,
    queries_within,
    query_sample,
    similar_heads,
)
from attnviz.result import AttentionResult

N = 12


def _norm(a):
    return a / a.sum(-1, keepdims=True)


def _planted(seed: int) -> AttentionResult:
    """2 layers x 3 heads; the planted patterns, each a little noisy: L0 H0 and L1 H2 look at
    the previous token, L0 H1 and L1 H0 at the first token, L0 H2 and L1 H1 at themselves."""
    rng = np.random.default_rng(seed)
    prev = np.eye(N, k=-1)
    prev[0, 0] = 1
    first = np.zeros((N, N))
    first[:, 0] = 1
    self_ = np.eye(N)
    pattern = {(0, 0): prev, (1, 2): prev, (0, 1): first, (1, 0): first, (0, 2): self_, (1, 1): self_}
    maps = np.zeros((2, 3, N, N))
    for (layer, head), p in pattern.items():
        maps[layer, head] = _norm(p + 0.05 * rng.random((N, N)))
    return AttentionResult(kind="text", model="planted", attn={"encoder": maps}, tokens=["t"] * N,
                           special=[False] * N)


def test_js_divergence_bounds_and_scipy():
    p = _norm(np.random.default_rng(0).random((5, 7)))
    q = _norm(np.random.default_rng(1).random((5, 7)))
    np.testing.assert_allclose(js_divergence(p, q), jensenshannon(p, q, base=2, axis=-1) ** 2, atol=1e-12)
    assert js_divergence(np.eye(4)[0], np.eye(4)[1]) == pytest.approx(1.0)
    assert js_divergence(p, p) == pytest.approx(np.zeros(5), abs=1e-12)


def test_head_divergence_is_the_mean_over_queries():
    result = _planted(0)
    d = head_divergence(result, "encoder")
    maps = result.attn["encoder"].astype(np.float64).reshape(6, N, N)
    for a, b in [(0, 5), (0, 1), (3, 4)]:
        assert d[a, b] == pytest.approx(np.mean(jensenshannon(maps[a], maps[b], base=2, axis=-1) ** 2), abs=2e-4)
    np.testing.assert_array_equal(d, d.T)
    assert np.all(np.diag(d) == 0)
    # few queries at a time, and a sample of queries, give the same means
    sub = query_sample(N, 5)
    assert len(sub) == 5 and sub[0] == 0 and sub[-1] == N - 1
    np.testing.assert_allclose(head_divergence(result, "encoder", max_queries=5)[0, 1],
                               np.mean(jensenshannon(maps[0][sub], maps[1][sub], base=2, axis=-1) ** 2), atol=2e-4)


def test_query_budget():
    assert queries_within(72, 128) == 256  # minilm-l6 at 128 tokens: every query up to the cap
    q = queries_within(270, 2048)  # smollm2-135m at 2,048 tokens
    assert 8 <= q < 256 and (270 * 271 // 2) * q * 2048 <= 1e9
    assert queries_within(10_000, 100_000) == 8


def test_clustering_and_nearest_heads_find_the_planted_pairs():
    d = mean_divergence([_planted(0), _planted(1)], "encoder")
    clusters = cluster_heads(d, n_heads=3)
    groups = clusters.groups(3)
    pairs = [(0, 5), (1, 3), (2, 4)]  # L0H0~L1H2, L0H1~L1H0, L0H2~L1H1
    assert len({groups[a] for a, _ in pairs}) == 3
    assert all(groups[a] == groups[b] for a, b in pairs)
    order = list(clusters.order)
    assert all(abs(order.index(a) - order.index(b)) == 1 for a, b in pairs)  # partners are leaf neighbours
    assert similar_heads(d, 3, 0, 0, k=2)[0][:2] == (1, 2)
    assert similar_heads(d, 3, 1, 0, k=5)[0][:2] == (0, 1)
    assert len(similar_heads(d, 3, 1, 0, k=10)) == 5
    assert clusters.name(5) == "L1 H2"


def test_mean_divergence_refuses_other_models(minilm):
    a = _planted(0)
    b = attnviz.capture(minilm, "A short text.")
    b.attn = {"encoder": b.attn["encoder"]}
    with pytest.raises(ValueError, match="same model"):
        mean_divergence([a, b], "encoder")


def test_real_heads_of_one_layer_differ(minilm):
    result = attnviz.capture(minilm, "The cat sat on the mat because it was tired.")
    d = head_divergence(result, "encoder")
    assert d.shape == (72, 72)
    off = d[~np.eye(72, dtype=bool)]
    assert 0 < off.min() and off.max() <= 1
