"""Run a model on one input and return every attention map as an AttentionResult.

Inputs by family:

- encoder: a text, or a pair of texts ``(a, b)`` (segments A and B);
- decoder: a prompt, optionally continued by ``generate`` greedy tokens; the attention is that
  of one forward pass over the whole sequence (prompt + generated);
- encoder-decoder: a source text and an optional ``target`` (generated greedily when absent);
  a pair ``(source, target)`` works too;
- image: a PIL image, resized so that its shorter side is ``size`` pixels (the model's own size
  by default) with its aspect ratio kept, each side a multiple of the patch size;
- custom: whatever the custom model's own capture takes (see attnviz.models.custom).

Attention is always taken in eval mode and without gradients, with the model's default
attention implementation: SDPA where transformers supports it for the model (the loader loads
eager attention; :func:`_default_attention` switches it for the capture, under the model's
lock). SDPA runs are recorded by :class:`attnviz.recorder.record_attention` with
``lazy=True``: the queries, keys, scale and masks of every call, from which the maps are
computed on demand (attnviz.lazy). A model without SDPA whose attention still goes through
transformers' attention registry (Gemma2, which soft-caps its logits) is recorded the same way
by a registered eager function. A model whose attention bypasses both (BLOOM's ALiBi, DeBERTa's
disentangled terms) is run eagerly with ``output_attentions=True`` and its maps materialised,
which the result's warnings say.
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Union

import numpy as np
import torch
from PIL import Image

from attnviz.errors import AttnvizError
from attnviz.inputs import clean_text, to_rgb
from attnviz.lazy import LazyStack
from attnviz.models.converters.common import Progress  # (fraction in [0, 1], message), the store's too
from attnviz.models.loader import Model, token_cap
from attnviz.recorder import RECORDING_EAGER, record_attention, register_eager_recording
from attnviz.result import AttentionResult, PatchGrid

TextInput = Union[str, tuple[str, str]]
MAX_IMAGE_TOKENS = 4096  # patches; each head a view reads is 4096 x 4096 (attention is recorded, see attnviz.lazy)
GENERATE_CAP = 256


def capture(model: Model, input, *, target: str | None = None, generate: int = 0,
            size: int | None = None, progress: Progress | None = None) -> AttentionResult:
    """Run ``model`` on ``input`` and return all its attention maps (see the module docstring).

    progress: called after each attention call of the recorded forward pass (one per layer
    and stack) with the fraction done and a message."""
    started = time.perf_counter()
    with model.lock, torch.inference_mode():
        if model.family == "image":
            if not isinstance(input, Image.Image):
                raise AttnvizError(f"{model.name} is an image model: give it an image, not {type(input).__name__}.")
            result = _capture_image(model, input, size, progress)
        elif model.family == "custom":
            result = model.net.capture(input, model.name)
        else:
            if isinstance(input, Image.Image):
                raise AttnvizError(f"{model.name} is a text model: give it text, not an image.")
            if model.family == "encoder":
                result = _capture_encoder(model, input, progress)
            elif model.family == "decoder":
                result = _capture_decoder(model, _one_text(input, model), generate, progress)
            else:
                source, target = (input if isinstance(input, tuple) else (input, target))
                result = _capture_seq2seq(model, source, target, progress)
    result.timings["total_s"] = time.perf_counter() - started
    return result


# -- recording ------------------------------------------------------------------------------
@contextmanager
def _default_attention(net: torch.nn.Module):
    """Within: the model runs its default attention in a way that record_attention(lazy=True)
    records (yields whether it does): SDPA when transformers supports it for the model; else,
    for a model that calls its attention through transformers' registry, the recording eager
    function (attnviz.recorder.RECORDING_EAGER). Its implementation is set back afterwards."""
    config = getattr(net, "config", None)
    before = getattr(config, "_attn_implementation", None)
    configs = []
    if before == "eager" and getattr(type(net), "_supports_sdpa", False):
        try:
            net.set_attn_implementation("sdpa")
        except (ValueError, ImportError, KeyError):
            pass
    elif before == "eager" and _eager_through_registry(net):
        register_eager_recording()
        configs = list({id(m.config): m.config for m in net.modules() if hasattr(m, "config")}.values())
        for c in configs:
            c._attn_implementation_internal = RECORDING_EAGER
    now = getattr(config, "_attn_implementation", None)
    try:
        yield now in ("sdpa", RECORDING_EAGER)
    finally:
        for c in configs:
            c._attn_implementation_internal = before
        if now == "sdpa" and before != "sdpa":
            net.set_attn_implementation(before)


def _eager_through_registry(net: torch.nn.Module) -> bool:
    """Whether every attention module of ``net`` calls its attention function through
    transformers' registry, with an ``eager_attention_forward`` beside it to delegate to."""
    if not getattr(type(net), "_supports_attention_backend", False):
        return False
    attention = [m for m in net.modules() if type(m).__name__.endswith("Attention")]
    return bool(attention) and all(hasattr(sys.modules[type(m).__module__], "eager_attention_forward")
                                   for m in attention)


