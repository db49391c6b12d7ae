"""Run a model on one input and return every attention map as an AttentionResult.

Inputs by family:

- encoder: a text, or a pair of texts ``(a, b)`` (segments A and B);
- decoder: a prompt, optionally continued by ``generate`` greedy tokens; the attention is that
  of one forward pass over the whole sequence (prompt + generated);
- encoder-decoder: a source text and an optional ``target`` (generated greedily when absent);
  a pair ``(source, target)`` works too;
- image: a PIL image, resized so that its shorter side is ``size`` pixels (the model's own size
  by default) with its aspect ratio kept, each side a multiple of the patch size;
- custom (attnviz's own models, see attnviz.lab): a text their tokenizer reads, or for an image
  classifier a PIL image, resized to the model's square input. The module runs under
  :func:`attnviz.record_attention` and the result is built from the maps recorded (see
  ``_capture_recorded``).

Attention is always taken in eval mode and without gradients.
"""
from __future__ import annotations

import time
from typing import Union

import numpy as np
import torch
from PIL import Image

from attnviz import limits
from attnviz.errors import AttnvizError
from attnviz.inputs import clean_text, to_rgb
from attnviz.limits import token_cap
from attnviz.models.model import Model
from attnviz.recorder import record_attention
from attnviz.result import AttentionResult, PatchGrid

TextInput = Union[str, tuple[str, str]]
MAX_IMAGE_TOKENS = 4096  # patches; bounds memory at [12, 12, 4096, 4096] float16 = 4.8 GB
CHARS_PER_TOKEN = 20  # a text is cut at max_tokens * this many characters before it is tokenised
GENERATE_CAP = 256


def capture(model: Model, input, *, target: str | None = None, generate: int = 0,
            size: int | None = None) -> AttentionResult:
    """Run ``model`` on ``input`` and return all its attention maps (see the module docstring)."""
    started = time.perf_counter()
    cut: list[str] = []  # before any lock: a huge text is cut here, so tokenising it blocks nobody
    if model.family not in ("image", "custom") and not isinstance(input, Image.Image):
        input = (tuple(_bound_text(t, model, cut) for t in input) if isinstance(input, tuple)
                 else _bound_text(input, model, cut))
        target = _bound_text(target, model, cut) if target is not None else None
    with model.lock, limits.SLOTS, torch.inference_mode():
        if model.family == "image":
            if not isinstance(input, Image.Image):
                raise AttnvizError(f"{model.name} is an image model: give it an image, not {type(input).__name__}.")
            result = _capture_image(model, input, size)
        elif model.family == "custom":
            result = _capture_recorded(model, input, size)
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
    result.warnings[:0] = cut
    return result


def _bound_text(text, model: Model, warnings: list[str]):
    """``text`` cut to ``model.max_tokens * CHARS_PER_TOKEN`` characters, more than the model
    reads, with a line in ``warnings`` when it was cut: two million zero-width joiners, pasted,
    would otherwise take seconds to tokenise while other sessions wait."""
    if text is None:
        return None
    text = str(text)
    limit = max(1, model.max_tokens) * CHARS_PER_TOKEN
    if len(text) <= limit:
        return text
    warnings.append(f"The text has {len(text):,} characters; only the first {limit:,} were read "
                    f"({model.name} reads at most {model.max_tokens:,} tokens).")
    return text[:limit]


# -- text ---------------------------------------------------------------------------------
def _one_text(input: TextInput, model: Model) -> str:
    if isinstance(input, tuple):
        raise AttnvizError(f"{model.name} takes one text, not a pair.")
    return clean_text(str(input))


def _encode(model: Model, text, pair=None, limit: int | None = None):
    """Tokenise with the model's tokenizer, truncating to ``limit`` tokens with a warning.

    Special-token strings the user typed ("[SEP]", "<|im_start|>") are split like any text
    (``split_special_tokens``), so that they stay the user's words; where the tokenizer still
    reads one as a special token (T5's "</s>"), a warning says so. Text of which most tokens
    are the unknown token (a model uploaded without its vocabulary) gets a warning too."""
    limit = limit or model.max_tokens
    kwargs = dict(return_tensors="pt", return_special_tokens_mask=True, return_token_type_ids=pair is not None,
                  split_special_tokens=True)
    enc = model.tokenizer(text, pair, truncation=False, **kwargs)
    warnings = []
    n = enc["input_ids"].shape[1]
    if n > limit:
        warnings.append(f"The input has {n} tokens; {model.name} reads at most {limit}, so it was cut to the first {limit}.")
        enc = model.tokenizer(text, pair, truncation=True, max_length=limit, **kwargs)
    ids, added = enc["input_ids"][0].tolist(), enc["special_tokens_mask"][0].tolist()
    specials = set(model.tokenizer.all_special_ids)
    typed = sorted({model.tokenizer.convert_ids_to_tokens(i) for i, a in zip(ids, added) if not a and i in specials}
                   - {model.tokenizer.unk_token})
    if typed:
        warnings.append(f"{model.name} reads {', '.join(repr(t) for t in typed)} in the text as its special "
                        "token (its tokenizer cannot split it); it is shown as the text's own token.")
    words = [i for i, a in zip(ids, added) if not a]
    unknown = sum(i == model.tokenizer.unk_token_id for i in words)
    if model.tokenizer.unk_token_id is not None and len(words) >= 2 and unknown > len(words) / 2:
        warnings.append(f"{unknown} of {len(words)} tokens are unknown to {model.name}'s tokenizer "
                        f"({model.tokenizer.unk_token}): its vocabulary may be missing or not this model's.")
    return enc, warnings


