"""Capture on the five real bundled models, and the recorder for fused-kernel code.

Every attention row must be a distribution; decoder rows must be causal; shapes must follow
the documented axes; the captured maps must be the model's own (recomputed from its weights).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import attnviz
from attnviz.result import AttentionResult

SENTENCE = "The quick brown fox jumps over the lazy dog near the riverbank."


def assert_rows_sum_to_one(attn: np.ndarray) -> None:
    sums = attn.astype(np.float32).sum(-1)
    assert np.abs(sums - 1).max() < 1e-3, np.abs(sums - 1).max()


def assert_round_trip(result: AttentionResult, tmp_path) -> None:
    back = AttentionResult.load(result.save(tmp_path / "r.npz"))
    assert back.meta() == result.meta()
    for stack in result.stacks:
        assert back.attn[stack].dtype == np.float16
        assert np.array_equal(back.attn[stack], result.attn[stack])
    if result.image is not None:
        assert np.array_equal(back.image, result.image)


def test_text_encoder_pair(minilm, tmp_path):
    r = attnviz.capture(minilm, ("The cat sat on the mat.", "It was happy."))
    layers, heads, q, k = r.attn["encoder"].shape
    assert (layers, heads) == (6, 12) and q == k == len(r.tokens)
    assert r.tokens[0] == "[CLS]" and r.special[0] and r.special[-1]
    assert r.segments[0] == 0 and r.segments[-1] == 1
    assert_rows_sum_to_one(r.attn["encoder"])
    assert_round_trip(r, tmp_path)


def test_minilm_layer0_is_the_models_own_attention(minilm):
    """softmax(Q K^T / sqrt(d) + mask) from layer 0's own query/key weights, per head."""
    r = attnviz.capture(minilm, SENTENCE)
    net = minilm.net
    enc = minilm.tokenizer(SENTENCE, return_tensors="pt")
    with torch.no_grad():
        hidden = net.embeddings(input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"])[0]
        self_attn = net.encoder.layer[0].attention.self
        heads = net.config.num_attention_heads
        d = net.config.hidden_size // heads
        q_lin, k_lin = (getattr(self_attn, n) for n in (("q_proj", "k_proj") if hasattr(self_attn, "q_proj") else ("query", "key")))
        q = q_lin(hidden).view(-1, heads, d).transpose(0, 1)
        k = k_lin(hidden).view(-1, heads, d).transpose(0, 1)
        mask = (1.0 - enc["attention_mask"][0].float()) * torch.finfo(torch.float32).min
        expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + mask, dim=-1).numpy()
    assert np.abs(r.attn["encoder"][0].astype(np.float32) - expected).max() < 1e-3


def test_decoder_generates_and_is_causal(smollm, tmp_path):
    r = attnviz.capture(smollm, "The capital of France is", generate=3)
    layers, heads, q, k = r.attn["decoder"].shape
    assert (layers, heads) == (30, 9), "one map per query head under grouped-query attention"
    assert q == k == len(r.tokens) == r.prompt_len + 3
    assert "Paris" in "".join(r.tokens[r.prompt_len:])
    attn = r.attn["decoder"].astype(np.float32)
    assert_rows_sum_to_one(attn)
    assert np.all(np.triu(attn, k=1) == 0), "decoder rows must be zero above the diagonal"
    assert r.causal and r.is_causal("decoder")
    assert_round_trip(r, tmp_path)


def test_encoder_decoder_generates_target(t5, tmp_path):
    source = "Researchers found that attention heads in early layers look at nearby words."
    r = attnviz.capture(t5, source)
    enc, dec, cross = (r.attn[s] for s in ("encoder", "decoder", "cross"))
    src_n, tgt_n = len(r.tokens), len(r.target_tokens)
    assert enc.shape[:2] == dec.shape[:2] == cross.shape[:2] == (8, 6)
    assert enc.shape[2:] == (src_n, src_n)
    assert dec.shape[2:] == (tgt_n, tgt_n)
    assert cross.shape[2:] == (tgt_n, src_n), "cross is [layers, heads, target, source]"
    assert tgt_n > 2 and r.target_special[0], "the target starts with the decoder start token"
    for a in (enc, dec, cross):
        assert_rows_sum_to_one(a)
    assert np.all(np.triu(dec.astype(np.float32), k=1) == 0)
    assert_round_trip(r, tmp_path)


def test_encoder_decoder_given_target(t5):
    r = attnviz.capture(t5, "Attention heads look at nearby words.", target="Nearby words")
    assert r.target_tokens[0] == "<pad>"
    assert "".join(r.target_tokens[1:]).replace(" ", "").startswith("Nearbywords")
    assert r.attn["cross"].shape[2:] == (len(r.target_tokens), len(r.tokens))


