"""Text encoders with post-norm layers: BERT and the models built like it (RoBERTa, XLM-RoBERTa,
ELECTRA, MiniLM; DistilBERT with its own names). Each layer is

    y = LN1(h + Attention(h)),   out = LN2(y + FFN(y))

so the attention's input x is the layer input h, and both norms come after their residuals.
"""
from __future__ import annotations

import time
from typing import Callable

from attnviz.families.anatomy import Anatomy, Spec, build, config_heads, not_covered
from attnviz.models.converters.common import Progress
from attnviz.models.model import Model
from attnviz.recording import forward as record
from attnviz.recording import transformers_shape as shape  # noqa: F401 (the family's shape)
from attnviz.result import AttentionResult
from attnviz.tokens import TextInput, special_flags, token_strings, tokenize, word_spans

NAME = "encoder"
READS = "text"
STACKS = ("encoder",)
OPTIONS = frozenset({"pair"})
EXTRA_TOKENS = 0
TOKEN_IDS = True
CAUSAL = False
OUTPUT = "embedding or class"

BERT = Spec(layers="encoder.layer", value="attention.self.value", out="attention.output.dense",
            post_norms=("attention.output.LayerNorm", "output.LayerNorm"))
ARCHITECTURES = {
    "bert": BERT, "roberta": BERT, "xlm-roberta": BERT, "electra": BERT,
    "distilbert": Spec(layers="transformer.layer", value="attention.v_lin", out="attention.out_lin",
                       post_norms=("sa_layer_norm", "output_layer_norm")),
}


def anatomy(model: Model) -> Anatomy:
    kind = model.net.config.model_type
    if kind not in ARCHITECTURES:
        raise not_covered(model.name, f"a {kind} text encoder")
    base = model.net.base_model
    return Anatomy(name=f"{model.name} (a {kind} encoder)", root=model.net,
                   layers=build(ARCHITECTURES[kind], base, config_heads(model.net.config)), norm="post-norm LayerNorm")


def forward(model: Model, input: TextInput, size: int | None = None) -> Callable[[], object]:
    """Runs the encoder on ``input`` (a text or a pair of texts) tokenised as capture does."""
    a, b = input if isinstance(input, tuple) else (input, None)
    enc, _ = tokenize(model, a, b)
    inputs = {k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    return lambda: model.net.base_model(**inputs)


def capture(model: Model, input: TextInput, *, progress: Progress | None = None, **options) -> AttentionResult:
    """A text, or a pair of texts ``(a, b)`` (segments A and B, their segment ids kept)."""
    a, b = (input if isinstance(input, tuple) else (input, None))
    t0 = time.perf_counter()
    enc, warnings = tokenize(model, a, b)
    ids = enc["input_ids"][0].tolist()
    t1 = time.perf_counter()
    inputs = {k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    attn, notes = record(model, STACKS, progress, **inputs)
    warnings += notes
    t2 = time.perf_counter()
    segments = enc["token_type_ids"][0].tolist() if "token_type_ids" in enc else None
    return AttentionResult(
        kind="text", model=model.name, attn=attn, tokens=token_strings(model, ids),
        special=special_flags(model, ids, enc), word_spans=word_spans(enc, len(ids)), segments=segments,
        timings={"tokenize_s": t1 - t0, "forward_s": t2 - t1, "copy_s": time.perf_counter() - t2},
        warnings=warnings)
