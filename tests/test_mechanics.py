"""The lab's attention variants against independent plain-numpy computations written here,
loop by loop, so that a shared mistake in vectorised code cannot hide."""
import math

import numpy as np
import pytest

from attnviz.analysis import mechanics as mech


@pytest.fixture
def qkv():
    rng = np.random.default_rng(7)
    return rng.normal(size=(5, 4)), rng.normal(size=(6, 4)), rng.normal(size=(6, 3))


def softmax_row(row):
    """Softmax of one list of scores; -inf entries get 0."""
    finite = [s for s in row if s != -math.inf]
    top = max(finite)
    e = [0.0 if s == -math.inf else math.exp(s - top) for s in row]
    return [x / sum(e) for x in e]


def by_hand(q, k, v, score):
    """Attention with explicit loops: score(i, j) for every pair, softmax per row, weighted sum."""
    weights = np.array([softmax_row([score(q[i], k[j]) for j in range(len(k))]) for i in range(len(q))])
    out = np.array([[sum(weights[i, j] * v[j, c] for j in range(len(k))) for c in range(v.shape[1])]
                    for i in range(len(q))])
    return weights, out


def test_dot_product(qkv):
    q, k, v = qkv
    weights, out = by_hand(q, k, v, lambda a, b: sum(x * y for x, y in zip(a, b)))
    s = mech.attention(q, k, v, score="dot")
    np.testing.assert_allclose(s.weights, weights, atol=1e-12)
    np.testing.assert_allclose(s.output, out, atol=1e-12)


def test_scaled_dot_product(qkv):
    q, k, v = qkv
    weights, out = by_hand(q, k, v, lambda a, b: sum(x * y for x, y in zip(a, b)) / math.sqrt(4))
    s = mech.attention(q, k, v, score="scaled")
    np.testing.assert_allclose(s.scaled, s.scores / 2.0)
    np.testing.assert_allclose(s.weights, weights, atol=1e-12)
    np.testing.assert_allclose(s.output, out, atol=1e-12)


def test_additive(qkv):
    q, k, v = qkv
    p = mech.Additive.random(4, 4, 5, seed=3)

    def score(a, b):  # v^T tanh(W_q a + W_k b), one hidden unit at a time
        return sum(p.v[u] * math.tanh(sum(p.w_q[u, c] * a[c] for c in range(4)) +
                                      sum(p.w_k[u, c] * b[c] for c in range(4))) for u in range(5))

    weights, out = by_hand(q, k, v, score)
    s = mech.attention(q, k, v, score="additive", additive=p)
    np.testing.assert_allclose(s.weights, weights, atol=1e-12)
    np.testing.assert_allclose(s.output, out, atol=1e-12)


def test_temperature_divides_the_scores(qkv):
    q, k, v = qkv
    weights, _ = by_hand(q, k, v, lambda a, b: sum(x * y for x, y in zip(a, b)) / 2.0 / 0.5)
    s = mech.attention(q, k, v, score="scaled", temperature=0.5)
    np.testing.assert_allclose(s.weights, weights, atol=1e-12)
    hot = mech.attention(q, k, v, score="scaled", temperature=4.0)
    assert hot.entropy.mean() > s.entropy.mean()  # a higher temperature spreads the weights


def test_local_window_masks_far_keys(qkv):
    q, k, v = qkv

    def masked(i):
        return [sum(a * b for a, b in zip(q[i], k[j])) / 2.0 if abs(i - j) <= 1 else -math.inf for j in range(6)]

    weights = np.array([softmax_row(masked(i)) for i in range(5)])
    s = mech.attention(q, k, v, score="scaled", window=1)
    np.testing.assert_allclose(s.weights, weights, atol=1e-12)
    assert s.weights[0, 2:].sum() == 0 and s.weights[4, :3].sum() == 0
    assert s.mask.sum(1).tolist() == [2, 3, 3, 3, 3]
    assert np.isneginf(s.masked[0, 5])
    # a window as wide as the sequence is global attention
    np.testing.assert_allclose(mech.attention(q, k, v, window=10).weights, mech.attention(q, k, v).weights)


