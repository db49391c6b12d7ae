"""attnviz.analysis against direct definitions: rollout by its recursion, flow by networkx,
distances by double loops, entropy by hand, and the same on a real captured model."""
import json
import math

import numpy as np
import pytest
from flow_reference import networkx_flows

import attnviz
from attnviz.analysis import average_stats, head_stats
from attnviz.analysis.flow import (
    FLOW_SCALE,
    attention_flow,
    discard_lowest,
    flow_capacities,
    fuse_heads,
    last_layer_attention,
    max_flow_values,
    rollout,
    rollout_spread,
)
from attnviz.result import AttentionResult, PatchGrid


def random_attention(rng, layers, heads, queries, keys=None, sharpness=3.0, causal=False):
    """Softmax rows ``[layers, heads, queries, keys]``; a large sharpness gives peaked rows."""
    keys = keys or queries
    scores = rng.normal(size=(layers, heads, queries, keys)) * sharpness
    if causal:
        scores = np.where(np.tril(np.ones((queries, keys), bool)), scores, -np.inf)
    a = np.exp(scores - scores.max(-1, keepdims=True))
    return a / a.sum(-1, keepdims=True)


# -- rollout --------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_equals_explicit_recursion(fusion):
    rng = np.random.default_rng(1)
    attn = random_attention(rng, 4, 3, 7)
    fuse = {"mean": np.mean, "max": np.max, "min": np.min}[fusion]
    expected = np.eye(7)  # R_0 = I; R_l = A'_l R_(l-1)
    for layer in range(4):
        a = 0.5 * fuse(attn[layer], axis=0) + 0.5 * np.eye(7)
        a = a / a.sum(axis=1, keepdims=True)
        expected = a @ expected
    got = rollout(attn, fusion)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-12)  # keepdim: rows stay distributions
    np.testing.assert_allclose(rollout(attn, fusion, source=3), expected[3], atol=1e-12)


def test_rollout_spread_carries_the_rollout_down_the_layers():
    attn = random_attention(np.random.default_rng(6), 3, 2, 5)
    edges = rollout_spread(attn, 2, top_k=25)  # every edge of every layer
    assert list(np.unique(edges[:, 0])) == [1, 2, 3]
    for layer in (1, 2, 3):
        np.testing.assert_allclose(edges[edges[:, 0] == layer, 3].sum(), 1.0, atol=1e-12)
    into_input = np.zeros(5)
    np.add.at(into_input, edges[edges[:, 0] == 1, 2].astype(int), edges[edges[:, 0] == 1, 3])
    np.testing.assert_allclose(into_input, rollout(attn, source=2), atol=1e-12)
    top = rollout_spread(attn, 2, top_k=3)
    assert len(top) == 9 and (np.diff(top[:3, 3]) <= 0).all()  # strongest first
    np.testing.assert_allclose(last_layer_attention(attn, 2, "max"), attn[-1, :, 2].max(0))


def test_fuse_heads_and_discard():
    rng = np.random.default_rng(2)
    layer = random_attention(rng, 1, 4, 5)[0]
    np.testing.assert_allclose(fuse_heads(layer, "max"), layer.max(0))
    fused = fuse_heads(layer)
    fused[:, 0] = 1e-9  # the lowest entries of all sit in the protected first column
    kept = discard_lowest(fused, 0.5)
    assert (kept[:, 0] == fused[:, 0]).all()
    assert (kept[:, 1:] == 0).sum() == int(25 * 0.5)
    with pytest.raises(ValueError):
        fuse_heads(layer, "median")


# -- attention flow -------------------------------------------------------------------------
def test_flow_equals_networkx_on_random_layered_graphs():
    interior_cuts = 0
    for seed in range(6):  # dense and causal, mean and max fusion, 6-11 tokens, 2-5 layers
        rng = np.random.default_rng(seed)
        n, layers, fusion = 6 + seed, 2 + seed % 4, "max" if seed == 4 else "mean"
        attn = random_attention(rng, layers, 2, n, sharpness=4.0, causal=seed % 2 == 1)
        source = int(rng.integers(n))
        caps = flow_capacities(attn, fusion)
        expected = networkx_flows(caps, source)
        np.testing.assert_array_equal(max_flow_values(caps, source), expected)
        np.testing.assert_allclose(attention_flow(attn, source, fusion), expected / expected.sum(), atol=1e-6)
        ends = np.minimum(caps[-1, source].sum(), caps[0].sum(0))  # cuts at the source or the sink
        interior_cuts += (expected < ends).sum()
    assert interior_cuts > 0  # the graphs are not all decided by their ends


def test_flow_reports_progress_and_rejects_bad_source():
    attn = random_attention(np.random.default_rng(3), 2, 2, 5)
    seen = []
    attention_flow(attn, 0, progress=seen.append)
    assert seen[-1] == 1.0 and seen == sorted(seen)
    with pytest.raises(ValueError):
        attention_flow(attn, 5)


# -- per-head statistics ---------------------------------------------------------------------
def test_entropy_of_uniform_rows_is_log_n():
    n = 9
    result = AttentionResult(kind="text", model="test", attn={"encoder": np.full((2, 3, n, n), 1 / n)},
                             tokens=list("abcdefghi"), special=[False] * n)
    stats = head_stats(result)
    np.testing.assert_allclose(stats.entropy, math.log(n), rtol=1e-3)  # float16 input
    np.testing.assert_allclose(stats.entropy_norm, 1.0, rtol=1e-3)
    causal = np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]  # row i: uniform over i+1 keys
    result = AttentionResult(kind="text", model="test", attn={"decoder": np.broadcast_to(causal, (1, 2, n, n)).copy()},
                             tokens=list("abcdefghi"), special=[False] * n, causal=True)
    stats = head_stats(result, "decoder")
    np.testing.assert_allclose(stats.entropy_norm, 1.0, rtol=1e-3)
    np.testing.assert_allclose(stats.entropy, np.mean(np.log(np.arange(1, n + 1))), rtol=1e-3)


