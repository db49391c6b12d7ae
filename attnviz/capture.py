"""Run a model on one input and return every attention map as an AttentionResult.

Inputs by family:

- encoder: a text, or a pair of texts ``(a, b)`` (segments A and B);
- decoder: a prompt, optionally continued by ``generate`` greedy tokens; the attention is that
  of one forward pass over the whole sequence (prompt + generated);
- encoder-decoder: a source text and an optional ``target`` (generated greedily when absent);
  a pair ``(source, target)`` works too;
- image: a PIL image, resized so that its shorter side is ``size`` pixels (the model's own size
  by default) with its aspect ratio kept, each side a multiple of the patch size (of whole
  windows at every stage for a windowed model such as Swin, which gives one stack per stage);
  a two-tower model (CLIP, SigLIP) also takes a text, read by its text tower;
- vision-language: a PIL image and a ``prompt``, optionally continued by ``generate`` greedy
  tokens; the image tokens are placed back on the picture (AttentionResult.image_tokens);
- custom (attnviz's own models, see attnviz.lab): a text their tokenizer reads, or for an image
  classifier a PIL image, resized to the model's square input. The module runs under
  :func:`attnviz.record_attention` and the result is built from the maps recorded (see
  ``_capture_recorded``).

Attention is always taken in eval mode and without gradients, with the model's default
attention implementation: SDPA where transformers supports it for the model (the loader loads
eager attention; :func:`attnviz.recorder.default_attention` switches it for the capture, as the
setup of the model's gate in the recorded mode, see attnviz.jobs). SDPA runs are recorded by
:class:`attnviz.recorder.record_attention` with ``lazy=True``: the queries, keys, scale, masks
and additive biases of every call, from which the maps are computed on demand (attnviz.lazy). A
model without SDPA whose attention still goes through transformers' attention registry (Gemma2,
which soft-caps its logits) is recorded the same way by a registered eager function; one whose
eager attention is written out in torch operations (BLOOM and MPT, with ALiBi) is traced by the
recorder into the same calls. A model whose attention none of these records (DeBERTa's
disentangled terms, a bias per query and key computed in each layer) is run again eagerly with
``output_attentions=True`` and its maps materialised, which the result's warnings say.
"""
from __future__ import annotations

import inspect
import time
from typing import Union

import numpy as np
import torch
from PIL import Image

import attnviz.jobs as jobs
import attnviz.limits as limits
from attnviz.errors import AttnvizError
from attnviz.inputs import clean_text, to_rgb
from attnviz.lazy import LazyStack
from attnviz.limits import token_cap
from attnviz.models.converters.common import Progress  # (fraction in [0, 1], message), the store's too
from attnviz.models.loader import capture_shape
from attnviz.models.model import AS_LOADED, Model
from attnviz.recorder import default_attention, record_attention
from attnviz.result import AttentionResult, PatchGrid, grid_tokens
from attnviz.tokens import special_flags, token_strings, tokenize, word_spans

TextInput = Union[str, tuple[str, str]]
MAX_IMAGE_TOKENS = 4096  # patches; each head a view reads is 4096 x 4096 (attention is recorded, see attnviz.lazy)
CHARS_PER_TOKEN = 20  # a text is cut at max_tokens * this many characters before it is tokenised
GENERATE_CAP = 256
SEQ2SEQ_GENERATE = 48  # tokens an encoder-decoder writes as its target when none is given


