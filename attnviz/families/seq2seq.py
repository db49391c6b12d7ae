"""The encoder of encoder-decoder models: its self-attention stack only (the decoder's self-
and cross-attention are not mixed here). T5 (pre-norm RMSNorm), mBART and Pegasus (pre-norm
LayerNorm): the attention's input x is the first norm of the layer input h; BART and Marian
(post-norm LayerNorm, as BERT): x is h, and both norms come after their residuals.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

import attnviz.jobs as jobs
from attnviz.errors import AttnvizError
from attnviz.families.anatomy import Anatomy, Spec, build, config_heads, not_covered
from attnviz.models.converters.common import Progress
from attnviz.models.model import AS_LOADED, Model
from attnviz.recording import forward as record
from attnviz.recording import transformers_shape as shape  # noqa: F401 (the family's shape)
from attnviz.result import AttentionResult
from attnviz.tokens import TextInput, one_text, special_flags, token_strings, tokenize, word_spans

NAME = "encoder-decoder"
READS = "text"
STACKS = ("encoder", "decoder", "cross")
OPTIONS = frozenset({"target"})
EXTRA_TOKENS = 48  # tokens it writes as its target when none is given
TOKEN_IDS = False
CAUSAL = False
OUTPUT = "target"

PRE_NORM = Spec(layers="layers", value="self_attn.v_proj", out="self_attn.out_proj")
POST_NORM = Spec(layers="layers", value="self_attn.v_proj", out="self_attn.out_proj",
                 post_norms=("self_attn_layer_norm", "final_layer_norm"))
ARCHITECTURES = {  # model type -> (where the encoder keeps its layers, how its layers normalise)
    "t5": (Spec(layers="block", value="layer.0.SelfAttention.v", out="layer.0.SelfAttention.o"), "pre-norm RMSNorm"),
    "mbart": (PRE_NORM, "pre-norm LayerNorm"), "pegasus": (PRE_NORM, "pre-norm LayerNorm"),
    "bart": (POST_NORM, "post-norm LayerNorm"), "marian": (POST_NORM, "post-norm LayerNorm"),
}


def anatomy(model: Model) -> Anatomy:
    kind = model.net.config.model_type
    if kind not in ARCHITECTURES:
        raise not_covered(model.name, f"a {kind} encoder-decoder")
    spec, norm = ARCHITECTURES[kind]
    return Anatomy(name=f"the encoder of {model.name} (a {kind} encoder-decoder)", root=model.net,
                   layers=build(spec, model.net.get_encoder(), config_heads(model.net.config)), norm=norm)


def forward(model: Model, input: TextInput, size: int | None = None) -> Callable[[], object]:
    """Runs the encoder alone on the source text ``input``, tokenised as capture does."""
    if isinstance(input, tuple):
        raise AttnvizError(f"{model.name}: mixing reads the encoder's source text; give one text, not a pair.")
    enc, _ = tokenize(model, input)
    ids = enc["input_ids"].to(model.device)
    return lambda: model.net.get_encoder()(input_ids=ids, attention_mask=enc["attention_mask"].to(model.device))


def capture(model: Model, input: TextInput, *, target: str | None = None, progress: Progress | None = None,
            **options) -> AttentionResult:
    """A source text and an optional ``target`` (generated greedily, at most EXTRA_TOKENS, when
    absent): the encoder's self-attention, the decoder's self-attention and its
    cross-attention over the source, from one forward pass."""
    source = one_text(input, model)
    t0 = time.perf_counter()
    enc, warnings = tokenize(model, source)
    src = enc["input_ids"].to(model.device)
    start = decoder_start(model.net)
    t1 = time.perf_counter()
    if target is not None and str(target).strip():
        tgt_enc, tgt_warn = tokenize(model, target)
        warnings += tgt_warn
        tgt = torch.cat([torch.tensor([[start]]), tgt_enc["input_ids"]], dim=1).to(model.device)
    else:
        tgt_enc = None
        with jobs.hold(model.gate, AS_LOADED):
            tgt = model.net.generate(src, attention_mask=torch.ones_like(src), max_new_tokens=EXTRA_TOKENS,
                                     do_sample=False, decoder_start_token_id=start)
    t2 = time.perf_counter()
    attn, notes = record(model, STACKS, progress, input_ids=src, attention_mask=torch.ones_like(src),
                         decoder_input_ids=tgt, use_cache=False)
    warnings += notes
    t3 = time.perf_counter()
    src_ids, tgt_ids = src[0].tolist(), tgt[0].tolist()
    target_spans = ([(0, 1)] + [(s + 1, e + 1) for s, e in word_spans(tgt_enc, len(tgt_ids) - 1)]
                    if tgt_enc is not None else [(i, i + 1) for i in range(len(tgt_ids))])
    return AttentionResult(
        kind="text", model=model.name,
        attn=attn,
        tokens=token_strings(model, src_ids), special=special_flags(model, src_ids, enc),
        word_spans=word_spans(enc, len(src_ids)),
        target_tokens=token_strings(model, tgt_ids), target_special=special_flags(model, tgt_ids),
        target_word_spans=target_spans,
        timings={"tokenize_s": t1 - t0, "generate_s": t2 - t1, "forward_s": t3 - t2,
                 "copy_s": time.perf_counter() - t3},
        warnings=warnings)


def decoder_start(net) -> int:
    """The token an encoder-decoder's decoder starts from: the config's or the generation
    config's decoder_start_token_id; else, as mBART does when it has none, the end-of-sequence
    token (its shift_tokens_right wraps the target's last token round), else BOS or padding."""
    gen = getattr(net, "generation_config", None)
    for cfg, key in ((net.config, "decoder_start_token_id"), (gen, "decoder_start_token_id"),
                     (net.config, "eos_token_id"), (net.config, "bos_token_id"), (net.config, "pad_token_id")):
        value = getattr(cfg, key, None)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    raise AttnvizError("The decoder of this model has no start token (decoder_start_token_id, eos, bos and pad are all unset).")