def _layer_counts(net: torch.nn.Module, stacks: tuple[str, ...]) -> dict[str, int] | None:
    """Layers per stack from the model's config, or None when the config does not say."""
    config = getattr(net, "config", None)
    if stacks == ("encoder", "decoder", "cross"):
        enc = getattr(config, "encoder_layers", None) or getattr(config, "num_layers", None)
        dec = getattr(config, "decoder_layers", None) or getattr(config, "num_decoder_layers", None) or enc
        return None if not enc else {"encoder": enc, "decoder": dec, "cross": dec}
    layers = getattr(config, "num_hidden_layers", None)
    return None if not layers else {stacks[0]: layers}


def _split_calls(calls: list, counts: dict[str, int]) -> dict[str, list] | None:
    """Recorded calls in call order -> calls per stack (an encoder-decoder runs the encoder's
    layers, then decoder self- and cross-attention alternately); None when they do not fit."""
    if len(calls) != sum(counts.values()):
        return None
    if len(counts) == 1:
        return {next(iter(counts)): calls}
    enc = counts["encoder"]
    return {"encoder": calls[:enc], "decoder": calls[enc::2], "cross": calls[enc + 1::2]}


def _forward(model: Model, stacks: tuple[str, ...], progress: Progress | None, **inputs):
    """Run the model once and return ``({stack: maps}, warnings)``: recorded lazy stacks when
    it runs SDPA (see the module docstring), else materialised float16 eager maps."""
    net = model.net
    counts = _layer_counts(net, stacks)
    total = sum(counts.values()) if counts else 0

    def on_call(n: int) -> None:
        if progress is not None and total:
            progress(min(n / total, 1.0), f"Running {model.name}: attention call {n} of {total}")

    with _default_attention(net) as sdpa:
        if sdpa and counts:
            with record_attention(lazy=True, on_call=on_call) as rec:
                net(**inputs)
            split = _split_calls(rec.calls, counts) if not rec.maps else None
            try:
                if split is not None:
                    return {s: LazyStack(split[s], rec.masks) for s in stacks}, []
            except ValueError:
                pass
    out = net(**inputs, output_attentions=True)
    names = {"encoder": "encoder_attentions" if len(stacks) > 1 else "attentions",
             "decoder": "decoder_attentions" if len(stacks) > 1 else "attentions", "cross": "cross_attentions"}
    warning = (f"{model.name} computes attention in a way attnviz does not recompute from its inputs, so its "
               "maps were materialised in full (memory grows with the square of the length).")
    return {s: _stack(getattr(out, names[s])) for s in stacks}, [warning]


# -- text ---------------------------------------------------------------------------------
def _one_text(input: TextInput, model: Model) -> str:
    if isinstance(input, tuple):
        raise AttnvizError(f"{model.name} takes one text, not a pair.")
    return clean_text(str(input))


def _encode(model: Model, text, pair=None, limit: int | None = None):
    """Tokenise with the model's tokenizer, truncating to ``limit`` tokens with a warning."""
    limit = limit or model.max_tokens
    enc = model.tokenizer(text, pair, return_tensors="pt", truncation=False,
                          return_special_tokens_mask=True, return_token_type_ids=pair is not None)
    warnings = []
    n = enc["input_ids"].shape[1]
    if n > limit:
        warnings.append(f"The input has {n} tokens; {model.name} reads at most {limit}, so it was cut to the first {limit}.")
        enc = model.tokenizer(text, pair, return_tensors="pt", truncation=True, max_length=limit,
                              return_special_tokens_mask=True, return_token_type_ids=pair is not None)
    return enc, warnings


