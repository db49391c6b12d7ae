"""Attention on demand: maps computed from what the attention function was given equal the
model's own, for the bundled models and tiny random checkpoints of many architectures.

For each model the reference is the model itself run eagerly with ``output_attentions=True``
(the maps transformers materialises); where the model runs SDPA by default, the recorded maps
are also checked against torch's reference of what SDPA computed from its actual arguments
(attnviz.recorder.sdpa_probabilities on the full masks, before any compact description).
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import transformers as tf

import attnviz
import attnviz.recording as recording
from attnviz import lazy as lazy_module
from attnviz import recorder
from attnviz import result as result_module
from attnviz.analysis.flow import augmented_layer, rollout, rollout_spread
from attnviz.analysis.stats import head_stats
from attnviz.analysis.tokens import Axis, reduce, token_axis
from attnviz.lazy import LazyStack
from attnviz.mixing import scaled_by_value_norms
from attnviz.models.loader import Model
from attnviz.result import AttentionResult
from attnviz.viz import text as viz_text

TEXT = "The quick brown fox jumps over the lazy dog near the riverbank, and then it sleeps."
TOL = 1e-3


# -- helpers ---------------------------------------------------------------------------------
def tiny(config_class, model_class, seed: int = 0, **config) -> torch.nn.Module:
    """A randomly initialised model (fixed seed), eager like attnviz's loader, in eval mode."""
    torch.manual_seed(seed)
    cfg = config_class(**config)
    cfg._attn_implementation = "eager"
    return model_class(cfg).eval()


def model_of(net, family: str, tokenizer=None, image=None) -> Model:
    return Model("tiny", family, net, torch.device("cpu"), max_tokens=512, tokenizer=tokenizer, image=image)


def eager_maps(net, stacks, **inputs) -> dict[str, np.ndarray]:
    """The model's own eager attention, float32 [layers, heads, queries, keys] per stack."""
    with torch.inference_mode():
        out = net(**inputs, output_attentions=True)
    names = {"encoder": "encoder_attentions", "decoder": "decoder_attentions", "cross": "cross_attentions"}
    return {s: torch.stack([a[0] for a in getattr(out, names[s] if len(stacks) > 1 else "attentions")]).float().numpy()
            for s in stacks}


def sdpa_maps(net, **inputs) -> list[np.ndarray]:
    """torch's reference probabilities of every SDPA call the model makes by default."""
    with recorder.default_attention(net) as sdpa, torch.inference_mode(), attnviz.record_attention() as rec:
        assert sdpa
        net(**inputs)
    return [m[0].numpy() for m in rec.maps]


def lazy_maps(stack) -> np.ndarray:
    """Every head of a stack through LazyStack.rows, float32."""
    return np.stack([[stack.rows(layer, head) for head in range(stack.shape[1])] for layer in range(stack.shape[0])])


def check(net, stacks, *, lazy: bool = True, sdpa: bool | None = None, eager: bool = True, **inputs) -> dict:
    """Record with attnviz and compare with the model's own maps: its eager maps (unless not
    ``eager``: one stack, compared with the SDPA reference alone), and torch's reference of
    its SDPA calls when ``sdpa`` (by default when ``lazy``)."""
    with torch.inference_mode():
        attn, warnings = recording.forward(model_of(net, "x"), stacks, None, **inputs)
    expected = eager_maps(net, stacks, **inputs) if eager else {stacks[0]: np.stack(sdpa_maps(net, **inputs))}
    for s in stacks:
        assert isinstance(attn[s], LazyStack) == lazy, (s, type(attn[s]))
        got = lazy_maps(attn[s]) if lazy else attn[s].astype(np.float32)
        assert got.shape == expected[s].shape
        assert np.abs(got - expected[s]).max() < TOL, (s, np.abs(got - expected[s]).max())
        sums = got.sum(-1)
        assert np.abs(sums - 1).max() < TOL
    if lazy:
        assert warnings == []
        for s in stacks:
            check_row_blocks(attn[s], expected[s])
    if lazy if sdpa is None else sdpa:
        reference = sdpa_maps(net, **inputs)
        order = [(s, layer) for s in stacks for layer in range(attn[s].shape[0])]
        if len(stacks) == 3:  # encoder layers, then decoder self- and cross-attention alternately
            n_enc = attn["encoder"].shape[0]
            order = [("encoder", i) for i in range(n_enc)]
            order += [(s, i) for i in range(attn["decoder"].shape[0]) for s in ("decoder", "cross")]
        for (s, layer), ref in zip(order, reference, strict=True):
            got = np.stack([attn[s].rows(layer, h) for h in range(attn[s].shape[1])])
            assert np.abs(got - ref).max() < TOL, (s, layer, np.abs(got - ref).max())
    if not lazy:
        assert warnings and "materialised" in warnings[0]
    return attn