def _tokens(model: Model, ids: list[int]) -> list[str]:
    """Readable token strings: byte-level pieces decoded, SentencePiece's '▁' shown as a space."""
    raw = model.tokenizer.convert_ids_to_tokens(ids)
    if any(t.startswith(("Ġ", "Ċ")) for t in raw):  # byte-level BPE (GPT-2, Llama 3, SmolLM)
        return [model.tokenizer.decode([i]) for i in ids]
    return [t.replace("▁", " ") for t in raw]


def _special(model: Model, ids: list[int], enc=None) -> list[bool]:
    """Which tokens are special ([CLS], [SEP], BOS, </s>, padding). The first tokens, those of
    ``enc``, are special when the tokenizer added them (a special-token string the user typed is
    the user's text); later ones (generated) when their id is a special one. The unknown token
    is never special: it stands for real input (an emoji, a character the vocabulary lacks)."""
    added = [bool(a) for a in enc["special_tokens_mask"][0].tolist()] if enc is not None else []
    specials = set(model.tokenizer.all_special_ids) - {model.tokenizer.unk_token_id}
    return added[:len(ids)] + [i in specials for i in ids[len(added):]]


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
        special=_special(model, ids, enc), word_spans=_word_spans(enc, len(ids)), segments=segments,
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
        special=_special(model, all_ids, enc), word_spans=spans, causal=True, prompt_len=prompt_len,
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
        tokens=_tokens(model, src_ids), special=_special(model, src_ids, enc),
        word_spans=_word_spans(enc, len(src_ids)),
        target_tokens=_tokens(model, tgt_ids), target_special=_special(model, tgt_ids),
        target_word_spans=target_spans,
        timings={"tokenize_s": t1 - t0, "generate_s": t2 - t1, "forward_s": t3 - t2,
                 "copy_s": time.perf_counter() - t3},
        warnings=warnings)


# -- images -------------------------------------------------------------------------------
def image_input_size(width: int, height: int, short_side: int, patch: int,
                     most: int | None = None) -> tuple[int, int]:
    """(width, height) fed to the model: shorter side ``short_side``, aspect kept, each side a
    multiple of ``patch`` (at least one patch), at most ``most`` patches (default
    MAX_IMAGE_TOKENS or the deployment's lower cap, see attnviz.limits.token_cap; a loaded
    model's own cap is its ``max_tokens``)."""
    most = most or token_cap(MAX_IMAGE_TOKENS)
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


def _capture_image(model: Model, image: Image.Image, size: int | None) -> AttentionResult:
    spec = model.image
    size = int(size or spec.size)
    if size < spec.patch or size % spec.patch:
        raise AttnvizError(f"The input size must be a positive multiple of {model.name}'s patch size, {spec.patch} px; got {size}.")
    t0 = time.perf_counter()
    w, h = image_input_size(*image.size, size, spec.patch, model.max_tokens)
    seen = to_rgb(image).resize((w, h), Image.Resampling.BICUBIC)
    pixel_values = _pixel_values(seen, model)
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


