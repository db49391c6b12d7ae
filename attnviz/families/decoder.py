"""Decoders with pre-norm layers: Llama and the models built like it (RMSNorm, grouped-query
attention: Mistral, Qwen2, Qwen3, Gemma, SmolLM), and GPT-2 (LayerNorm, one fused query, key
and value projection). Each layer is

    r = h + Attention(norm1(h)),   out = r + FFN(norm2(r))

so the attention's input x is norm1(h), and the residual stream itself is never normalised
inside a layer.
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
from attnviz.recording import GENERATE_CAP, last_logits_only
from attnviz.recording import forward as record
from attnviz.recording import transformers_shape as shape  # noqa: F401 (the family's shape)
from attnviz.result import AttentionResult
from attnviz.tokens import TextInput, one_text, special_flags, token_strings, tokenize, word_spans

NAME = "decoder"
READS = "text"
STACKS = ("decoder",)
OPTIONS = frozenset({"generate"})
EXTRA_TOKENS = 0
TOKEN_IDS = True
CAUSAL = True
OUTPUT = "next token"

LLAMA = Spec(layers="layers", value="self_attn.v_proj", out="self_attn.o_proj")
ARCHITECTURES = {
    "llama": LLAMA, "mistral": LLAMA, "qwen2": LLAMA, "qwen3": LLAMA, "gemma": LLAMA,
    "gpt2": Spec(layers="h", value="attn.c_attn", out="attn.c_proj", fused=True),
}


def anatomy(model: Model) -> Anatomy:
    kind = model.net.config.model_type
    if kind not in ARCHITECTURES:
        raise not_covered(model.name, f"a {kind} decoder")
    norm = "pre-norm LayerNorm" if kind == "gpt2" else "pre-norm RMSNorm"
    return Anatomy(name=f"{model.name} (a {kind} decoder)", root=model.net,
                   layers=build(ARCHITECTURES[kind], model.net.base_model, config_heads(model.net.config)), norm=norm)


def forward(model: Model, input: TextInput, size: int | None = None) -> Callable[[], object]:
    """Runs the decoder's layers (not its language-model head) on the prompt ``input``,
    tokenised as capture does."""
    if isinstance(input, tuple):
        raise AttnvizError(f"{model.name} takes one text, not a pair.")
    enc, _ = tokenize(model, input)
    ids = enc["input_ids"].to(model.device)
    return lambda: model.net.base_model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)


def capture(model: Model, input: TextInput, *, generate: int = 0, progress: Progress | None = None,
            **options) -> AttentionResult:
    """A prompt, optionally continued by ``generate`` greedy tokens: the attention is that of one
    forward pass over the whole sequence (prompt + generated)."""
    prompt = one_text(input, model)
    generate = max(0, min(int(generate), GENERATE_CAP))
    t0 = time.perf_counter()
    enc, warnings = tokenize(model, prompt, limit=max(1, model.max_tokens - generate))
    ids = enc["input_ids"].to(model.device)
    prompt_len = ids.shape[1]
    t1 = time.perf_counter()
    if generate:
        pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else model.tokenizer.eos_token_id
        with jobs.hold(model.gate, AS_LOADED):
            ids = model.net.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=generate,
                                     do_sample=False, pad_token_id=pad)
    t2 = time.perf_counter()
    attn, notes = record(model, STACKS, progress, input_ids=ids, attention_mask=torch.ones_like(ids),
                         use_cache=False, **last_logits_only(model.net))
    warnings += notes
    t3 = time.perf_counter()
    all_ids = ids[0].tolist()
    spans = word_spans(enc, prompt_len) + [(i, i + 1) for i in range(prompt_len, len(all_ids))]
    return AttentionResult(
        kind="text", model=model.name, attn=attn, tokens=token_strings(model, all_ids),
        special=special_flags(model, all_ids, enc), word_spans=spans, causal=True, prompt_len=prompt_len,
        timings={"tokenize_s": t1 - t0, "generate_s": t2 - t1, "forward_s": t3 - t2,
                 "copy_s": time.perf_counter() - t3},
        warnings=warnings)
