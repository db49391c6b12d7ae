"""Decoders with pre-norm layers: Llama and the models built like it (RMSNorm, grouped-query
attention: Mistral, Qwen2, Qwen3, Gemma, SmolLM), and GPT-2 (LayerNorm, one fused query, key
and value projection). Each layer is

    r = h + Attention(norm1(h)),   out = r + FFN(norm2(r))

so the attention's input x is norm1(h), and the residual stream itself is never normalised
inside a layer.
"""
from __future__ import annotations

from typing import Callable

import torch

from attnviz.capture import TextInput
from attnviz.errors import AttnvizError
from attnviz.families.anatomy import Anatomy, Spec, build, config_heads, not_covered
from attnviz.models.model import Model
from attnviz.tokens import tokenize

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