def test_hard_top1_is_argmax_one_hot(qkv):
    q, k, v = qkv
    s = mech.attention(q, k, v, selection="hard")
    one_hot = np.eye(6)[s.soft.argmax(1)]
    np.testing.assert_array_equal(s.weights, one_hot)
    np.testing.assert_allclose(s.output, v[s.soft.argmax(1)])
    np.testing.assert_allclose(mech.attention(q, k, v, selection="top-k", top=1).weights, one_hot)
    assert np.all(s.entropy == 0)


def test_top_k_renormalises(qkv):
    q, k, v = qkv
    s = mech.attention(q, k, v, selection="top-k", top=2)
    for i in range(5):
        best = sorted(range(6), key=lambda j: -s.soft[i, j])[:2]
        expected = [s.soft[i, j] / (s.soft[i, best[0]] + s.soft[i, best[1]]) if j in best else 0.0 for j in range(6)]
        np.testing.assert_allclose(s.weights[i], expected, atol=1e-12)
    np.testing.assert_allclose(mech.attention(q, k, v, selection="top-k", top=6).weights, s.soft)


def test_entropy_per_row():
    w = np.array([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.25] * 4])
    np.testing.assert_allclose(mech.entropy(w), [math.log(2), 0.0, math.log(4)])
    mask = np.array([[True, True, False, False], [True] * 4, [True] * 4])
    np.testing.assert_allclose(mech.normalised_entropy(w, mask), [1.0, 0.0, 1.0])


def test_multi_head_equals_heads_run_separately():
    rng = np.random.default_rng(1)
    q, k, v = rng.normal(size=(5, 6)), rng.normal(size=(7, 6)), rng.normal(size=(7, 6))
    w_o = rng.normal(size=(6, 6))
    mh = mech.multi_head(q, k, v, 3, w_o, score="scaled")
    outputs = []
    for h in range(3):
        cols = slice(2 * h, 2 * h + 2)
        weights, out = by_hand(q[:, cols], k[:, cols], v[:, cols],
                               lambda a, b: sum(x * y for x, y in zip(a, b)) / math.sqrt(2))
        np.testing.assert_allclose(mh.weights[h], weights, atol=1e-12)
        outputs.append(out)
    np.testing.assert_allclose(mh.concat, np.hstack(outputs), atol=1e-12)
    np.testing.assert_allclose(mh.output, np.hstack(outputs) @ w_o, atol=1e-12)
    with pytest.raises(ValueError):
        mech.multi_head(q, k, v, 4, w_o)


def test_compare_changes_one_choice_at_a_time(qkv):
    q, k, v = qkv
    rows = mech.compare(q, k, v, {"score": "scaled"}, [("hard", {"selection": "hard"}), ("hot", {"temperature": 4.0})])
    assert [r.label for r in rows] == ["as chosen", "hard", "hot"]
    assert rows[0].output_change == 0
    assert rows[1].entropy == 0 and rows[1].output_change > 0
    assert rows[2].breadth > rows[0].breadth


def test_cost_formulas():
    n, d, w, k = 1024, 64, 32, 16
    g = mech.cost_formula(n, "global", d, w, k)
    assert g.flops == 4 * n * n * d and g.bytes == 4 * n * n
    loc = mech.cost_formula(n, "local", d, w, k)
    assert loc.flops == 4 * n * (2 * w + 1) * d and loc.bytes == 4 * n * (2 * w + 1)
    top = mech.cost_formula(n, "top-k", d, w, k)
    assert top.flops == 2 * n * n * d + 2 * n * k * d and top.bytes == 4 * n * k
    # doubling n: global x4, local x2
    assert mech.cost_formula(2 * n, "global", d, w, k).bytes == 4 * g.bytes
    assert mech.cost_formula(2 * n, "local", d, w, k).bytes == 2 * loc.bytes
