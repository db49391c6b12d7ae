"""attnviz.analysis.tokens: merging sub-words, hiding special tokens, block aggregation."""
import numpy as np
import pytest

from attnviz.analysis.tokens import (
    block_size,
    display_label,
    last_content_unit,
    reduce,
    scale_rows,
    token_axis,
    top_share,
    unique_labels,
    word_label,
)

TOKENS = ["[CLS]", "un", "##believ", "##able", "cat", "##s", "!", "[SEP]"]
SPECIAL = [True, False, False, False, False, False, False, True]
SPANS = [(0, 1), (1, 4), (4, 6), (6, 7), (7, 8)]


def random_attention(n_queries: int, n_keys: int, lead=(2, 3), seed=0, causal=False) -> np.ndarray:
    """Rows summing to 1, float16, ``[*lead, queries, keys]``."""
    a = np.random.default_rng(seed).random((*lead, n_queries, n_keys)) ** 3
    if causal:
        a = np.tril(a)
    return (a / a.sum(-1, keepdims=True)).astype(np.float16)


def test_identity_axis_returns_the_attention_itself():
    attn = random_attention(8, 8)
    axis = token_axis(TOKENS, SPECIAL, SPANS)
    assert axis.is_identity and axis.labels == TOKENS
    out = reduce(attn, axis, axis)
    assert out.dtype == np.float32 and out.shape == attn.shape
    np.testing.assert_array_equal(out, attn.astype(np.float32))


def test_merge_sums_over_keys_and_averages_over_queries():
    attn = random_attention(8, 8)
    axis = token_axis(TOKENS, SPECIAL, SPANS, merge=True)
    assert axis.labels == ["[CLS]", "unbelievable", "cats", "!", "[SEP]"]
    assert axis.spans == SPANS
    out = reduce(attn, axis, axis)
    a = attn.astype(np.float32)
    assert out.shape == (2, 3, 5, 5)
    # row "unbelievable" (tokens 1..3) towards key "cats" (tokens 4, 5): mean over rows of the sum over keys
    expected = a[..., 1:4, 4:6].sum(-1).mean(-1)
    np.testing.assert_allclose(out[..., 1, 2], expected, rtol=1e-6)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=2e-3)  # rows stay distributions


def test_hide_special_drops_them_and_renormalises_rows():
    attn = random_attention(8, 8)
    axis = token_axis(TOKENS, SPECIAL, SPANS, hide_special=True)
    assert axis.labels == TOKENS[1:7]
    np.testing.assert_array_equal(axis.hidden, [0, 7])
    out = reduce(attn, axis, axis)
    a = attn.astype(np.float32)[..., 1:7, :]
    expected = a[..., 1:7] / a[..., 1:7].sum(-1, keepdims=True)
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)


def test_hide_then_merge_averages_renormalised_rows():
    attn = random_attention(8, 8)
    axis = token_axis(TOKENS, SPECIAL, SPANS, merge=True, hide_special=True)
    assert axis.labels == ["unbelievable", "cats", "!"]
    out = reduce(attn, axis, axis)
    a = attn.astype(np.float32)
    renorm = a[..., :, 1:7] / a[..., :, 1:7].sum(-1, keepdims=True)
    np.testing.assert_allclose(out[..., 0, 1], renorm[..., 1:4, 3:5].sum(-1).mean(-1), rtol=1e-5)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)


def test_a_row_with_all_its_weight_on_hidden_keys_stays_zero():
    attn = np.zeros((3, 3), np.float16)
    attn[:, 0] = 1.0  # everything on [CLS]
    axis = token_axis(["[CLS]", "a", "b"], [True, False, False], None, hide_special=True)
    out = reduce(attn, axis, axis)
    assert np.all(np.isfinite(out)) and np.all(out == 0)


def test_a_row_with_almost_all_its_weight_on_hidden_keys_keeps_its_digits():
    """Its weight on the other keys is summed over them, not taken as the row's total less the
    hidden weight (in float32, 1 + 4e-12 - 1 is 0)."""
    attn = np.array([[0.0, 0.5, 0.5], [1.0, 1e-12, 3e-12], [0.5, 0.25, 0.25]], np.float32)  # row 0, [CLS], is hidden
    axis = token_axis(["[CLS]", "a", "b"], [True, False, False], None, hide_special=True)
    out = reduce(attn, axis, axis)
    np.testing.assert_allclose(out, [[0.25, 0.75], [0.5, 0.5]], rtol=1e-6)


