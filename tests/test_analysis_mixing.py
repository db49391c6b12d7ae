"""attnviz.analysis.mixing on hand-made matrices and vectors, against direct computations:
row normalisation, the residual for attention, rollout and flow over a method (flow against
networkx's max-flow on the same integer capacities), ALTI's proximity and its head-resolved
form, GlobEnc's norms, value-zeroing scores."""
from __future__ import annotations

import numpy as np
import pytest
from flow_reference import networkx_flows

from attnviz.analysis import mixing as mx
from attnviz.analysis.flow import FLOW_SCALE
from attnviz.errors import AttnvizError


def random_rows(rng, layers: int, n: int) -> np.ndarray:
    m = rng.random((layers, n, n)) ** 3  # uneven rows
    return m / m.sum(-1, keepdims=True)


def test_rownorm_divides_rows_and_keeps_zero_rows_zero():
    m = np.array([[1.0, 3.0], [0.0, 0.0], [2.0, 2.0]])
    np.testing.assert_allclose(mx.rownorm(m), [[0.25, 0.75], [0.0, 0.0], [0.5, 0.5]])
    assert mx.rownorm(np.zeros((2, 3, 3), np.float32)).dtype == np.float32


def test_layers_of_adds_the_residual_only_where_the_method_leaves_it_out():
    m = np.array([[[0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [0.2, 0.3, 0.5]]])
    expected = np.array([[0.5, 0.5, 0.0], [0.25, 0.5, 0.25], [0.1, 0.15, 0.75]])
    for method in mx.RESIDUAL_LEFT_OUT:
        np.testing.assert_allclose(mx.layers_of(m, method)[0], expected)
    np.testing.assert_allclose(mx.layers_of(2 * m, "attention")[0, 0], [1 / 3, 2 / 3, 0.0])  # rows renormalised
    for method in set(mx.METHODS) - set(mx.RESIDUAL_LEFT_OUT):
        np.testing.assert_array_equal(mx.layers_of(m, method), m)


def test_rollout_multiplies_from_the_output_down():
    rng = np.random.default_rng(0)
    m = random_rows(rng, 3, 4)
    np.testing.assert_allclose(mx.rollout(m, "alti"), m[2] @ m[1] @ m[0])
    aug = [0.5 * a + 0.5 * np.eye(4) for a in m]
    np.testing.assert_allclose(mx.rollout(m, "attention_norm"), aug[2] @ aug[1] @ aug[0])
    np.testing.assert_allclose(mx.rollout(m, "value_zeroing").sum(-1), 1.0)


def test_rollout_of_a_hand_made_two_layer_stack():
    first = np.array([[1.0, 0.0], [0.5, 0.5]])  # token 1 takes half of token 0
    second = np.array([[0.0, 1.0], [0.0, 1.0]])  # every token takes token 1
    np.testing.assert_allclose(mx.rollout(np.stack([first, second]), "globenc"), [[0.5, 0.5], [0.5, 0.5]])


@pytest.mark.parametrize("method", ["alti", "attention"])
def test_flow_is_the_max_flow_of_the_method_layers(method):
    rng = np.random.default_rng(1)
    m = random_rows(rng, 3, 5)
    layers = mx.layers_of(m, method)
    expected = networkx_flows(np.rint(layers * FLOW_SCALE).astype(np.int64), source=2)
    got = mx.flow(m, method, source=2)
    np.testing.assert_allclose(got, expected / expected.sum(), atol=1e-12)
    if method == "alti":
        assert not np.allclose(got, mx.flow(m, "attention", source=2))  # the residual changes it


def test_flow_of_a_hand_made_bottleneck():
    # two layers over 3 tokens: token 0 takes all of token 1 in the top layer, and token 1 takes
    # 0.3 of token 2 and 0.7 of itself below: the flow splits 0.3 / 0.7
    top = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    bottom = np.array([[1.0, 0.0, 0.0], [0.0, 0.7, 0.3], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(mx.flow(np.stack([bottom, top]), "alti", 0), [0.0, 0.7, 0.3], atol=1e-7)


def test_flow_refuses_a_graph_too_big():
    with pytest.raises(AttnvizError, match="too big"):
        mx.flow(np.zeros((30, 900, 900), np.float32), "alti", 0)


def test_proximity_is_altis_manhattan_formula():
    whole = np.array([[1.0, -2.0, 3.0]])  # |y|_1 = 6
    parts = np.array([[[1.0, -2.0, 3.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [-1.0, 2.0, -3.0], [2.0, -4.0, 6.0]]])
    # distances 0, 6, 5, 12, 6 -> 6 - d clipped at 0
    np.testing.assert_allclose(mx.proximity(parts, whole), [[6.0, 0.0, 1.0, 0.0, 0.0]])


def test_norm_parts_add_up_to_the_layer_norm():
    rng = np.random.default_rng(2)
    parts = rng.normal(size=(5, 8)).astype(np.float32)
    weight, bias, eps = rng.normal(size=8).astype(np.float32), rng.normal(size=8).astype(np.float32), 1e-5
    whole = parts.sum(0)
    std = np.sqrt(whole.var() + eps)
    layer_norm = weight * (whole - whole.mean()) / std + bias
    np.testing.assert_allclose(mx.norm_parts(parts, weight, np.full(5, std)).sum(0) + bias, layer_norm, atol=1e-5)


def test_alti_and_globenc_rows_by_hand():
    # one row, two tokens: token 0's transformed vector is the whole output, token 1's is zero
    transformed = np.array([[[1.0, -1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]]], np.float32)
    whole = transformed[:, 0]
    np.testing.assert_allclose(mx.alti(transformed, whole), [[1.0, 0.0]])
    # globenc: norms of w * (t - mean t), rows normalised: token 1's is 0
    np.testing.assert_allclose(mx.globenc(transformed, np.full(4, 2.0, np.float32)), [[1.0, 0.0]])
    # centred [-1, 0, 1] and [-1, -1, 2]: Euclidean norms sqrt(2) and sqrt(6)
    two = np.array([[[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]]], np.float32)
    expected = np.array([np.sqrt(2), np.sqrt(6)]) / (np.sqrt(2) + np.sqrt(6))
    np.testing.assert_allclose(mx.globenc(two, np.ones(3, np.float32)), [expected], rtol=1e-6)
    np.testing.assert_allclose(mx.globenc(two, np.array([1.0, 2.0, 1.0], np.float32))[0, 0],
                               np.sqrt(2) / (np.sqrt(2) + 3), rtol=1e-6)  # times w: [-1, 0, 1] and [-1, -2, 2]


def test_globenc_of_a_block_of_rows_is_each_row_alone():
    """Mixing computes rows in blocks (3 rows of a 5-token layer here): a block's rows are those
    of each row computed alone, whatever the block's size against the tokens'."""
    transformed = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
    weight = np.array([1.0, 2.0, 0.5, 1.5], np.float32)
    alone = np.concatenate([mx.globenc(transformed[i:i + 1], weight) for i in range(3)])
    np.testing.assert_allclose(mx.globenc(transformed, weight), alone, rtol=1e-6)


def test_head_contributions_by_hand():
    # row 1 of 2 tokens, 2 heads; whole y = residual + every head part
    residual = np.array([[1.0, 0.0, 0.0]])
    parts = np.zeros((1, 2, 2, 3))
    parts[0, 0, 0] = [0.0, 1.0, 0.0]  # token 0 through head 0
    parts[0, 1, 1] = [0.0, 0.0, 2.0]  # token 1 through head 1
    whole = residual[0] + parts[0].sum((0, 1))  # [1, 1, 2]: |y|_1 = 4
    token, heads = mx.head_contributions(parts, residual, whole[None], rows=np.array([1]))
    # proximities: residual 4 - 3 = 1; (0, h0): 4 - 3 = 1; (1, h1): 4 - 2 = 2; the empty parts 4 - 4 = 0
    np.testing.assert_allclose(heads[0], [[0.25, 0.0], [0.0, 0.5]])
    np.testing.assert_allclose(token, [[0.25, 0.75]])  # token 1: its head 1 and its residual
    np.testing.assert_allclose(token.sum(), 1.0)


def test_value_zeroing_clips_masks_and_normalises():
    d = np.array([[-1e-9, 0.2, 0.6], [0.1, 0.3, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(mx.value_zeroing(d, causal=False), [[0.0, 0.25, 0.75], [0.25, 0.75, 0.0], [0, 0, 0]])
    np.testing.assert_allclose(mx.value_zeroing(d, causal=True), [[0.0, 0.0, 0.0], [0.25, 0.75, 0.0], [0, 0, 0]])