def _pixel_values(seen: Image.Image, model: Model) -> torch.Tensor:
    """An RGB image as the model reads it: float32 [1, 3, height, width], scaled to [0, 1] and
    normalised by the model's mean and std."""
    spec = model.image
    pixels = np.asarray(seen, dtype=np.float32) / 255.0
    pixels = (pixels - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    return torch.from_numpy(pixels.transpose(2, 0, 1)[None].copy()).to(model.device)


def _accepts(net: torch.nn.Module, arg: str) -> bool:
    import inspect

    return arg in inspect.signature(net.forward).parameters


# -- attnviz's own models -------------------------------------------------------------------
POOL_TOKEN = "[POOL]"


def _capture_recorded(model: Model, input, size: int | None) -> AttentionResult:
    """A lab model (attnviz.lab) run under the attention recorder.

    Its input is read by ``model.tokenizer.encode`` (text) or resized to its square input
    (``model.image``: an image classifier, whose tokens are [CLS] and the patches). Every
    attention call it makes is recorded, one ``[heads, queries, keys]`` map per layer. A
    classifier that pools its tokens with one learned query (attention pooling, one weight per
    token; its module says so with ``pools = True``) records one map with a single query: it becomes a leading ``[POOL]`` token whose row
    holds those weights, while the other tokens' rows keep all their weight on themselves (no
    attention mixes them; an LSTM does)."""
    t0 = time.perf_counter()
    warnings: list[str] = []
    if model.image is not None:
        if not isinstance(input, Image.Image):
            raise AttnvizError(f"{model.name} is an image model: give it an image, not {type(input).__name__}.")
        side = model.image.size
        if size is not None and int(size) != side:
            warnings.append(f"{model.name} reads {side} x {side} px images only; the image was resized to that.")
        seen = to_rgb(input).resize((side, side), Image.Resampling.BICUBIC)
        x = _pixel_values(seen, model)
        rows = side // model.image.patch
        tokens = ["[CLS]"] + [f"({r},{c})" for r in range(rows) for c in range(rows)]
        special = [i == 0 for i in range(len(tokens))]
    else:
        if isinstance(input, Image.Image):
            raise AttnvizError(f"{model.name} is a text model: give it text, not an image.")
        encoded = model.tokenizer.encode(_one_text(input, model))
        x = torch.tensor([encoded.ids], device=model.device)
        tokens, special, warnings = list(encoded.tokens), list(encoded.special), list(encoded.warnings)
    t1 = time.perf_counter()
    with record_attention() as rec:
        model.net(x)
    t2 = time.perf_counter()
    pooled = bool(getattr(model.net, "pools", False))
    attn = _recorded_stack(rec.maps, len(tokens), pooled)
    if pooled:
        tokens, special = [POOL_TOKEN] + tokens, [True] + special
    timings = {"tokenize_s": t1 - t0, "forward_s": t2 - t1, "copy_s": time.perf_counter() - t2}
    if model.image is None:
        return AttentionResult(kind="text", model=model.name, attn={"encoder": attn}, tokens=tokens,
                               special=special, word_spans=[(i, i + 1) for i in range(len(tokens))],
                               timings=timings, warnings=warnings)
    return AttentionResult(
        kind="image", model=model.name, attn={"encoder": attn}, tokens=tokens, special=special,
        grid=PatchGrid(rows=rows, cols=rows, patch_px=model.image.patch, prefix=1),
        image=np.asarray(seen, dtype=np.uint8), timings=timings, warnings=warnings)


def _recorded_stack(maps: list[torch.Tensor], n: int, pooled: bool) -> np.ndarray:
    """The recorder's maps (each [1, heads, queries, keys]) as one float16 array
    [layers, heads, queries, keys]. ``pooled``: the one map has one query over the ``n``
    tokens; it becomes [1, heads, n + 1, n + 1] with a pooling token first, its row first (the
    pooling query gives itself no weight) and the identity below it."""
    if not maps:
        raise AttnvizError("The model made no attention call that attnviz could record.")
    if pooled:
        pool = maps[0][0, :, 0].float()  # [heads, n]
        heads = pool.shape[0]
        attn = torch.zeros(1, heads, n + 1, n + 1)
        attn[0, :, 0, 1:] = pool
        attn[0, :, 1:, 1:] = torch.eye(n)
        return attn.to(torch.float16).numpy()
    return torch.stack([m[0] for m in maps]).to(torch.float16).cpu().numpy()


# -- token ids ------------------------------------------------------------------------------
def capture_ids(model: Model, ids: list[int]) -> AttentionResult:
    """Run a text encoder or decoder on token ``ids`` exactly as given: no tokenisation and no
    special tokens added (the caller puts BOS or [CLS] ... [SEP] where the model wants them).
    The way in for inputs that are not text, such as the repeated random sequence of
    attnviz.probes. Each token is a word of its own."""
    if model.family not in ("encoder", "decoder"):
        raise AttnvizError(f"token ids go to text encoders and decoders; {model.name} is of the {model.family!r} family.")
    ids = [int(i) for i in ids]
    if not ids or len(ids) > model.max_tokens:
        raise AttnvizError(f"{model.name} reads 1 to {model.max_tokens} tokens; got {len(ids)}.")
    started = time.perf_counter()
    with model.lock, torch.inference_mode():
        x = torch.tensor([ids], device=model.device)
        kwargs = {"use_cache": False} if model.family == "decoder" else {}
        out = model.net(input_ids=x, attention_mask=torch.ones_like(x), output_attentions=True, **kwargs)
        attn = _stack(out.attentions)
    stack = "decoder" if model.family == "decoder" else "encoder"
    return AttentionResult(
        kind="text", model=model.name, attn={stack: attn}, tokens=_tokens(model, ids),
        special=_special(model, ids), word_spans=[(i, i + 1) for i in range(len(ids))],
        causal=model.family == "decoder", prompt_len=len(ids) if model.family == "decoder" else None,
        timings={"total_s": time.perf_counter() - started})