def _tokens(model: Model, ids: list[int]) -> list[str]:
    """Readable token strings: byte-level pieces decoded, SentencePiece's '▁' shown as a space."""
    raw = model.tokenizer.convert_ids_to_tokens(ids)
    if any(t.startswith(("Ġ", "Ċ")) for t in raw):  # byte-level BPE (GPT-2, Llama 3, SmolLM)
        return [model.tokenizer.decode([i]) for i in ids]
    return [t.replace("▁", " ") for t in raw]


def _special(model: Model, ids: list[int]) -> list[bool]:
    """Which tokens are special ([CLS], [SEP], BOS, </s>, padding). The unknown token is not:
    it stands for real input (an emoji, a character the vocabulary lacks)."""
    specials = set(model.tokenizer.all_special_ids) - {model.tokenizer.unk_token_id}
    return [i in specials for i in ids]


def _word_spans(enc, n: int) -> list[tuple[int, int]]:
    """[start, end) token ranges of words (a special token is a word of its own)."""
    word_ids = enc.word_ids(0) if enc.encodings else [None] * n
    spans: list[tuple[int, int]] = []
    for i, w in enumerate(word_ids[:n]):
        if spans and w is not None and word_ids[spans[-1][0]] == w:
            spans[-1] = (spans[-1][0], i + 1)
        else:
            spans.append((i, i + 1))
    return spans


def _stack(attentions) -> np.ndarray:
    """A tuple of per-layer [1, heads, queries, keys] tensors -> float16 [layers, heads, q, k].

    Each layer is copied once, straight into one preallocated float16 tensor (torch converts
    with vector instructions; numpy's float16 ``astype`` is several times slower)."""
    first = attentions[0][0]
    out = torch.empty((len(attentions), *first.shape), dtype=torch.float16)
    for layer, a in enumerate(attentions):
        out[layer].copy_(a[0])
    return out.numpy()


def _capture_encoder(model: Model, input: TextInput, progress: Progress | None = None) -> AttentionResult:
    a, b = (input if isinstance(input, tuple) else (input, None))
    a = clean_text(str(a))
    b = clean_text(str(b)) if b is not None and str(b).strip() else None
    t0 = time.perf_counter()
    enc, warnings = _encode(model, a, b)
    ids = enc["input_ids"][0].tolist()
    t1 = time.perf_counter()
    inputs = {k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    attn, notes = _forward(model, ("encoder",), progress, **inputs)
    warnings += notes
    t2 = time.perf_counter()
    segments = enc["token_type_ids"][0].tolist() if b is not None else None
    return AttentionResult(
        kind="text", model=model.name, attn=attn, tokens=_tokens(model, ids),
        special=_special(model, ids), word_spans=_word_spans(enc, len(ids)), segments=segments,
        timings={"tokenize_s": t1 - t0, "forward_s": t2 - t1, "copy_s": time.perf_counter() - t2},
        warnings=warnings)


def _capture_decoder(model: Model, prompt: str, generate: int, progress: Progress | None = None) -> AttentionResult:
    generate = max(0, min(int(generate), GENERATE_CAP))
    t0 = time.perf_counter()
    enc, warnings = _encode(model, prompt, limit=max(1, model.max_tokens - generate))
    ids = enc["input_ids"].to(model.device)
    prompt_len = ids.shape[1]
    t1 = time.perf_counter()
    if generate:
        pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else model.tokenizer.eos_token_id
        ids = model.net.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=generate,
                                 do_sample=False, pad_token_id=pad)
    t2 = time.perf_counter()
    attn, notes = _forward(model, ("decoder",), progress, input_ids=ids, attention_mask=torch.ones_like(ids),
                           use_cache=False)
    warnings += notes
    t3 = time.perf_counter()
    all_ids = ids[0].tolist()
    spans = _word_spans(enc, prompt_len) + [(i, i + 1) for i in range(prompt_len, len(all_ids))]
    return AttentionResult(
        kind="text", model=model.name, attn=attn, tokens=_tokens(model, all_ids),
        special=_special(model, all_ids), word_spans=spans, causal=True, prompt_len=prompt_len,
        timings={"tokenize_s": t1 - t0, "generate_s": t2 - t1, "forward_s": t3 - t2,
                 "copy_s": time.perf_counter() - t3},
        warnings=warnings)


