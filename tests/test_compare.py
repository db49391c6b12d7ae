"""Comparisons: word alignment of two tokenisations, and per-head divergence of two models or inputs."""
from __future__ import annotations

import numpy as np
import pytest

import attnviz
from attnviz.analysis.align import token_words, word_axis, word_spans
from attnviz.analysis.similarity import js_divergence
from attnviz.analysis.tokens import reduce
from attnviz.compare import align_inputs, align_models, closest_head, same_head_divergence

TEXT = "The tired animal didn't cross the street."


def test_token_words_by_last_character():
    text = "Hello, big world"
    words = word_spans(text)
    assert words == [(0, 6), (7, 10), (11, 16)]
    spans = [None, (0, 5), (5, 6), (6, 10), (11, 13), (13, 16), (0, 0)]  # " big" carries its space
    assert token_words(spans, words).tolist() == [-1, 0, 0, 1, 2, 2, -1]


def test_word_axis_sums_keys_and_averages_queries():
    owner = np.array([-1, 0, 0, 1, -1])
    a = np.random.default_rng(0).random((5, 5))
    a /= a.sum(1, keepdims=True)
    axis = word_axis(owner, [0, 1], ["w0", "w1"])
    m = reduce(a, axis, axis)
    kept = a[:, [1, 2, 3]] / a[:, [1, 2, 3]].sum(1, keepdims=True)  # hidden keys dropped, renormalised
    expected = np.array([[kept[1:3, :2].sum(1).mean(), kept[1:3, 2].mean()],
                         [kept[3, :2].sum(), kept[3, 2]]])
    np.testing.assert_allclose(m, expected, rtol=1e-5)


def test_two_models_on_one_text(minilm, smollm):
    ra, rb = attnviz.capture(minilm, TEXT), attnviz.capture(smollm, TEXT)
    aligned = align_models(minilm, ra, smollm, rb, TEXT)
    assert aligned.labels == TEXT.split()
    assert aligned.a.shape == (6, 12, 7, 7) and aligned.b.shape == (30, 9, 7, 7)
    assert np.mean(np.abs(aligned.a.sum(-1) - 1) < 1e-3) > 0.99  # rows stay distributions (float16 aside)
    d, best = closest_head(aligned)
    assert d.shape == (6, 12) and best.max() < 30 * 9
    layer, head = 2, 5
    b = best[layer, head]
    assert d[layer, head] == pytest.approx(js_divergence(aligned.a[layer, head], aligned.b[b // 9, b % 9]).mean())
    with pytest.raises(attnviz.AttnvizError, match="different layers or heads"):
        same_head_divergence(aligned)
    itself = align_models(minilm, ra, minilm, ra, TEXT)  # the same tokens: compared token by token
    assert itself.labels == ra.tokens and itself.a.shape == (6, 12, len(ra.tokens), len(ra.tokens))
    assert np.all(same_head_divergence(itself) < 1e-6)


def test_two_inputs_on_one_model(minilm):
    a, b = "The nurse said she was tired.", "The doctor said he was hungry."
    aligned = align_inputs(minilm, attnviz.capture(minilm, a), a, attnviz.capture(minilm, b), b)
    assert aligned.labels == ["The", "nurse/doctor", "said", "she/he", "was", "tired./hungry."]
    d = same_head_divergence(aligned)
    assert d.shape == (6, 12) and np.all((d > 0) & (d < 1))
    with pytest.raises(attnviz.AttnvizError, match="same number of words"):
        align_inputs(minilm, attnviz.capture(minilm, a), a, attnviz.capture(minilm, "Two words"), "Two words")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, minilm):
    """Two tiny BERT checkpoints of one architecture (different seeds), with minilm's tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    folders = []
    for seed in (0, 1):
        folder = tmp_path_factory.mktemp(f"ckpt{seed}")
        torch.manual_seed(seed)
        config = BertConfig(vocab_size=minilm.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64)
        BertModel(config).save_pretrained(folder)
        minilm.tokenizer.save_pretrained(folder)
        folders.append(str(folder))
    return folders


def test_two_checkpoints_token_by_token(checkpoints):
    a, b = (attnviz.load_model(f) for f in checkpoints)
    ra, rb = attnviz.capture(a, TEXT), attnviz.capture(b, TEXT)
    aligned = align_models(a, ra, b, rb, TEXT)
    assert aligned.labels == ra.tokens and aligned.a.shape == aligned.b.shape == (2, 2, len(ra.tokens), len(ra.tokens))
    d = same_head_divergence(aligned)
    expected = [[js_divergence(ra.attn["encoder"][l, h].astype(np.float32),
                               rb.attn["encoder"][l, h].astype(np.float32)).mean() for h in range(2)] for l in range(2)]
    np.testing.assert_allclose(d, expected, rtol=1e-6)
    assert np.all(d > 0)
