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

Attention is always taken in eval mode and without gradients.
"""
from __future__ import annotations

import time
from typing import Union

import numpy as np
import torch
from PIL import Image

from attnviz.errors import AttnvizError
from attnviz.inputs import clean_text, to_rgb
from attnviz.models.loader import Model, token_cap
from attnviz.result import AttentionResult, PatchGrid

TextInput = Union[str, tuple[str, str]]
MAX_IMAGE_TOKENS = 4096  # patches; bounds memory at [12, 12, 4096, 4096] float16 = 4.8 GB
GENERATE_CAP = 256


def capture(model: Model, input, *, target: str | None = None, generate: int = 0,
            size: int | None = None) -> AttentionResult:
    """Run ``model`` on ``input`` and return all its attention maps (see the module docstring)."""
    started = time.perf_counter()
    with model.lock, torch.inference_mode():
        if model.family == "image":
            if not isinstance(input, Image.Image):
                raise AttnvizError(f"{model.name} is an image model: give it an image, not {type(input).__name__}.")
            result = _capture_image(model, input, size)
        elif model.family == "custom":
            result = model.net.capture(input, model.name)
        else:
            if isinstance(input, Image.Image):
                raise AttnvizError(f"{model.name} is a text model: give it text, not an image.")
            if model.family == "encoder":
                result = _capture_encoder(model, input)
            elif model.family == "decoder":
                result = _capture_decoder(model, _one_text(input, model), generate)
            else:
                source, target = (input if isinstance(input, tuple) else (input, target))
                result = _capture_seq2seq(model, source, target)
    result.timings["total_s"] = time.perf_counter() - started
    return result


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


def _capture_encoder(model: Model, input: TextInput) -> AttentionResult:
    a, b = (input if isinstance(input, tuple) else (input, None))
    a = clean_text(str(a))
    b = clean_text(str(b)) if b is not None and str(b).strip() else None
    t0 = time.perf_counter()
    enc, warnings = _encode(model, a, b)
    ids = enc["input_ids"][0].tolist()
    t1 = time.perf_counter()
    inputs = {k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    out = model.net(**inputs, output_attentions=True)
    t2 = time.perf_counter()
    attn = _stack(out.attentions)
    segments = enc["token_type_ids"][0].tolist() if b is not None else None
    return AttentionResult(
        kind="text", model=model.name, attn={"encoder": attn}, tokens=_tokens(model, ids),
        special=_special(model, ids), word_spans=_word_spans(enc, len(ids)), segments=segments,
        timings={"tokenize_s": t1 - t0, "forward_s": t2 - t1, "copy_s": time.perf_counter() - t2},
        warnings=warnings)


def _capture_decoder(model: Model, prompt: str, generate: int) -> AttentionResult:
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
    out = model.net(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True, use_cache=False)
    t3 = time.perf_counter()
    attn = _stack(out.attentions)
    all_ids = ids[0].tolist()
    spans = _word_spans(enc, prompt_len) + [(i, i + 1) for i in range(prompt_len, len(all_ids))]
    return AttentionResult(
        kind="text", model=model.name, attn={"decoder": attn}, tokens=_tokens(model, all_ids),
        special=_special(model, all_ids), word_spans=spans, causal=True, prompt_len=prompt_len,
        timings={"tokenize_s": t1 - t0, "generate_s": t2 - t1, "forward_s": t3 - t2,
                 "copy_s": time.perf_counter() - t3},
        warnings=warnings)


def _capture_seq2seq(model: Model, source: str, target: str | None) -> AttentionResult:
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
    out = model.net(input_ids=src, attention_mask=torch.ones_like(src), decoder_input_ids=tgt,
                    output_attentions=True, use_cache=False)
    t3 = time.perf_counter()
    src_ids, tgt_ids = src[0].tolist(), tgt[0].tolist()
    target_spans = ([(0, 1)] + [(s + 1, e + 1) for s, e in _word_spans(tgt_enc, len(tgt_ids) - 1)]
                    if tgt_enc is not None else [(i, i + 1) for i in range(len(tgt_ids))])
    return AttentionResult(
        kind="text", model=model.name,
        attn={"encoder": _stack(out.encoder_attentions), "decoder": _stack(out.decoder_attentions),
              "cross": _stack(out.cross_attentions)},
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


def image_pixels(model: Model, image: Image.Image, size: int | None) -> tuple[torch.Tensor, Image.Image]:
    """(pixel_values [1, 3, height, width] normalised as the model wants, on its device; the
    resized picture the model sees) for an image model, shorter side ``size`` (see
    :func:`image_input_size`)."""
    spec = model.image
    size = int(size or spec.size)
    if size < spec.patch or size % spec.patch:
        raise AttnvizError(f"The input size must be a positive multiple of {model.name}'s patch size, {spec.patch} px; got {size}.")
    w, h = image_input_size(*image.size, size, spec.patch)
    seen = to_rgb(image).resize((w, h), Image.Resampling.BICUBIC)
    pixels = np.asarray(seen, dtype=np.float32) / 255.0
    pixels = (pixels - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    return torch.from_numpy(pixels.transpose(2, 0, 1)[None].copy()).to(model.device), seen


def _capture_image(model: Model, image: Image.Image, size: int | None) -> AttentionResult:
    spec = model.image
    t0 = time.perf_counter()
    pixel_values, seen = image_pixels(model, image, size)
    w, h = seen.size
    t1 = time.perf_counter()
    kwargs = {"interpolate_pos_encoding": True} if _accepts(model.net, "interpolate_pos_encoding") else {}
    out = model.net(pixel_values=pixel_values, output_attentions=True, **kwargs)
    t2 = time.perf_counter()
    attn = _stack(out.attentions)
    rows, cols = h // spec.patch, w // spec.patch
    prefix = attn.shape[-1] - rows * cols
    tokens = [f"[{'CLS' if i == 0 else f'REG{i}'}]" for i in range(prefix)]
    tokens += [f"({r},{c})" for r in range(rows) for c in range(cols)]
    return AttentionResult(
        kind="image", model=model.name, attn={"encoder": attn}, tokens=tokens,
        special=[i < prefix for i in range(len(tokens))],
        grid=PatchGrid(rows=rows, cols=cols, patch_px=spec.patch, prefix=prefix),
        image=np.asarray(seen, dtype=np.uint8),
        timings={"preprocess_s": t1 - t0, "forward_s": t2 - t1, "copy_s": time.perf_counter() - t2})


def _accepts(net: torch.nn.Module, arg: str) -> bool:
    import inspect

    return arg in inspect.signature(net.forward).parameters