def capture(model: Model, input, *, target: str | None = None, generate: int = 0,
            size: int | None = None, prompt: str | None = None, progress: Progress | None = None) -> AttentionResult:
    """Run ``model`` on ``input`` and return all its attention maps (see the module docstring).

    Options that do not apply to the model's family or to the input are refused with an
    AttnvizError, never ignored. progress: called after each attention call of the recorded
    forward pass (one per layer and stack) with the fraction done and a message.

    It runs as a job (attnviz.jobs): the caller's, or one of its own admitted for
    :func:`estimate_bytes`; each attention call ends a step, and the model is used through its
    gate, so captures on one model interleave layer by layer."""
    started = time.perf_counter()
    check_options(model, input, target=target, generate=generate, size=size, prompt=prompt)
    cut: list[str] = []  # before any lock: a huge text is cut here, so tokenising it blocks nobody
    if not isinstance(input, Image.Image):
        input = (tuple(bound_text(t, model, cut) for t in input) if isinstance(input, tuple)
                 else bound_text(input, model, cut))
        target = bound_text(target, model, cut) if target is not None else None
    need = estimate_bytes(model, input, target=target, generate=generate, size=size, prompt=prompt)
    with jobs.within(f"{model.name} on your input", need), torch.inference_mode():
        if model.family == "vision-language":
            if not isinstance(input, Image.Image):
                raise AttnvizError(f"{model.name} is a vision-language model: give it an image, and the text as prompt=.")
            result = _capture_vision_language(model, input, prompt or "", generate)
        elif model.family == "image":
            if isinstance(input, Image.Image):
                result = _capture_image(model, input, size, progress)
            elif model.text_tower is not None:
                result = _capture_text_tower(model, _one_text(input, model))
            else:
                raise AttnvizError(f"{model.name} is an image model: give it an image, not {type(input).__name__}.")
        elif model.family == "custom":
            result = _capture_recorded(model, input, size)
        else:
            if isinstance(input, Image.Image):
                raise AttnvizError(f"{model.name} is a text model: give it text, not an image.")
            if model.family == "encoder":
                result = _capture_encoder(model, input, progress)
            elif model.family == "decoder":
                result = _capture_decoder(model, _one_text(input, model), generate, progress)
            else:
                result = _capture_seq2seq(model, _one_text(input, model), target, progress)
    result.timings["total_s"] = time.perf_counter() - started
    result.warnings[:0] = cut
    return result


def bound_text(text, model: Model, warnings: list[str], tokens: int | None = None):
    """``text`` cut to ``tokens * CHARS_PER_TOKEN`` characters (``tokens``: the model's
    ``max_tokens`` by default, never more), more than that many tokens take, with a line in
    ``warnings`` when it was cut: two million zero-width joiners, pasted, would otherwise take
    seconds to tokenise while other sessions wait."""
    if text is None:
        return None
    text = str(text)
    tokens = model.max_tokens if tokens is None else min(tokens, model.max_tokens)
    limit = max(1, tokens) * CHARS_PER_TOKEN
    if len(text) <= limit:
        return text
    warnings.append(f"The text has {len(text):,} characters; only the first {limit:,} were read "
                    f"({model.name} reads at most {tokens:,} tokens here).")
    return text[:limit]


def estimate_bytes(model: Model, input, *, target: str | None = None, generate: int = 0, size: int | None = None,
                   prompt: str | None = None) -> int:
    """An upper estimate of the memory a capture of ``input`` takes beyond the model's weights
    (``limits.capture_bytes``) at its :func:`input_tokens`, made before anything is tokenised."""
    return bytes_at(model, input_tokens(model, input, target=target, generate=generate, size=size, prompt=prompt))


def bytes_at(model: Model, n_tokens: int) -> int:
    """The memory a capture of ``n_tokens`` tokens takes beyond the model's weights
    (``limits.capture_bytes`` of the model's shape)."""
    return limits.capture_bytes(max(1, n_tokens), *_shape(model))