def cell_axis(n: int) -> Axis:
    """An axis over ``n`` tokens with units of uneven size: words of one to three tokens, the
    first and the middle token hidden (the middle one inside a word, whose unit is then not a
    run of tokens), words grouped into blocks of several."""
    middle = n // 2
    edges = sorted({0, 1, n, *range(1, n, 3), *range(2, n, 7)} - {middle, middle + 1})
    spans = list(zip(edges[:-1], edges[1:]))
    special = [i in (0, middle) for i in range(n)]
    return token_axis([f"t{i}" for i in range(n)], special, spans, merge=True, hide_special=True).blocks(max(1, n // 4))


def check_row_blocks(stack: LazyStack, expected: np.ndarray) -> None:
    """Rows computed three a block (so that a block's visible keys start and end inside the
    key axis), one head at a time and every head of a layer together, rows asked out of order,
    and columns, on a fresh stack (no cached rows), equal ``expected[layer, head, query, key]``;
    so do every head's cells (:func:`cell_axis` on both axes), reduced block by block, and
    they equal reduce() of the layer's rows to float32 precision."""
    fresh = LazyStack(stack.calls, stack.masks)
    n_heads, n_q, n_k = stack.shape[1:]
    picked = np.array([n_q - 1, 0, n_q // 2, 1])  # not a run of consecutive rows
    q, k = cell_axis(n_q), cell_axis(n_k)
    assert any(np.diff(q.index[a:b]).max(initial=1) > 1 for a, b in zip(q.starts, [*q.starts[1:], len(q.index)]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lazy_module, "ROW_BLOCK_ELEMENTS", 3 * n_k)
        patch.setattr(lazy_module, "LAYER_BLOCK_ELEMENTS", 3 * n_heads * n_k)
        for layer in range(stack.shape[0]):  # every head of a layer at once
            rows = fresh.layer_rows(layer)
            assert np.abs(rows - expected[layer]).max() < TOL
            assert np.abs(fresh.layer_rows(layer, picked) - expected[layer][:, picked]).max() < TOL
            for hidden in (k.hidden, None):
                cells = fresh.layer_cells(layer, q.token_units, k.token_units, hidden)
                keys = replace(k, hidden=hidden)
                assert np.abs(cells - reduce(expected[layer], q, keys)).max() < TOL
                assert np.abs(cells - reduce(rows, q, keys)).max() < 1e-5
        for layer in range(stack.shape[0]):
            for head in range(stack.shape[1]):
                want = expected[layer, head]
                assert np.abs(fresh.rows(layer, head) - want).max() < TOL
                assert np.abs(fresh.rows(layer, head, picked) - want[picked]).max() < TOL
                assert np.abs(fresh.columns(layer, head, [0, n_k - 1]) - want[:, [0, n_k - 1]]).max() < TOL


def assert_causal(attn) -> None:
    maps = lazy_maps(attn) if isinstance(attn, LazyStack) else attn.astype(np.float32)
    n = maps.shape[-1]
    assert np.abs(maps * np.triu(np.ones((n, n)), k=1)).max() == 0


@pytest.fixture(scope="module")
def decoder_tokens(smollm):
    return smollm.tokenizer(TEXT, return_tensors="pt")["input_ids"]


# -- tiny checkpoints of many architectures ---------------------------------------------------
def test_llama_grouped_query(decoder_tokens):
    net = tiny(tf.LlamaConfig, tf.LlamaForCausalLM, vocab_size=49152, hidden_size=32, intermediate_size=64,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    ids = decoder_tokens
    attn = check(net, ("decoder",), input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    stack = attn["decoder"]
    assert stack.calls[0].k.shape[0] == 2 and stack.calls[0].causal  # keys once per kv head, causal flag
    assert_causal(stack)


def test_mistral_sliding_window_shorter_than_input(decoder_tokens):
    net = tiny(tf.MistralConfig, tf.MistralForCausalLM, vocab_size=49152, hidden_size=32, intermediate_size=64,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, sliding_window=5)
    ids = decoder_tokens
    assert ids.shape[1] > 5
    attn = check(net, ("decoder",), input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    call = attn["decoder"].calls[0]
    assert call.window is not None and call.causal and call.mask == -1  # described, not stored
    assert_causal(attn["decoder"])
    far = lazy_maps(attn["decoder"])[:, :, -1, : ids.shape[1] - call.window]
    assert far.max() == 0  # outside the window


def test_gemma2_soft_capping_recorded_through_the_attention_registry(decoder_tokens):
    net = tiny(tf.Gemma2Config, tf.Gemma2ForCausalLM, vocab_size=49152, hidden_size=32, intermediate_size=64,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
               attn_logit_softcapping=5.0, sliding_window=4)
    ids = decoder_tokens
    assert net.config._attn_implementation == "eager"  # Gemma2 has no SDPA: eager is its default
    attn = check(net, ("decoder",), sdpa=False, input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    local, full = attn["decoder"].calls
    assert local.softcap == full.softcap == 5.0 and local.window == 4 and full.window is None
    assert net.config._attn_implementation == "eager"  # set back
    assert_causal(attn["decoder"])


ALIBI_SLOPES = np.array([2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8], np.float32)  # of 4 heads: 2^(-8 h / 4)


def key_bias(stack: LazyStack) -> np.ndarray:
    """The one key bias every layer of ``stack`` shares, float32 [heads, keys]."""
    index = {c.key_bias for c in stack.calls}
    assert len(index) == 1 and min(index) >= 0, index
    return stack.masks[index.pop()]


def test_bloom_alibi_traced_from_its_eager_code(decoder_tokens):
    """BLOOM writes its attention out in torch operations: ``baddbmm(alibi, q, k^T,
    alpha=1/sqrt(d))``, the causal mask added, a softmax. The ALiBi it adds after the scaling,
    slope x key position j, is recorded as one [heads, keys] bias, the causal mask as a flag."""
    net = tiny(tf.BloomConfig, tf.BloomForCausalLM, vocab_size=49152, hidden_size=32, n_layer=2, n_head=4)
    ids = decoder_tokens
    attn = check(net, ("decoder",), sdpa=False, input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    stack = attn["decoder"]
    assert all(c.causal and c.mask == -1 for c in stack.calls)
    n = ids.shape[1]
    assert np.array_equal(key_bias(stack), ALIBI_SLOPES[:, None] * np.arange(n, dtype=np.float32))
    assert stack.nbytes == sum(c.q.nbytes + c.k.nbytes for c in stack.calls) + 4 * 4 * n
    assert_causal(stack)


def test_a_saved_recorded_result_keeps_its_key_bias(decoder_tokens, tmp_path, monkeypatch):
    net = tiny(tf.BloomConfig, tf.BloomForCausalLM, vocab_size=49152, hidden_size=32, n_layer=2, n_head=4)
    ids = decoder_tokens
    with torch.inference_mode():
        attn, _ = recording.forward(model_of(net, "decoder"), ("decoder",), None, input_ids=ids,
                                          attention_mask=torch.ones_like(ids), use_cache=False)
    n = ids.shape[1]
    r = AttentionResult(kind="text", model="tiny", attn=attn, tokens=["t"] * n, special=[False] * n, causal=True)
    monkeypatch.setattr(result_module, "NPZ_MAPS_MAX", 10)  # saved as what was recorded
    back = AttentionResult.load(r.save(tmp_path / "bloom.npz"))
    assert back.is_lazy("decoder") and back.digest == r.digest
    assert [c.key_bias for c in back.attn["decoder"].calls] == [c.key_bias for c in attn["decoder"].calls]
    assert np.array_equal(lazy_maps(back.attn["decoder"]), lazy_maps(attn["decoder"]))


def test_bloom_with_padding_counts_key_positions_over_the_kept_tokens(decoder_tokens):
    net = tiny(tf.BloomConfig, tf.BloomForCausalLM, vocab_size=49152, hidden_size=32, n_layer=2, n_head=4)
    ids = torch.cat([decoder_tokens, torch.zeros(1, 3, dtype=torch.long)], dim=1)  # three padding tokens at the end
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0
    attn = check(net, ("decoder",), sdpa=False, input_ids=ids, attention_mask=mask, use_cache=False)
    stack = attn["decoder"]
    assert stack.calls[0].mask >= 0  # causal and padding: kept as one boolean mask
    n = decoder_tokens.shape[1]
    positions = np.r_[np.arange(n), np.zeros(3)].astype(np.float32)  # BLOOM's: (cumsum(mask) - 1) * mask
    assert np.array_equal(key_bias(stack), ALIBI_SLOPES[:, None] * positions)
    assert lazy_maps(stack)[..., -3:].max() == 0  # padding keys get nothing


def test_mpt_alibi_traced_from_its_eager_code(decoder_tokens):
    """MPT adds ALiBi after the scaling too, by the key's offset from the last key, j - (n - 1):
    another per-query constant than BLOOM's j, the same probabilities; recorded as MPT has it."""
    net = tiny(tf.MptConfig, tf.MptForCausalLM, vocab_size=49152, d_model=32, n_layers=2, n_heads=4,
               expansion_ratio=2, max_seq_len=64)
    ids = decoder_tokens
    attn = check(net, ("decoder",), sdpa=False, input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    stack = attn["decoder"]
    n = ids.shape[1]
    assert all(c.causal and c.mask == -1 for c in stack.calls)
    assert np.array_equal(key_bias(stack), ALIBI_SLOPES[:, None] * (np.arange(n) - (n - 1)).astype(np.float32))
    assert_causal(stack)


@pytest.mark.parametrize("multi_query", [True, False])
def test_falcon_alibi_recorded_from_its_sdpa_mask(decoder_tokens, multi_query):
    """Falcon-RW's layout (ALiBi, the old decoder architecture) runs SDPA by default, with
    ALiBi folded into the mask: slope x j in bfloat16, divided by sqrt(d) (the bias enters
    before the scaling). It is recorded as a [heads, keys] bias and the causal flag; under
    multi-query attention the one key head is kept once. transformers' eager path of this
    layout adds ALiBi twice (to the scores and again with the mask), so its maps are not the
    model's: the reference is what SDPA computes from its actual arguments."""
    net = tiny(tf.FalconConfig, tf.FalconForCausalLM, vocab_size=49152, hidden_size=32, num_hidden_layers=2,
               num_attention_heads=4, alibi=True, new_decoder_architecture=False, multi_query=multi_query)
    ids = decoder_tokens
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    attn = check(net, ("decoder",), eager=False, **inputs)
    stack = attn["decoder"]
    assert net.config._attn_implementation == "eager"  # set back
    assert all(c.causal and c.mask == -1 and c.k.shape[0] == (1 if multi_query else 4) for c in stack.calls)
    n = ids.shape[1]
    rounded = (torch.from_numpy(ALIBI_SLOPES).bfloat16()[:, None] * torch.arange(n)).float()
    assert np.array_equal(key_bias(stack), (rounded / math.sqrt(8)).numpy())
    assert np.abs(lazy_maps(stack) - eager_maps(net, ("decoder",), **inputs)["decoder"]).max() > 0.01


def test_a_bias_computed_per_query_and_key_in_each_layer_falls_back_to_eager_maps(minilm):
    """DeBERTa adds disentangled terms computed from each layer's content: not traced (each
    would be a [heads, queries, keys] tensor per layer), so the maps are materialised."""
    net = tiny(tf.DebertaV2Config, tf.DebertaV2Model, vocab_size=30522, hidden_size=32, intermediate_size=64,
               num_hidden_layers=2, num_attention_heads=4, relative_attention=True, position_buckets=16,
               pos_att_type=["p2c", "c2p"])
    ids = minilm.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    check(net, ("encoder",), lazy=False, input_ids=ids)


def test_decoder_capture_computes_the_last_position_logits_only(smollm):
    seen = []
    hook = smollm.net.lm_head.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    try:
        result = attnviz.capture(smollm, TEXT)
    finally:
        hook.remove()
    assert len(result.tokens) > 1 and seen == [(1, 1, smollm.net.config.hidden_size)]


def test_gpt2(decoder_tokens):
    net = tiny(tf.GPT2Config, tf.GPT2LMHeadModel, vocab_size=49152, n_embd=32, n_layer=2, n_head=4)
    ids = decoder_tokens
    attn = check(net, ("decoder",), input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    assert_causal(attn["decoder"])


def test_bert_with_padding(minilm):
    net = tiny(tf.BertConfig, tf.BertModel, vocab_size=30522, hidden_size=32, intermediate_size=64,
               num_hidden_layers=2, num_attention_heads=4)
    enc = minilm.tokenizer([TEXT, "A short one."], padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"][1:], enc["attention_mask"][1:]  # batch item 0 is the padded one
    assert mask[0].min() == 0
    attn = check(net, ("encoder",), input_ids=ids, attention_mask=mask)
    maps = lazy_maps(attn["encoder"])
    assert maps[..., mask[0] == 0].max() == 0  # padding keys get nothing


def test_t5_relative_buckets_and_cross_attention(t5):
    net = tiny(tf.T5Config, tf.T5ForConditionalGeneration, vocab_size=32128, d_model=32, d_kv=8, d_ff=64,
               num_layers=2, num_decoder_layers=3, num_heads=4, relative_attention_num_buckets=8,
               relative_attention_max_distance=16, decoder_start_token_id=0)
    src = t5.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    tgt = torch.tensor([[0, 71, 1712, 3, 9, 5]])
    attn = check(net, ("encoder", "decoder", "cross"), input_ids=src, attention_mask=torch.ones_like(src),
                 decoder_input_ids=tgt, use_cache=False)
    assert attn["cross"].shape == (3, 4, tgt.shape[1], src.shape[1])
    assert attn["encoder"].masks  # the relative-position bias is kept (once per distinct bias)
    assert_causal(attn["decoder"])


def test_vit():
    net = tiny(tf.ViTConfig, tf.ViTModel, image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
               num_hidden_layers=2, num_attention_heads=4)
    torch.manual_seed(1)
    pixels = torch.randn(1, 3, 32, 32)
    attn = check(net, ("encoder",), pixel_values=pixels)
    assert attn["encoder"].shape == (2, 4, 17, 17)


# -- the bundled models --------------------------------------------------------------------------
def test_bundled_text_models(minilm, smollm, t5):
    for model, text in ((minilm, TEXT), (smollm, TEXT)):
        enc = model.tokenizer(text, return_tensors="pt")
        stacks = ("encoder",) if model.family == "encoder" else ("decoder",)
        extra = {} if model.family == "encoder" else {"use_cache": False}
        attn = check(model.net, stacks, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], **extra)
        if model.family == "decoder":
            assert_causal(attn["decoder"])
    src = t5.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    tgt = torch.tensor([[t5.net.config.decoder_start_token_id, 363, 19, 8, 1]])
    check(t5.net, ("encoder", "decoder", "cross"), input_ids=src, attention_mask=torch.ones_like(src),
          decoder_input_ids=tgt, use_cache=False)


@pytest.mark.parametrize("fixture", ["dinov2", "clip"])
def test_bundled_image_models(request, fixture):
    model = request.getfixturevalue(fixture)
    torch.manual_seed(0)
    pixels = torch.randn(1, 3, 224, 224)
    kwargs = {"interpolate_pos_encoding": True} if recording.accepts(model.net, "interpolate_pos_encoding") else {}
    check(model.net, ("encoder",), pixel_values=pixels, **kwargs)


# -- results, files and the streaming consumers --------------------------------------------------
def test_capture_is_lazy_and_saved_large_result_loads_the_same(smollm, tmp_path, monkeypatch):
    r = attnviz.capture(smollm, TEXT)
    assert r.is_lazy("decoder") and r.warnings == []
    small = AttentionResult.load(r.save(tmp_path / "small.npz"))  # today's format: float16 maps
    assert not small.is_lazy("decoder")
    assert np.abs(small.attn["decoder"].astype(np.float32) - r.attn["decoder"].astype(np.float32)).max() < TOL
    monkeypatch.setattr(result_module, "NPZ_MAPS_MAX", 1000)  # this result now counts as large
    assert r.saves_recorded()
    back = AttentionResult.load(r.save(tmp_path / "large.npz"))
    assert back.is_lazy("decoder") and back.meta() == r.meta()
    assert back.digest == r.digest
    for layer in (0, 29):
        for head in (0, 8):
            assert np.array_equal(back.attention(layer, head, "decoder"), r.attention(layer, head, "decoder"))


def test_large_stacks_refuse_to_materialise_and_compute_slices(smollm, monkeypatch):
    from attnviz import lazy

    r = attnviz.capture(smollm, TEXT)
    stack = r.attn["decoder"]
    dense = np.asarray(stack).astype(np.float32)
    monkeypatch.setattr(lazy, "SMALL_ELEMENTS", 100)
    monkeypatch.setattr(lazy, "SLICE_ELEMENTS", stack.shape[1] * stack.shape[2] * stack.shape[3])
    fresh = LazyStack(stack.calls, stack.masks)
    assert np.abs(fresh[3].astype(np.float32) - dense[3]).max() < TOL
    assert np.abs(fresh[3, 2, 5:9].astype(np.float32) - dense[3, 2, 5:9]).max() < TOL
    assert fresh[2, 1, 4, 3] == pytest.approx(dense[2, 1, 4, 3], abs=TOL)
    with pytest.raises(attnviz.AttnvizError, match="a head at a time"):
        np.asarray(fresh)
    cols = fresh.columns(5, 4, [0, 3])
    assert np.abs(cols - fresh.rows(5, 4)[:, [0, 3]]).max() < 1e-5


def _dense_copy(r: AttentionResult) -> AttentionResult:
    """The same result with every stack held as a plain float32 array (today's path)."""
    from dataclasses import replace

    return replace(r, attn={s: np.asarray(r.attn[s]).astype(np.float32) for s in r.stacks})


def test_streaming_consumers_match_the_whole_array_path(smollm, minilm):
    r = attnviz.capture(smollm, TEXT)
    d = _dense_copy(r)
    a = d.attn["decoder"]
    for name in ("entropy", "sink_mass", "mean_distance", "local_share"):
        assert np.allclose(getattr(head_stats(r, "decoder"), name), getattr(head_stats(d, "decoder"), name),
                           atol=1e-3, equal_nan=True)
    source = len(r.tokens) - 1
    whole = np.eye(a.shape[-1])[source]
    for layer in reversed(range(a.shape[0])):
        whole = whole @ augmented_layer(a[layer], "mean")
    assert np.abs(rollout(r.attn["decoder"], "mean", source=source) - whole).max() < 1e-4
    assert np.abs(rollout(a, "max", source=source) - rollout(a, "max")[source]).max() < 1e-9
    edges = rollout_spread(r.attn["decoder"], source, "mean", 3)
    assert edges.shape == (3 * a.shape[0], 4) and np.all(edges[:3, 1] == source)
    options = viz_text.TextOptions(merge=True, hide_special=True)
    q, k = viz_text.axes(r, "decoder", options)
    for head in (2, "mean", "max"):
        expected = viz_text.head_values(d, "decoder", 7, head, q, k)
        assert np.abs(viz_text.head_values(r, "decoder", 7, head, q, k) - expected).max() < TOL
        key = k.window(3, 4)
        assert np.abs(viz_text.head_columns(r, "decoder", 7, head, q, key) - expected[:, 3:4]).max() < TOL
    thumbs = viz_text.thumbnails(r, "decoder", options)
    assert np.abs(thumbs.values[4] - reduce(a[4], thumbs.queries, thumbs.keys)).max() < TOL
    enc = attnviz.capture(minilm, TEXT)
    stats = head_stats(enc, "encoder")
    assert np.allclose(stats.entropy, head_stats(_dense_copy(enc), "encoder").entropy, atol=1e-3)


def test_overview_cells_equal_reduce_of_the_whole_maps(smollm, minilm):
    """The overview's thumbnails, every row block reduced to its cells as it is computed
    (AttentionResult.layer_cells), equal reduce() of the whole float32 maps: of a lazy capture,
    of the same maps materialised, and of both scaled by value norms (attention x value norm),
    in tokens and in words, with special tokens shown and hidden."""
    rng = np.random.default_rng(0)
    for model in (smollm, minilm):
        r = attnviz.capture(model, TEXT * 8)
        stack = r.stacks[0]
        n_layers, n_heads = r.attn[stack].shape[:2]
        whole = np.stack([[r.attention(layer, h, stack) for h in range(n_heads)] for layer in range(n_layers)])
        norms = rng.uniform(0.5, 3.0, (n_layers, n_heads, whole.shape[-1])).astype(np.float32)
        dense = _dense_copy(r)
        results = [(r, whole), (dense, dense.attn[stack].astype(np.float32)),
                   (scaled_by_value_norms(r, norms), whole * norms[:, :, None, :]),
                   (scaled_by_value_norms(dense, norms), scaled_by_value_norms(dense, norms).attn[stack].astype(np.float32))]
        assert r.is_lazy(stack) and not dense.is_lazy(stack)
        assert np.abs(results[2][0].layer_attention(1, stack) - results[2][1][1]).max() < 1e-6  # rows scaled too
        for options in (viz_text.TextOptions(), viz_text.TextOptions(merge=True, hide_special=True),
                        viz_text.TextOptions(hide_special=True)):
            for result, maps in results:
                thumbs = viz_text.thumbnails(result, stack, options)
                assert thumbs.queries.sizes.max() > 1 and thumbs.keys.sizes.max() > 1  # cells of several tokens
                assert (thumbs.keys.hidden is not None) == (options.hide_special and model is minilm)  # [CLS], [SEP]
                expected = np.stack([reduce(maps[layer], thumbs.queries, thumbs.keys) for layer in range(n_layers)])
                assert np.abs(thumbs.values - expected).max() < 1e-5, (model.name, options)


def test_digest_names_the_content(minilm):
    a = attnviz.capture(minilm, TEXT)
    b = attnviz.capture(minilm, TEXT)
    c = attnviz.capture(minilm, TEXT + " More.")
    assert a.digest == b.digest != c.digest


def test_eager_recording_is_per_thread(decoder_tokens):
    """While a model is switched to the recording eager function, a thread with no recorder
    runs it as plain eager attention and records nothing into another thread's recorder."""
    import threading

    net = tiny(tf.Gemma2Config, tf.Gemma2ForCausalLM, vocab_size=49152, hidden_size=32, intermediate_size=64,
               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
               attn_logit_softcapping=5.0)
    ids = decoder_tokens
    with torch.inference_mode():
        expected = net(input_ids=ids, use_cache=False).logits
    outputs = []

    def other():
        with torch.inference_mode():
            outputs.append(net(input_ids=ids, use_cache=False).logits)

    with recorder.default_attention(net) as recordable, torch.inference_mode():
        assert recordable
        with attnviz.record_attention(lazy=True) as rec:
            thread = threading.Thread(target=other)
            thread.start()
            thread.join()
            assert rec.calls == []
            net(input_ids=ids, use_cache=False)
        assert len(rec.calls) == 2
    assert torch.equal(outputs[0], expected)


class _Attention(torch.nn.Module):
    """One head of scaled dot-product attention of x over ``memory`` (x itself when None)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.q, self.k = torch.nn.Linear(width, width), torch.nn.Linear(width, width)

    def forward(self, x, memory=None):
        keys = self.k(x if memory is None else memory)
        q = self.q(x)
        return torch.nn.functional.scaled_dot_product_attention(q[None], keys[None], keys[None])[0], q


class _DecoderLayer(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.self_attn, self.encoder_attn = _Attention(width), _Attention(width)


class _Stack(torch.nn.Module):
    def __init__(self, layers) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(layers)


class _OddOrder(torch.nn.Module):
    """An encoder-decoder that calls its attention modules in an unusual order: the decoder's
    layers last to first, each its cross-attention before its self-attention, and the encoder's
    layers after the decoder's (on its own input). Returns each module's queries by name."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = _Stack([_Attention(width) for _ in range(2)])
        self.decoder = _Stack([_DecoderLayer(width) for _ in range(3)])

    def forward(self, x, y):
        queries = {}
        for i in reversed(range(3)):
            layer = self.decoder.layers[i]
            queries[f"cross {i}"] = layer.encoder_attn(y, memory=x)[1]
            queries[f"decoder {i}"] = layer.self_attn(y)[1]
        for i in (1, 0):
            queries[f"encoder {i}"] = self.encoder.layers[i](x)[1]
        return queries


def test_calls_are_placed_by_the_module_that_made_them_not_by_their_order():
    net = _OddOrder()
    x, y = torch.randn(5, 8), torch.randn(4, 8)
    with torch.inference_mode(), attnviz.record_attention(lazy=True) as rec:
        queries = net(x, y)
    assert [type(m).__name__ for m in rec.callers] == ["_Attention"] * 8
    points = recording.RecordingPoints({"encoder": net.encoder, "decoder": net.decoder}, cross=True)
    split = points.split(rec.calls, rec.callers, ("encoder", "decoder", "cross"))
    assert {s: len(calls) for s, calls in split.items()} == {"encoder": 2, "decoder": 3, "cross": 3}
    for stack, calls in split.items():
        for layer, call in enumerate(calls):
            assert np.array_equal(call.q[0], queries[f"{stack} {layer}"].numpy()), (stack, layer)
    assert points.of(net) is None and points.of(None) is None, "a call outside every part is no stack's"


def test_a_layer_called_at_several_depths_keeps_its_call_order():
    shared = _Attention(8)
    stack = _Stack([shared])
    x = torch.randn(5, 8)
    with torch.inference_mode(), attnviz.record_attention(lazy=True) as rec:
        seen = [shared(x)[1], shared(x + 1)[1], shared(x * 2)[1]]  # ALBERT: one layer, three depths
    calls = recording.RecordingPoints({"encoder": stack}).split(rec.calls, rec.callers, ("encoder",))["encoder"]
    assert [np.array_equal(c.q[0], q.numpy()) for c, q in zip(calls, seen, strict=True)] == [True] * 3