def _capture_seq2seq(model: Model, source: str, target: str | None,
                     progress: Progress | None = None) -> AttentionResult:
    source = clean_text(str(source))
    t0 = time.perf_counter()
    enc, warnings = _encode(model, source)
    src = enc["input_ids"].to(model.device)
    start = model.net.config.decoder_start_token_id
    t1 = time.perf_counter()
    if target is not None and str(target).strip():
        tgt_enc, tgt_warn = _encode(model, clean_text(str(target)))
        warnings += tgt_warn
        tgt = torch.cat([torch.tensor([[start]]), tgt_enc["input_ids"]], dim=1).to(model.device)
    else:
        tgt_enc = None
        tgt = model.net.generate(src, attention_mask=torch.ones_like(src), max_new_tokens=48, do_sample=False)
    t2 = time.perf_counter()
    attn, notes = _forward(model, ("encoder", "decoder", "cross"), progress, input_ids=src,
                           attention_mask=torch.ones_like(src), decoder_input_ids=tgt, use_cache=False)
    warnings += notes
    t3 = time.perf_counter()
    src_ids, tgt_ids = src[0].tolist(), tgt[0].tolist()
    target_spans = ([(0, 1)] + [(s + 1, e + 1) for s, e in _word_spans(tgt_enc, len(tgt_ids) - 1)]
                    if tgt_enc is not None else [(i, i + 1) for i in range(len(tgt_ids))])
    return AttentionResult(
        kind="text", model=model.name,
        attn=attn,
        tokens=_tokens(model, src_ids), special=_special(model, src_ids),
        word_spans=_word_spans(enc, len(src_ids)),
        target_tokens=_tokens(model, tgt_ids), target_special=_special(model, tgt_ids),
        target_word_spans=target_spans,
        timings={"tokenize_s": t1 - t0, "generate_s": t2 - t1, "forward_s": t3 - t2,
                 "copy_s": time.perf_counter() - t3},
        warnings=warnings)


# -- images -------------------------------------------------------------------------------
def image_input_size(width: int, height: int, short_side: int, patch: int) -> tuple[int, int]:
    """(width, height) fed to the model: shorter side ``short_side``, aspect kept, each side a
    multiple of ``patch`` (at least one patch), at most MAX_IMAGE_TOKENS patches (or the
    deployment's lower cap, see attnviz.models.loader.token_cap)."""
    most = token_cap(MAX_IMAGE_TOKENS)
    scale = short_side / min(width, height)
    w, h = width * scale, height * scale
    n = (w / patch) * (h / patch)
    if n > most:
        shrink = (most / n) ** 0.5
        w, h = w * shrink, h * shrink
    cols, rows = max(1, int(w / patch + 0.5)), max(1, int(h / patch + 0.5))
    while cols * rows > most:
        cols, rows = max(1, cols - (cols >= rows)), max(1, rows - (rows > cols))
    return cols * patch, rows * patch


def _capture_image(model: Model, image: Image.Image, size: int | None,
                   progress: Progress | None = None) -> AttentionResult:
    spec = model.image
    size = int(size or spec.size)
    if size < spec.patch or size % spec.patch:
        raise AttnvizError(f"The input size must be a positive multiple of {model.name}'s patch size, {spec.patch} px; got {size}.")
    t0 = time.perf_counter()
    w, h = image_input_size(*image.size, size, spec.patch)
    seen = to_rgb(image).resize((w, h), Image.Resampling.BICUBIC)
    pixels = np.asarray(seen, dtype=np.float32) / 255.0
    pixels = (pixels - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    pixel_values = torch.from_numpy(pixels.transpose(2, 0, 1)[None].copy()).to(model.device)
    t1 = time.perf_counter()
    kwargs = {"interpolate_pos_encoding": True} if _accepts(model.net, "interpolate_pos_encoding") else {}
    attn, warnings = _forward(model, ("encoder",), progress, pixel_values=pixel_values, **kwargs)
    t2 = time.perf_counter()
    rows, cols = h // spec.patch, w // spec.patch
    prefix = attn["encoder"].shape[-1] - rows * cols
    tokens = [f"[{'CLS' if i == 0 else f'REG{i}'}]" for i in range(prefix)]
    tokens += [f"({r},{c})" for r in range(rows) for c in range(cols)]
    return AttentionResult(
        kind="image", model=model.name, attn=attn, tokens=tokens, warnings=warnings,
        special=[i < prefix for i in range(len(tokens))],
        grid=PatchGrid(rows=rows, cols=cols, patch_px=spec.patch, prefix=prefix),
        image=np.asarray(seen, dtype=np.uint8),
        timings={"preprocess_s": t1 - t0, "forward_s": t2 - t1})


def _accepts(net: torch.nn.Module, arg: str) -> bool:
    import inspect

    return arg in inspect.signature(net.forward).parameters
