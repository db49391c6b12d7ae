"""Head roles (attnviz.analysis.roles) against direct computations on hand-made and real maps,
and the induction input (attnviz.probes)."""
from __future__ import annotations

import numpy as np
import pytest

import attnviz
from attnviz.analysis.roles import (
    DEFAULT_THRESHOLD,
    ROLES,
    HeadRoles,
    Keys,
    Repeat,
    head_roles,
    is_punctuation,
    map_roles,
    repeated_sequence,
    stack_keys,
)
from attnviz.analysis.stats import head_stats
from attnviz.probes import induction_input, induction_roles, special_frame
from attnviz.result import AttentionResult


def _rows(n: int, seed: int, causal: bool = False) -> np.ndarray:
    """A random map ``[n, n]`` whose rows are distributions (zero above the diagonal when causal)."""
    a = np.random.default_rng(seed).random((n, n)) + 0.01
    if causal:
        a = np.tril(a)
    return (a / a.sum(1, keepdims=True)).astype(np.float32)


def _result(maps: np.ndarray, tokens: list[str], special: list[bool], stack: str = "encoder") -> AttentionResult:
    """A result holding ``maps[layer, head, query, key]`` (kept exactly: values are float16-exact)."""
    return AttentionResult(kind="text", model="hand-made", attn={stack: maps}, tokens=tokens, special=special,
                           causal=stack == "decoder")


# -- hand-made maps ------------------------------------------------------------------------
def test_planted_patterns_score_one():
    n = 6
    keys = Keys(special=np.zeros(n, bool), delimiter=np.zeros(n, bool))
    ident = np.eye(n, dtype=np.float32)
    prev = np.eye(n, k=-1, dtype=np.float32)
    prev[0, 0] = 1.0
    first = np.zeros((n, n), np.float32)
    first[:, 0] = 1.0
    assert map_roles(ident, keys)["self"] == 1.0 and map_roles(ident, keys)["previous_token"] == 0.0
    assert map_roles(prev, keys)["previous_token"] == 1.0
    assert map_roles(prev, keys)["self"] == pytest.approx(1 / n)  # row 0 can only look at itself
    assert map_roles(first, keys)["first_token"] == 1.0
    assert np.isnan(map_roles(first, keys)["induction"])  # no repeated layout given


def test_scores_match_direct_computation_in_any_row_blocks():
    n = 9
    a = _rows(n, seed=1)
    special = np.zeros(n, bool)
    special[[0, n - 1]] = True
    delimiter = np.zeros(n, bool)
    delimiter[[3, 5]] = True
    repeat = Repeat(first=1, period=3)  # copies at 1..3 and 4..6
    keys = Keys(special=special, delimiter=delimiter, repeat=repeat)
    direct = {
        "previous_token": np.mean([a[i, i - 1] for i in range(1, n)]),
        "self": np.mean(np.diag(a)),
        "first_token": a[:, 0].mean(),
        "special": a[:, special].sum(1).mean(),
        "delimiter": a[:, delimiter].sum(1).mean(),
        "induction": np.mean([a[4, 2], a[5, 3], a[6, 4]]),
        "duplicate_token": np.mean([a[4, 1], a[5, 2], a[6, 3]]),
    }
    for block in (1, 2, 4, 256):
        got = map_roles(a, keys, block=block)
        for role, value in direct.items():
            assert got[role] == pytest.approx(value, rel=1e-6), (role, block)


def test_cross_maps_have_no_positional_roles():
    a = _rows(5, seed=2)[:3]  # 3 target queries over 5 source keys
    keys = Keys(special=np.zeros(5, bool), delimiter=np.zeros(5, bool), aligned=False)
    got = map_roles(a, keys)
    assert np.isnan(got["previous_token"]) and np.isnan(got["self"])
    assert got["first_token"] == pytest.approx(a[:, 0].mean())


def test_head_roles_of_a_result_reuse_the_statistics_and_read_every_head():
    tokens = ["[CLS]", "the", "cat", ",", "sat", ".", "[SEP]"]
    special = [True, False, False, False, False, False, True]
    maps = np.stack([np.stack([_rows(7, seed=10 * layer + head) for head in range(3)]) for layer in range(2)])
    maps = maps.astype(np.float16)
    result = _result(maps, tokens, special)
    seen: list[float] = []
    roles = head_roles(result, "encoder", block=3, progress=seen.append)
    assert seen == [0.25, 0.5, 0.75, 1.0], "progress after each layer of each of the two reads"
    assert list(roles.scores) == [r for r in ROLES if r not in ("induction", "duplicate_token")]
    stats = head_stats(result, "encoder")
    np.testing.assert_array_equal(roles.scores["local"], stats.local_share)
    np.testing.assert_array_equal(roles.scores["mean_distance"], stats.mean_distance)
    np.testing.assert_array_equal(roles.scores["entropy"], stats.entropy)
    keys = stack_keys(result, "encoder")
    assert keys.delimiter.tolist() == [False, False, False, True, False, True, False]
    for layer in range(2):
        for head in range(3):
            a = maps[layer, head].astype(np.float32)
            assert roles.scores["delimiter"][layer, head] == pytest.approx(a[:, [3, 5]].sum(1).mean(), rel=1e-6)
            assert roles.scores["special"][layer, head] == pytest.approx(a[:, [0, 6]].sum(1).mean(), rel=1e-6)
            assert roles.scores["previous_token"][layer, head] == pytest.approx(np.diag(a, -1).mean(), rel=1e-6)