@pytest.mark.parametrize("fixture, size, patch", [("dinov2", None, 14), ("dinov2", 448, 14), ("clip", None, 16)])
def test_image_models(request, photo, tmp_path, fixture, size, patch):
    model = request.getfixturevalue(fixture)
    r = attnviz.capture(model, photo, size=size)
    g = r.grid
    assert g.patch_px == patch and g.prefix == 1
    short = size or 224
    assert min(g.rows, g.cols) * patch == short
    assert abs(g.cols / g.rows - photo.width / photo.height) < 0.1, "aspect ratio kept"
    n = 1 + g.rows * g.cols
    assert r.attn["encoder"].shape[2:] == (n, n) and len(r.tokens) == n
    assert r.image.shape == (g.rows * patch, g.cols * patch, 3)
    assert_rows_sum_to_one(r.attn["encoder"])
    assert_round_trip(r, tmp_path)


def test_dinov2_448_gives_32_by_32_grid_for_square_input(dinov2):
    from PIL import Image

    square = Image.new("RGB", (600, 600), (120, 80, 40))
    r = attnviz.capture(dinov2, square, size=448)
    assert (r.grid.rows, r.grid.cols) == (32, 32)


def test_long_text_is_truncated_with_a_warning(minilm):
    r = attnviz.capture(minilm, "word " * 2000)
    assert len(r.tokens) == 512
    assert r.warnings and "512" in r.warnings[0]


@pytest.mark.parametrize("bad", ["", "   \n\t "])
def test_empty_text_is_refused(minilm, bad):
    with pytest.raises(attnviz.AttnvizError, match="empty"):
        attnviz.capture(minilm, bad)


def test_wrong_kind_of_input_is_refused(minilm, dinov2, photo):
    with pytest.raises(attnviz.AttnvizError, match="text model"):
        attnviz.capture(minilm, photo)
    with pytest.raises(attnviz.AttnvizError, match="image model"):
        attnviz.capture(dinov2, "a sentence")


# -- the recorder: code that calls fused kernels directly ----------------------------------
class SDPABlock(nn.Module):
    """A timm-style attention block: fused qkv projection, F.scaled_dot_product_attention."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.heads, self.qkv = heads, nn.Linear(dim, 3 * dim)

    def forward(self, x, causal=False):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2).reshape(b, n, d)

    def manual(self, x, causal=False):
        b, n, d = x.shape
        q, k, _ = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        if causal:
            scores = scores.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
        return scores.softmax(-1)


@pytest.mark.parametrize("causal", [False, True])
def test_recorder_sees_scaled_dot_product_attention(causal):
    torch.manual_seed(0)
    block, x = SDPABlock().eval(), torch.randn(2, 7, 32)
    with torch.no_grad(), attnviz.record_attention() as rec:
        out = block(x, causal=causal)
    assert len(rec.maps) == 1 and rec.maps[0].shape == (2, 4, 7, 7)
    with torch.no_grad():
        assert torch.allclose(rec.maps[0], block.manual(x, causal), atol=1e-5)
        assert torch.allclose(out, block(x, causal=causal), atol=1e-6), "the output is unchanged"


def test_recorder_sees_multihead_attention_even_on_the_fast_path():
    torch.manual_seed(1)
    mha, x = nn.MultiheadAttention(32, 4, batch_first=True).eval(), torch.randn(2, 6, 32)
    w_q, w_k, _ = mha.in_proj_weight.chunk(3)
    b_q, b_k, _ = mha.in_proj_bias.chunk(3)
    with torch.no_grad():
        q = (x @ w_q.T + b_q).view(2, 6, 4, 8).transpose(1, 2)
        k = (x @ w_k.T + b_k).view(2, 6, 4, 8).transpose(1, 2)
        expected = (q @ k.transpose(-1, -2) / math.sqrt(8)).softmax(-1)
        for need_weights in (True, False):  # need_weights=False takes torch's fused fast path
            with attnviz.record_attention() as rec:
                out, weights = mha(x, x, x, need_weights=need_weights)
            assert len(rec.maps) == 1
            assert torch.allclose(rec.maps[0], expected, atol=1e-5)
            assert (weights is None) == (not need_weights), "the caller gets what it asked for"


def test_recorder_is_per_thread():
    """A recording in one thread does not see another thread's attention calls."""
    import threading

    block, x = SDPABlock().eval(), torch.randn(1, 5, 32)
    seen_elsewhere = []

    def other():
        with torch.no_grad(), attnviz.record_attention() as rec:
            for _ in range(20):
                block(x)
        seen_elsewhere.append(len(rec.maps))

    t = threading.Thread(target=other)
    with torch.no_grad(), attnviz.record_attention() as mine:
        t.start()
        block(x)
        t.join()
    assert len(mine.maps) == 1 and seen_elsewhere == [20]


def test_unknown_tokens_are_input_not_special(minilm):
    r = attnviz.capture(minilm, "I love 🍕 today.")
    unknown = [i for i, t in enumerate(r.tokens) if t == "[UNK]"]
    assert unknown, r.tokens
    assert not any(r.special[i] for i in unknown)
    assert r.special[0] and r.special[-1]