def test_token_units_name_each_tokens_unit():
    axis = token_axis(TOKENS, SPECIAL, SPANS, merge=True, hide_special=True)
    np.testing.assert_array_equal(axis.token_units, [-1, 0, 0, 0, 1, 1, 2, -1])
    np.testing.assert_array_equal(axis.window(1, 3).token_units, [-1, -1, -1, -1, 0, 0, 1, -1])
    np.testing.assert_array_equal(axis.blocks(2).token_units, [-1, 0, 0, 0, 0, 0, 1, -1])


def test_only_special_tokens_are_kept_rather_than_an_empty_axis():
    axis = token_axis(["[CLS]", "[SEP]"], [True, True], None, hide_special=True)
    assert axis.labels == ["[CLS]", "[SEP]"] and axis.hidden is None


def test_merge_without_word_spans_keeps_tokens():
    axis = token_axis(["a", "b"], [False, False], [], merge=True)
    assert axis.labels == ["a", "b"]


@pytest.mark.parametrize("n,max_units", [(512, 256), (2048, 256), (1000, 64), (37, 10)])
def test_blocks_cover_every_token_once_and_keep_row_sums(n, max_units):
    attn = random_attention(n, n, lead=(1,), causal=True)
    axis = token_axis([f"t{i}" for i in range(n)], [False] * n, None)
    blocks = axis.blocks(max_units)
    size = block_size(n, max_units)
    assert len(blocks) <= max_units and len(blocks) == -(-n // size)
    assert blocks.spans[0][0] == 0 and blocks.spans[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(blocks.spans, blocks.spans[1:]))
    assert blocks.labels[0] == f"#0–{size - 1}"
    out = reduce(attn, blocks, blocks)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=5e-3)
    a = attn.astype(np.float32)
    np.testing.assert_allclose(out[0, 1, 0], a[0, size:2 * size, :size].sum(-1).mean(), rtol=1e-5)


def test_blocks_of_a_short_axis_is_the_axis():
    axis = token_axis(TOKENS, SPECIAL, SPANS)
    assert axis.blocks(256) is axis


def test_window_keeps_full_row_renormalisation():
    attn = random_attention(8, 8, lead=())
    axis = token_axis(TOKENS, SPECIAL, SPANS, hide_special=True)
    full = reduce(attn, axis, axis)
    zoom = reduce(attn, axis.window(1, 4), axis.window(2, 5))
    np.testing.assert_allclose(zoom, full[1:4, 2:5], rtol=1e-6)
    assert axis.window(4, 99).labels == TOKENS[5:7]


def test_unit_of_maps_tokens_to_words():
    axis = token_axis(TOKENS, SPECIAL, SPANS, merge=True, hide_special=True)
    assert [axis.unit_of(t) for t in range(1, 7)] == [0, 0, 0, 1, 1, 2]


def test_blocks_of_words_average_over_the_tokens_of_the_block():
    attn = random_attention(8, 8, lead=())
    words = token_axis(TOKENS, SPECIAL, SPANS, merge=True)  # 5 words
    blocks = words.blocks(3)  # 2 words a block: [CLS] unbelievable | cats ! | [SEP]
    assert blocks.spans == [(0, 4), (4, 7), (7, 8)]
    out = reduce(attn, blocks, blocks)
    a = attn.astype(np.float32)
    np.testing.assert_allclose(out[0, 1], a[0:4, 4:7].sum(-1).mean(), rtol=1e-5)


def test_last_content_unit_is_the_end_of_the_text():
    assert last_content_unit(token_axis(TOKENS, SPECIAL, SPANS), SPECIAL) == 6
    assert last_content_unit(token_axis(TOKENS, SPECIAL, SPANS, merge=True), SPECIAL) == 3
    assert last_content_unit(token_axis(["[CLS]"], [True], None), [True]) == 0


def test_top_share_keeps_strongest_entries_reaching_the_share():
    w = np.array([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]])
    keep = top_share(w, 0.7)
    np.testing.assert_array_equal(keep, [[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]])
    assert top_share(w, 1.0)[:2].all() and top_share(w, 1.0)[2].sum() == 1  # zeros never drawn
    assert top_share(w, 0.01).sum(-1).tolist() == [1, 1, 1]


def test_scale_rows_divides_by_row_maximum():
    m = np.array([[0.2, 0.1], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(scale_rows(m), [[1.0, 0.5], [0.0, 0.0]])


def test_labels_read_well_and_stay_unique():
    assert word_label(["un", "##believ", "##able"]) == "unbelievable"
    assert word_label([" Retrieve", "r"]) == "Retriever"
    assert display_label("\n") == "⏎" and display_label(" ") == "␣" and display_label(" the") == "the"
    labels = unique_labels(["the", "cat", "the", "the"])
    assert len(set(labels)) == 4 and [lab.replace("\u200b", "") for lab in labels] == ["the", "cat", "the", "the"]