def test_labels_follow_the_threshold():
    scores = {r: np.zeros((1, 3)) for r in ("previous_token", "self", "first_token", "special", "delimiter", "local")}
    scores["previous_token"][0, 0] = 0.6
    scores["first_token"][0, 1] = 0.35
    scores["special"][0, 1] = 0.35  # a tie goes to the role listed first
    scores["local"][0, 2] = 0.5
    roles = HeadRoles("encoder", scores)
    assert roles.labels(DEFAULT_THRESHOLD).tolist() == [["previous_token", "first_token", "local"]]
    assert roles.labels(0.4).tolist() == [["previous_token", "none", "local"]]
    assert roles.labels(0.7).tolist() == [["none", "none", "none"]]


def test_punctuation():
    assert all(is_punctuation(t) for t in [".", ",", " ;", "Ġ!", "▁?", "...", "##.", "—", "«"])
    assert not any(is_punctuation(t) for t in ["", " ", "a", "Ġthe", "3", "+", "a."])


# -- the induction input -------------------------------------------------------------------
def test_repeated_sequence():
    ids, repeat = repeated_sequence(50, exclude={0, 1, 2}, period=20, prefix=[1], suffix=[2], seed=7)
    assert repeat == Repeat(first=1, period=20)
    assert len(ids) == 42 and ids[0] == 1 and ids[-1] == 2
    first, second = ids[1:21], ids[21:41]
    assert first == second and len(set(first)) == 20 and not set(first) & {0, 1, 2}
    assert repeated_sequence(50, {0, 1, 2}, 20, prefix=[1], suffix=[2], seed=7)[0] == ids
    assert repeated_sequence(50, {0, 1, 2}, 20, prefix=[1], suffix=[2], seed=8)[0] != ids
    with pytest.raises(ValueError):
        repeated_sequence(5, {0, 1}, 4)


def test_induction_input_uses_the_tokenizers_own_special_tokens(minilm, smollm):
    cls, sep = minilm.tokenizer.cls_token_id, minilm.tokenizer.sep_token_id
    assert special_frame(minilm.tokenizer) == ([cls], [sep])
    ids, repeat = induction_input(minilm, period=10, seed=3)
    assert ids[0] == cls and ids[-1] == sep and repeat == Repeat(1, 10)
    assert ids[1:11] == ids[11:21]
    specials = set(minilm.tokenizer.all_special_ids)
    assert not specials & set(ids[1:21])
    assert special_frame(smollm.tokenizer) == ([], [])  # SmolLM2 puts no BOS in front of a text
    ids, repeat = induction_input(smollm, period=10)
    assert repeat == Repeat(0, 10) and len(ids) == 20
    with pytest.raises(attnviz.AttnvizError, match="--length"):
        induction_input(minilm, period=400)


# -- real maps -----------------------------------------------------------------------------
def test_real_encoder_roles_match_direct_computation(minilm):
    result = attnviz.capture(minilm, "Well, the cat sat on the mat; then it slept.")
    roles = head_roles(result, "encoder", block=5)
    special = np.asarray(result.special)
    punct = np.array([t.strip() in {",", ";", "."} for t in result.tokens]) & ~special
    assert punct.sum() == 3
    for layer, head in [(0, 0), (2, 7), (5, 11)]:
        a = result.attn["encoder"][layer, head].astype(np.float32)
        s = roles.scores
        assert s["self"][layer, head] == pytest.approx(np.diag(a).mean(), rel=1e-5)
        assert s["previous_token"][layer, head] == pytest.approx(np.diag(a, -1).mean(), rel=1e-5)
        assert s["first_token"][layer, head] == pytest.approx(a[:, 0].mean(), rel=1e-5)
        assert s["special"][layer, head] == pytest.approx(a[:, special].sum(1).mean(), rel=1e-5)
        assert s["delimiter"][layer, head] == pytest.approx(a[:, punct].sum(1).mean(), rel=1e-5)


def test_smollm_has_induction_and_previous_token_heads(smollm):
    result, roles = induction_roles(smollm, period=40, seed=0)
    assert list(roles) == ["decoder"]
    r = roles["decoder"]
    a = result.attn["decoder"].astype(np.float32)
    second = np.arange(40, 80)
    direct = a[:, :, second, second - 40 + 1].mean(-1)  # [layers, heads]
    np.testing.assert_allclose(r.scores["induction"], direct, rtol=1e-5)
    np.testing.assert_allclose(r.scores["duplicate_token"], a[:, :, second, second - 40].mean(-1), rtol=1e-5)
    # induction heads sit in the upper half of the network, previous-token heads below them
    layer, head = np.unravel_index(np.argmax(r.scores["induction"]), r.shape)
    assert r.scores["induction"][layer, head] > 0.5 and layer >= 15
    assert r.scores["previous_token"].max() > 0.5
    assert "induction" in r.labels(0.5)