def direct_distance(attn, special, position, window_of):
    """Double loop: for each content query, the renormalised content attention times distance."""
    layers, heads = attn.shape[:2]
    distance, local, sink = (np.zeros((layers, heads)) for _ in range(3))
    content = [i for i in range(len(special)) if not special[i]]
    for layer in range(layers):
        for head in range(heads):
            rows_d, rows_w, rows_s = [], [], []
            for i in content:
                kept = sum(attn[layer, head, i, j] for j in content)
                rows_s.append(sum(attn[layer, head, i, j] for j in range(len(special)) if special[j]))
                rows_d.append(sum(attn[layer, head, i, j] * np.linalg.norm(np.subtract(position(i), position(j)))
                                  for j in content) / kept)
                rows_w.append(sum(attn[layer, head, i, j] for j in content if window_of(i, j)) / kept)
            distance[layer, head], local[layer, head], sink[layer, head] = map(np.mean, (rows_d, rows_w, rows_s))
    return distance, local, sink


def test_mean_distance_in_tokens_equals_double_loop():
    rng = np.random.default_rng(4)
    n = 8
    attn = random_attention(rng, 2, 3, n).astype(np.float16).astype(np.float64)
    special = [True] + [False] * 6 + [True]  # [CLS] ... [SEP]
    result = AttentionResult(kind="text", model="test", attn={"encoder": attn}, tokens=list("abcdefgh"), special=special)
    stats = head_stats(result, window=1)
    distance, local, sink = direct_distance(attn, special, lambda i: (i,), lambda i, j: abs(i - j) <= 1)
    assert stats.distance_unit == "tokens"
    np.testing.assert_allclose(stats.mean_distance, distance, rtol=1e-5)
    np.testing.assert_allclose(stats.local_share, local, rtol=1e-5)
    np.testing.assert_allclose(stats.sink_mass, sink, atol=1e-5)


def test_mean_distance_in_pixels_equals_double_loop():
    rng = np.random.default_rng(5)
    grid = PatchGrid(rows=3, cols=4, patch_px=16, prefix=2)  # CLS and one register
    n = grid.prefix + grid.n_patches
    attn = random_attention(rng, 2, 2, n).astype(np.float16).astype(np.float64)
    special = [i < grid.prefix for i in range(n)]
    result = AttentionResult(kind="image", model="test", attn={"encoder": attn}, tokens=[str(i) for i in range(n)],
                             special=special, grid=grid)
    stats = head_stats(result, window=1)

    def cell(i):
        return divmod(i - grid.prefix, grid.cols)

    distance, local, sink = direct_distance(
        attn, special, lambda i: np.multiply(cell(i), grid.patch_px),
        lambda i, j: max(abs(cell(i)[0] - cell(j)[0]), abs(cell(i)[1] - cell(j)[1])) <= 1)
    assert stats.distance_unit == "px" and stats.window_unit == "patches"
    np.testing.assert_allclose(stats.mean_distance, distance, rtol=1e-5)
    np.testing.assert_allclose(stats.local_share, local, rtol=1e-5)
    np.testing.assert_allclose(stats.sink_mass, sink, atol=1e-5)


# -- a real model ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm_result():
    return attnviz.capture(attnviz.load_model("minilm-l6"), "The cat sat on the mat because it was tired.")


def test_stats_of_a_real_text_model(minilm_result):
    result = minilm_result
    n = len(result.tokens)
    stats = head_stats(result)
    assert stats.entropy.shape == (6, 12)
    assert np.all((stats.entropy > 0) & (stats.entropy <= math.log(n) + 1e-3))
    assert np.all((stats.sink_mass >= 0) & (stats.sink_mass <= 1 + 1e-3))
    assert np.all((stats.mean_distance >= 0) & (stats.mean_distance <= n - 3))  # between content tokens
    classes = stats.classes(local_min=0.5, global_min=0.75)
    assert set(classes.ravel()) <= {"local", "mixed", "global"}
    assert (stats.classes(local_min=0.0) == "local").all()  # every head keeps >= 0 in its window
    data = json.loads(json.dumps(stats.to_json()))
    assert data["distance_unit"] == "tokens" and len(data["entropy"]) == 6 and len(data["entropy"][0]) == 12
    spread = average_stats([stats, head_stats(result)])
    np.testing.assert_allclose(spread.mean.mean_distance, stats.mean_distance)
    np.testing.assert_allclose(spread.std.entropy, 0.0, atol=1e-12)


def test_rollout_and_flow_of_a_real_text_model(minilm_result):
    attn = minilm_result.attn["encoder"]
    n = attn.shape[-1]
    r = rollout(attn)
    np.testing.assert_allclose(r.sum(-1), 1.0, atol=1e-9)
    flow = attention_flow(attn, 0)
    assert flow.shape == (n,) and abs(flow.sum() - 1) < 1e-12 and (flow >= 0).all()
    caps = flow_capacities(attn)
    assert caps.dtype == np.int64 and caps.max() <= FLOW_SCALE
    np.testing.assert_allclose(flow, (e := networkx_flows(caps, 0)) / e.sum(), atol=1e-6)