def input_tokens(model: Model, input, *, target: str | None = None, generate: int = 0, size: int | None = None,
                 prompt: str | None = None) -> int:
    """An upper bound of the tokens a capture of ``input`` reads, made before anything is
    tokenised: a text of b UTF-8 bytes is at most 2b + 8 tokens (no tokenizer makes more than a
    token a byte, and a SentencePiece word-start piece, and the special tokens, come on top),
    plus the tokens to generate, at most the model's cap; an image is its patches at the chosen
    size (plus a few prefix tokens); a vision-language model's sequence, its cap. At least 1."""
    if isinstance(input, Image.Image):
        if model.family == "vision-language" or model.image is None:
            n = model.max_tokens
        else:
            spec = model.image
            step = int(size or spec.size) if model.family != "custom" else spec.size
            w, h = image_input_size(*input.size, max(step, spec.step), spec.step, model.max_patches or None,
                                    per_cell=(spec.step // spec.patch) ** 2)
            n = (w // spec.patch) * (h // spec.patch) + 8  # within the model's patch cap already
    else:
        texts = [t for t in (input if isinstance(input, tuple) else (input,)) + (target, prompt) if t is not None]
        source = sum(2 * len(str(t).encode("utf-8", "surrogatepass")) + 8 for t in texts)
        n = source + max(0, min(int(generate), GENERATE_CAP)) + (SEQ2SEQ_GENERATE if model.family == "encoder-decoder" else 0)
        n = min(n, model.max_tokens or n)  # an image model's text tower has no token cap of its own here
    return max(1, n)


def _shape(model: Model) -> tuple[int, int, int, int, bool]:
    """(layers, heads, hidden, stacks, recorded) of ``model`` for limits.capture_bytes; attnviz's
    own models keep every map they record (not recorded lazily)."""
    if model.family == "custom":
        cfg = model.net.config
        return int(cfg.n_layers), int(cfg.n_heads), int(cfg.d_model), 1, False
    return capture_shape(model.net.config, model.family, type(model.net))


def check_options(model: Model, input, *, target=None, generate: int = 0, size: int | None = None,
                  prompt: str | None = None) -> None:
    """Refuse, in one line each, options that do not apply to ``model``'s family or to ``input``:
    ``generate`` beyond decoders with a language-model head, ``target`` beyond encoder-decoders,
    ``size`` on text, and a tuple other than an encoder's pair of texts (for an encoder-decoder
    the target goes in ``target=``, so that a tuple never means two things)."""
    family, name = model.family, model.name
    if family == "custom":
        return
    is_image = isinstance(input, Image.Image)
    if int(generate) < 0:
        raise AttnvizError(f"generate= is a number of tokens, 0 or more; got {generate}.")
    if generate and family not in ("decoder", "vision-language"):
        raise AttnvizError(f"generate= applies to decoders; {name} is {_a(family)} model.")
    if prompt is not None and family != "vision-language":
        raise AttnvizError(f"prompt= applies to vision-language models; {name} is {_a(family)} model.")
    if size is not None and family == "vision-language":
        raise AttnvizError(f"size= does not apply to {name}: a vision-language model's processor sizes the image.")
    if generate and not model.can_generate:
        raise AttnvizError(f"{name} is a decoder without a language-model head, so it cannot generate; "
                           "capture the prompt alone (generate=0).")
    if target is not None and family != "encoder-decoder":
        raise AttnvizError(f"target= applies to encoder-decoders; {name} is {_a(family)} model.")
    if size is not None and not is_image:
        raise AttnvizError(f"size= applies to images; {name} was given {type(input).__name__}.")
    if isinstance(input, tuple):
        if len(input) != 2:
            raise AttnvizError(f"A tuple is a pair of texts (a, b); got {len(input)} items.")
        if family == "encoder-decoder":
            raise AttnvizError(f"{name} is an encoder-decoder: give the source as the input and the target as "
                               "target=..., not a pair (a pair is two segments of an encoder's input).")


def _a(family: str) -> str:
    return f"{'an' if family[0] in 'aeiou' else 'a'} {family}"


# -- recording ------------------------------------------------------------------------------
RECORDED = "recorded"  # the gate's mode of a capture's forward pass (with the net it switches: one mode per net)


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


def _forward(model: Model, stacks: tuple[str, ...], progress: Progress | None, net: torch.nn.Module | None = None,
             **inputs):
    """Run the model (or ``net``, a part of it such as a two-tower model's vision tower) and
    return ``({stack: maps}, warnings)``: lazy stacks when every attention call was recorded
    (see the module docstring), else, from a second, eager run, materialised float16 maps."""
    net = net or model.net
    counts = _layer_counts(net, stacks)
    total = sum(counts.values()) if counts else 0

    def on_call(n: int) -> None:  # a step ends with each attention call
        if progress is not None and total:
            progress(min(n / total, 1.0), f"Running {model.name}: attention call {n} of {total}")
        jobs.checkpoint(min(n / total, 1.0) if total else None)

    with jobs.hold(model.gate, (RECORDED, id(net)), lambda: default_attention(net)):
        if counts:
            with record_attention(lazy=True, on_call=on_call) as rec:
                net(**inputs)
            split = _split_calls(rec.calls, counts) if not rec.maps else None
            try:
                if split is not None:
                    return {s: LazyStack(split[s], rec.masks) for s in stacks}, []
            except ValueError:
                pass
    with jobs.hold(model.gate, AS_LOADED):
        out = net(**inputs, output_attentions=True)
    names = {"encoder": "encoder_attentions" if len(stacks) > 1 else "attentions",
             "decoder": "decoder_attentions" if len(stacks) > 1 else "attentions", "cross": "cross_attentions"}
    warning = (f"{model.name} computes attention in a way attnviz does not recompute from its inputs, so its "
               "maps were materialised in full (memory grows with the square of the length).")
    return {s: _stack(_attentions(out, model, names[s])) for s in stacks}, [warning]


def last_logits_only(net: torch.nn.Module) -> dict:
    """The argument that makes a language model compute the logits of the last position only
    (``logits_to_keep``), where its forward takes it: a capture reads attention, and the logits
    of every position are a long input's largest tensor (8,192 positions x 49,152 words of
    float32 is 1.6 GB for SmolLM2) and a tenth of its arithmetic."""
    return {"logits_to_keep": 1} if accepts(net, "logits_to_keep") else {}


# -- text ---------------------------------------------------------------------------------
def _one_text(input: TextInput, model: Model) -> str:
    if isinstance(input, tuple):
        raise AttnvizError(f"{model.name} takes one text, not a pair.")
    return clean_text(str(input))


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
    t0 = time.perf_counter()
    enc, warnings = tokenize(model, a, b)
    ids = enc["input_ids"][0].tolist()
    t1 = time.perf_counter()
    inputs = {k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    attn, notes = _forward(model, ("encoder",), progress, **inputs)
    warnings += notes
    t2 = time.perf_counter()
    segments = enc["token_type_ids"][0].tolist() if "token_type_ids" in enc else None
    return AttentionResult(
        kind="text", model=model.name, attn=attn, tokens=token_strings(model, ids),
        special=special_flags(model, ids, enc), word_spans=word_spans(enc, len(ids)), segments=segments,
        timings={"tokenize_s": t1 - t0, "forward_s": t2 - t1, "copy_s": time.perf_counter() - t2},
        warnings=warnings)


def _capture_decoder(model: Model, prompt: str, generate: int, progress: Progress | None = None) -> AttentionResult:
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
    attn, notes = _forward(model, ("decoder",), progress, input_ids=ids, attention_mask=torch.ones_like(ids),
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


def _capture_seq2seq(model: Model, source: str, target: str | None,
                     progress: Progress | None = None) -> AttentionResult:
    t0 = time.perf_counter()
    enc, warnings = tokenize(model, source)
    src = enc["input_ids"].to(model.device)
    start = _decoder_start(model.net)
    t1 = time.perf_counter()
    if target is not None and str(target).strip():
        tgt_enc, tgt_warn = tokenize(model, target)
        warnings += tgt_warn
        tgt = torch.cat([torch.tensor([[start]]), tgt_enc["input_ids"]], dim=1).to(model.device)
    else:
        tgt_enc = None
        with jobs.hold(model.gate, AS_LOADED):
            tgt = model.net.generate(src, attention_mask=torch.ones_like(src), max_new_tokens=SEQ2SEQ_GENERATE,
                                     do_sample=False, decoder_start_token_id=start)
    t2 = time.perf_counter()
    attn, notes = _forward(model, ("encoder", "decoder", "cross"), progress, input_ids=src,
                           attention_mask=torch.ones_like(src), decoder_input_ids=tgt, use_cache=False)
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


def _decoder_start(net) -> int:
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


def _capture_text_tower(model: Model, text: str) -> AttentionResult:
    """A text through the text tower of a two-tower model (CLIP, SigLIP). CLIP's text tower is
    causal: the result says so when every map is zero above the diagonal."""
    t0 = time.perf_counter()
    enc, warnings = tokenize(model, text)
    ids = enc["input_ids"][0].tolist()
    t1 = time.perf_counter()
    with jobs.hold(model.gate, AS_LOADED):
        out = model.text_tower(input_ids=enc["input_ids"].to(model.device), output_attentions=True)
    t2 = time.perf_counter()
    attn = _stack(_attentions(out, model))
    causal = len(ids) > 1 and not np.triu(attn.astype(np.float32), k=1).any()
    return AttentionResult(
        kind="text", model=model.name, attn={"encoder": attn}, tokens=token_strings(model, ids),
        special=special_flags(model, ids), word_spans=word_spans(enc, len(ids)), causal=causal,
        timings={"tokenize_s": t1 - t0, "forward_s": t2 - t1, "copy_s": time.perf_counter() - t2},
        warnings=warnings)


def _attentions(out, model: Model, name: str = "attentions"):
    """The per-layer attention maps ``out.<name>`` of a transformers output; a clear error when
    there are none."""
    attentions = getattr(out, name, None)
    if not attentions or any(a is None for a in attentions):
        raise AttnvizError(f"{model.name} returned no attention maps: its architecture "
                           f"({type(model.net).__name__}) does not expose them.")
    return attentions


# -- images -------------------------------------------------------------------------------
def image_input_size(width: int, height: int, short_side: int, patch: int, most: int | None = None,
                     per_cell: int = 1) -> tuple[int, int]:
    """(width, height) fed to the model: shorter side ``short_side``, aspect kept, each side a
    multiple of ``patch`` (at least one patch), at most ``most`` tokens (default
    MAX_IMAGE_TOKENS or the deployment's lower cap, see attnviz.limits.token_cap; a loaded
    model's own cap is its ``max_tokens``). ``per_cell``: tokens per ``patch`` x ``patch``
    cell, for a windowed model whose sides are multiples of several patches."""
    most = max(1, (most or token_cap(MAX_IMAGE_TOKENS)) // per_cell)
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
    resized picture the model sees) for an image model: shorter side ``size``, aspect kept,
    sides multiples of the model's step (the patch, or a windowed model's alignment; see
    :func:`image_input_size`)."""
    spec = model.image
    size = int(size or spec.size)
    if size < spec.step or size % spec.step:
        what = "patch size" if spec.step == spec.patch else "alignment (patch x window x 2^(stages-1))"
        raise AttnvizError(f"The input size must be a positive multiple of {model.name}'s {what}, {spec.step} px; got {size}.")
    per_cell = (spec.step // spec.patch) ** 2
    w, h = image_input_size(*image.size, size, spec.step, model.max_patches or None, per_cell=per_cell)
    seen = to_rgb(image).resize((w, h), Image.Resampling.BICUBIC)
    return pixel_values(seen, model), seen


def _capture_image(model: Model, image: Image.Image, size: int | None,
                   progress: Progress | None = None) -> AttentionResult:
    spec = model.image
    t0 = time.perf_counter()
    pixel_values, seen = image_pixels(model, image, size)
    w, h = seen.size
    t1 = time.perf_counter()
    if spec.align:
        return _capture_windowed(model, seen, pixel_values, t1 - t0)
    net = model.vision_tower
    kwargs = {"interpolate_pos_encoding": True} if accepts(net, "interpolate_pos_encoding") else {}
    attn, warnings = _forward(model, ("encoder",), progress, net=net, pixel_values=pixel_values, **kwargs)
    t2 = time.perf_counter()
    rows, cols = h // spec.patch, w // spec.patch
    prefix = attn["encoder"].shape[-1] - rows * cols
    grid = PatchGrid(rows=rows, cols=cols, patch_px=spec.patch, prefix=prefix)
    tokens = prefix_names(net, prefix) + grid_tokens(grid)
    return AttentionResult(
        kind="image", model=model.name, attn=attn, tokens=tokens, warnings=warnings,
        special=[i < prefix for i in range(len(tokens))], grid=grid,
        image=np.asarray(seen, dtype=np.uint8),
        timings={"preprocess_s": t1 - t0, "forward_s": t2 - t1})


def pixel_values(seen: Image.Image, model: Model) -> torch.Tensor:
    """An RGB image as the model reads it: float32 [1, 3, height, width], scaled to [0, 1] and
    normalised by the model's mean and std."""
    spec = model.image
    pixels = np.asarray(seen, dtype=np.float32) / 255.0
    pixels = (pixels - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    return torch.from_numpy(pixels.transpose(2, 0, 1)[None].copy()).to(model.device)


def _capture_windowed(model: Model, seen: Image.Image, pixel_values: torch.Tensor, preprocess_s: float) -> AttentionResult:
    """A Swin-style model, block by block: each block's window attention [windows, heads, T, T]
    placed back on its stage's grid as [heads, patches, patches] (zero outside the window), one
    "stage<N>" stack per stage. The blocks run as the model's own stage loop runs them (the
    stage outputs carry only each stage's last block)."""
    net, spec = model.net, model.image
    t1 = time.perf_counter()
    with jobs.hold(model.gate, AS_LOADED):
        hidden, dims = net.embeddings(pixel_values)[:2]
    stacks, grids = {}, {}
    for s, stage in enumerate(net.encoder.layers, start=1):
        maps = []
        for block in stage.blocks:
            jobs.checkpoint()  # a step per block
            with jobs.hold(model.gate, AS_LOADED):
                hidden, weights = block(hidden, dims)[:2]
            if weights is None:
                raise AttnvizError(f"{model.name} returned no attention maps from its windowed blocks.")
            maps.append(unwindow(weights, dims, int(block.window_size), int(block.shift_size)))
        stacks[f"stage{s}"] = torch.stack(maps).to(torch.float16).numpy()
        grids[f"stage{s}"] = PatchGrid(rows=dims[0], cols=dims[1], patch_px=spec.patch * 2 ** (s - 1), prefix=0)
        if stage.downsample is not None:
            with jobs.hold(model.gate, AS_LOADED):
                hidden = stage.downsample(hidden, dims)
            dims = ((dims[0] + 1) // 2, (dims[1] + 1) // 2)
    t2 = time.perf_counter()
    first = grids["stage1"]
    return AttentionResult(
        kind="image", model=model.name, attn=stacks, tokens=grid_tokens(first), special=[False] * first.n_patches,
        grid=first, grids=grids, image=np.asarray(seen, dtype=np.uint8),
        timings={"preprocess_s": preprocess_s, "forward_s": t2 - t1})


def unwindow(weights: torch.Tensor, dims: tuple[int, int], window: int, shift: int) -> torch.Tensor:
    """Window attention ``weights[window, head, i, j]`` (T = window^2 tokens per window, the
    windows of a grid ``dims`` = (rows, cols) cyclically shifted up and left by ``shift``) as
    dense ``[head, patch, patch]`` over the grid in row-major order, zero outside each window.

    Slot i of window w holds, in the shifted grid, row wr * window + i // window and column
    wc * window + i % window (wr, wc = divmod(w, cols // window)); shifting back adds ``shift``
    to both, modulo the grid."""
    rows, cols = dims
    n_windows, heads, t, _ = weights.shape
    w, i = torch.arange(n_windows)[:, None], torch.arange(t)[None, :]
    wr, wc = w // (cols // window), w % (cols // window)
    y = (wr * window + i // window + shift) % rows
    x = (wc * window + i % window + shift) % cols
    index = y * cols + x  # [windows, T]: the grid token in each window slot
    dense = torch.zeros(heads, rows * cols, rows * cols, dtype=torch.float32)
    dense[:, index[:, :, None], index[:, None, :]] = weights.float().permute(1, 0, 2, 3)
    return dense


def _capture_vision_language(model: Model, image: Image.Image, prompt: str, generate: int) -> AttentionResult:
    """An image and a prompt through a vision-language model (LLaVA, PaliGemma, Idefics3...),
    optionally continued by ``generate`` greedy tokens: one forward pass over the whole
    sequence (image tokens, prompt, generated tokens) gives the language model's attention.
    The image tokens are found by the model's image token id and placed back on their grids
    (see AttentionResult.image_tokens); the picture the model saw is rebuilt from its pixels."""
    proc, net = model.processor, model.net
    token = getattr(proc, "image_token", None) or "<image>"
    text = prompt if token in prompt else f"{token}{clean_text(prompt) if prompt.strip() else ''}"
    t0 = time.perf_counter()
    try:
        enc = proc(images=[to_rgb(image)], text=text, return_tensors="pt")
    except (ValueError, TypeError, KeyError) as e:
        raise AttnvizError(f"The processor of {model.name} could not read the image and prompt: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    ids = enc["input_ids"]
    prompt_len = ids.shape[1]
    generate = max(0, min(int(generate), GENERATE_CAP))
    if prompt_len + generate > model.max_tokens:
        raise AttnvizError(f"The image and prompt take {prompt_len} tokens (+ {generate} to generate); "
                           f"{model.name} is run on at most {model.max_tokens}. Shorten the prompt.")
    inputs = {k: v.to(model.device) for k, v in enc.items() if k != "labels"}
    t1 = time.perf_counter()
    with jobs.hold(model.gate, AS_LOADED):
        if generate:
            pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else model.tokenizer.eos_token_id
            ids = net.generate(**inputs, max_new_tokens=generate, do_sample=False, pad_token_id=pad)
            new = ids.shape[1] - prompt_len
            inputs.update(input_ids=ids, attention_mask=torch.ones_like(ids))
            if "token_type_ids" in inputs:  # PaliGemma: 0 for the prefix (image and prompt), 1 for what follows
                inputs["token_type_ids"] = torch.cat([inputs["token_type_ids"], torch.ones_like(ids[:, :new])], dim=1)
        t2 = time.perf_counter()
        out = net(**inputs, output_attentions=True, use_cache=False)
    t3 = time.perf_counter()
    attn = _stack(_attentions(out, model))
    causal = not np.triu(attn.astype(np.float32), k=1).any()  # PaliGemma reads its prefix both ways
    all_ids = ids[0].tolist()
    picture, layout = _vision_layout(model, enc, all_ids, image)
    tokens = token_strings(model, all_ids)
    for name, cells in layout.items():
        for r, row in enumerate(cells):
            for c, i in enumerate(row):
                tokens[i] = f"<{name} {r},{c}>"
    return AttentionResult(
        kind="text", model=model.name, attn={"decoder": attn}, tokens=tokens, special=special_flags(model, all_ids),
        word_spans=[(i, i + 1) for i in range(len(all_ids))], causal=causal, prompt_len=prompt_len,
        image=picture, image_tokens=layout,
        timings={"preprocess_s": t1 - t0, "generate_s": t2 - t1, "forward_s": t3 - t2,
                 "copy_s": time.perf_counter() - t3})


def _vision_layout(model: Model, enc, ids: list[int], image: Image.Image) -> tuple[np.ndarray, dict[str, list[list[int]]]]:
    """(the picture the model saw, uint8 [h, w, 3]; its image-token grids). The image tokens
    come in runs, one per picture read: one run (LLaVA, PaliGemma: a square grid, after a CLS
    token when the model keeps it), or one run per tile and a last one for the whole picture
    downscaled (Idefics3, SmolVLM), the tiles laid out as the image processor cut them."""
    image_id = model.net.config.image_token_id
    positions = [i for i, t in enumerate(ids) if t == image_id]
    runs: list[list[int]] = []
    for i in positions:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    pixels = enc["pixel_values"][0]
    tiles = pixels if pixels.dim() == 4 else pixels[None]  # [pictures, 3, h, w]
    if not runs or len(runs) != len(tiles):
        raise AttnvizError(f"{model.name}: {len(runs)} runs of image tokens for {len(tiles)} pictures; attnviz cannot "
                           "place its image tokens on the photo.")
    pictures = _denormalise(model, tiles)
    grids = [_square(model, run) for run in runs]
    if len(runs) == 1:
        return pictures[0], {"image": grids[0]}
    n_rows, n_cols = _tile_layout(model, image, len(runs) - 1)
    side = len(grids[0])
    cells = [[grids[(R // side) * n_cols + C // side][R % side][C % side] for C in range(n_cols * side)]
             for R in range(n_rows * side)]
    rows = [np.concatenate(pictures[r * n_cols:(r + 1) * n_cols], axis=1) for r in range(n_rows)]
    return np.concatenate(rows, axis=0), {"tiles": cells, "global": grids[-1]}


def _square(model: Model, run: list[int]) -> list[list[int]]:
    side = int(round(len(run) ** 0.5))
    if side * side != len(run) and (side * side + 1) == len(run):
        run = run[1:]  # the vision tower's CLS token first (LLaVA with vision_feature_select_strategy="full")
    if side * side != len(run):
        raise AttnvizError(f"{model.name} gives {len(run)} image tokens per picture, not a square grid.")
    return [run[r * side:(r + 1) * side] for r in range(side)]


def _tile_layout(model: Model, image: Image.Image, n_tiles: int) -> tuple[int, int]:
    """Rows and columns of the tiles the image processor cut (Idefics3's reports them)."""
    try:
        info = model.processor.image_processor(images=[to_rgb(image)], return_row_col_info=True, return_tensors="pt")
        rows, cols = int(np.ravel(info["rows"])[0]), int(np.ravel(info["cols"])[0])
    except (TypeError, KeyError, ValueError):
        rows, cols = 1, n_tiles
    if rows * cols != n_tiles:
        raise AttnvizError(f"{model.name} cut the picture into {n_tiles} tiles, not {rows} x {cols}.")
    return rows, cols


def _denormalise(model: Model, tiles: torch.Tensor) -> list[np.ndarray]:
    """Pixel values [pictures, 3, h, w] back to uint8 [h, w, 3] pictures."""
    ip = model.processor.image_processor
    mean = np.array(getattr(ip, "image_mean", None) or (0.0, 0.0, 0.0), np.float32)
    std = np.array(getattr(ip, "image_std", None) or (1.0, 1.0, 1.0), np.float32)
    scale = 255.0 if getattr(ip, "do_rescale", True) else 1.0
    out = []
    for t in tiles.float().cpu().numpy():
        x = t.transpose(1, 2, 0)
        x = x * std + mean if getattr(ip, "do_normalize", True) else x
        out.append(np.clip(x * scale + 0.5, 0, 255).astype(np.uint8))
    return out


def prefix_names(net: torch.nn.Module, prefix: int) -> list[str]:
    """Names of the ``prefix`` tokens before the patches: [CLS], then [DIST] when the model has
    a distillation token (DeiT), then registers [REG1], [REG2]..."""
    names = ["[CLS]"] + (["[DIST]"] if any(n.endswith("distillation_token") for n, _ in net.named_parameters()) else [])
    names = names[:prefix]
    return names + [f"[REG{i + 1}]" for i in range(prefix - len(names))]


def accepts(net: torch.nn.Module, arg: str) -> bool:
    """Whether ``net``'s forward takes the argument ``arg`` (``interpolate_pos_encoding``,
    ``logits_to_keep``: options that not every transformers model has)."""
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
        x, seen = square_pixels(model, input)
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
    with jobs.hold(model.gate, AS_LOADED), record_attention() as rec:
        model.net(x)
    t2 = time.perf_counter()
    pooled = bool(getattr(model.net, "pools", False))
    if not rec.maps:
        raise AttnvizError("The model made no attention call that attnviz could record.")
    attn = _pooled_stack(rec.maps[0], len(tokens)) if pooled else _stack(rec.maps)
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


def _pooled_stack(pooling: torch.Tensor, n: int) -> np.ndarray:
    """The one map of an attention-pooling classifier (``pooling`` [1, heads, 1, n]: one query
    over the ``n`` tokens) as float16 [1, heads, n + 1, n + 1] with a pooling token first, its
    row first (the pooling query gives itself no weight) and the identity below it."""
    pool = pooling[0, :, 0].float()  # [heads, n]
    attn = torch.zeros(1, pool.shape[0], n + 1, n + 1)
    attn[0, :, 0, 1:] = pool
    attn[0, :, 1:, 1:] = torch.eye(n)
    return attn.to(torch.float16).numpy()
def square_pixels(model: Model, image: Image.Image) -> tuple[torch.Tensor, Image.Image]:
    """(pixel_values [1, 3, side, side], the picture the model sees) for a model that reads
    square images of one side only (``model.image.size``; attnviz's own ViT): the image
    resized to that square."""
    side = model.image.size
    seen = to_rgb(image).resize((side, side), Image.Resampling.BICUBIC)
    return pixel_values(seen, model), seen


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
    need = limits.capture_bytes(len(ids), *_shape(model)[:3], recorded=False)
    with jobs.within(f"{model.name} on {len(ids)} token ids", need), jobs.hold(model.gate, AS_LOADED), \
            torch.inference_mode():
        x = torch.tensor([ids], device=model.device)
        kwargs = {"use_cache": False} if model.family == "decoder" else {}
        out = model.net(input_ids=x, attention_mask=torch.ones_like(x), output_attentions=True, **kwargs)
        attn = _stack(out.attentions)
    stack = "decoder" if model.family == "decoder" else "encoder"
    return AttentionResult(
        kind="text", model=model.name, attn={stack: attn}, tokens=token_strings(model, ids),
        special=special_flags(model, ids), word_spans=[(i, i + 1) for i in range(len(ids))],
        causal=model.family == "decoder", prompt_len=len(ids) if model.family == "decoder" else None,
        timings={"total_s": time.perf_counter() - started})
