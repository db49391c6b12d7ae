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
  :func:`attnviz.record_attention` and the result is built from the maps recorded.

Each family's capture is its module's ``capture`` in :mod:`attnviz.families` (the registry
this function asks: what the family reads, which options apply to it, how it captures); the
recording path they share is :mod:`attnviz.recording`.

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
``output_attentions=True`` and its maps materialised, which the result's warnings say. A
windowed model (Swin) is recorded in the same one pass, every window of each call (its
batch), and its family places the windows back on each stage's grid
(:class:`attnviz.recording.Placement`).
"""
from __future__ import annotations

import time

import torch
from PIL import Image

import attnviz.families as families
import attnviz.jobs as jobs
import attnviz.limits as limits
from attnviz.errors import AttnvizError
from attnviz.models.converters.common import Progress  # (fraction in [0, 1], message), the store's too
from attnviz.models.model import Model
from attnviz.pixels import image_input_size
from attnviz.recording import GENERATE_CAP, accepts, last_logits_only
from attnviz.recording import forward as record
from attnviz.result import AttentionResult
from attnviz.tokens import special_flags, token_strings

CHARS_PER_TOKEN = 20  # a text is cut at max_tokens * this many characters before it is tokenised


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
    family = families.of(model)
    if family.READS == "text" and isinstance(input, Image.Image):
        raise AttnvizError(f"{model.name} is a text model: give it text, not an image.")
    with jobs.within(f"{model.name} on your input", need), torch.inference_mode():
        result = family.capture(model, input, target=target, generate=generate, size=size, prompt=prompt,
                                progress=progress)
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
    plus the tokens to generate and the family's extra tokens, at most the model's cap; an
    image is its patches at the chosen size (plus a few prefix tokens); a vision-language
    model's sequence, its cap. At least 1."""
    family = families.of(model)
    if isinstance(input, Image.Image):
        if "prompt" in (family.OPTIONS or ()) or model.image is None:  # the processor sizes the image
            n = model.max_tokens
        else:
            spec = model.image
            step = int(size or spec.size) if "size" in (family.OPTIONS or ()) else spec.size
            w, h = image_input_size(*input.size, max(step, spec.step), spec.step, model.max_patches or None,
                                    per_cell=(spec.step // spec.patch) ** 2)
            n = (w // spec.patch) * (h // spec.patch) + 8  # within the model's patch cap already
    else:
        texts = [t for t in (input if isinstance(input, tuple) else (input,)) + (target, prompt) if t is not None]
        source = sum(2 * len(str(t).encode("utf-8", "surrogatepass")) + 8 for t in texts)
        n = source + max(0, min(int(generate), GENERATE_CAP)) + family.EXTRA_TOKENS
        n = min(n, model.max_tokens or n)  # an image model's text tower has no token cap of its own here
    return max(1, n)


def _shape(model: Model) -> tuple[int, int, int, int, bool]:
    """(layers, heads, hidden, stacks, recorded) of ``model`` for limits.capture_bytes, as its
    family reads them (attnviz.families)."""
    return families.of(model).shape(model)


def check_options(model: Model, input, *, target=None, generate: int = 0, size: int | None = None,
                  prompt: str | None = None) -> None:
    """Refuse, in one line each, options that do not apply to ``model``'s family (its OPTIONS,
    see attnviz.families) or to ``input``: ``generate`` beyond decoders with a language-model
    head, ``target`` beyond encoder-decoders, ``size`` on text, and a tuple other than an
    encoder's pair of texts (for an encoder-decoder the target goes in ``target=``, so that a
    tuple never means two things)."""
    family, name = families.of(model), model.name
    if family.OPTIONS is None:
        return
    takes = family.OPTIONS
    is_image = isinstance(input, Image.Image)
    if int(generate) < 0:
        raise AttnvizError(f"generate= is a number of tokens, 0 or more; got {generate}.")
    if generate and "generate" not in takes:
        raise AttnvizError(f"generate= applies to decoders; {name} is {_a(family.NAME)} model.")
    if prompt is not None and "prompt" not in takes:
        raise AttnvizError(f"prompt= applies to vision-language models; {name} is {_a(family.NAME)} model.")
    if size is not None and "prompt" in takes:  # a model that reads a picture with a prompt
        raise AttnvizError(f"size= does not apply to {name}: a vision-language model's processor sizes the image.")
    if generate and not model.can_generate:
        raise AttnvizError(f"{name} is a decoder without a language-model head, so it cannot generate; "
                           "capture the prompt alone (generate=0).")
    if target is not None and "target" not in takes:
        raise AttnvizError(f"target= applies to encoder-decoders; {name} is {_a(family.NAME)} model.")
    if size is not None and not is_image:
        raise AttnvizError(f"size= applies to images; {name} was given {type(input).__name__}.")
    if isinstance(input, tuple):
        if len(input) != 2:
            raise AttnvizError(f"A tuple is a pair of texts (a, b); got {len(input)} items.")
        if "target" in takes:
            raise AttnvizError(f"{name} is an encoder-decoder: give the source as the input and the target as "
                               "target=..., not a pair (a pair is two segments of an encoder's input).")


def _a(family: str) -> str:
    return f"{'an' if family[0] in 'aeiou' else 'a'} {family}"


# -- token ids ------------------------------------------------------------------------------
def capture_ids(model: Model, ids: list[int], progress: Progress | None = None) -> AttentionResult:
    """Run a text encoder or decoder (a family with TOKEN_IDS, see attnviz.families) on token
    ``ids`` exactly as given: no tokenisation and no special tokens added (the caller puts BOS
    or [CLS] ... [SEP] where the model wants them). The way in for inputs that are not text,
    such as the repeated random sequence of attnviz.probes. Each token is a word of its own.
    Recorded as :func:`capture` records, inside a job admitted for its memory."""
    family = families.of(model)
    if not family.TOKEN_IDS:
        raise AttnvizError(f"token ids go to text encoders and decoders; {model.name} is of the {model.family!r} family.")
    ids = [int(i) for i in ids]
    if not ids or len(ids) > model.max_tokens:
        raise AttnvizError(f"{model.name} reads 1 to {model.max_tokens} tokens; got {len(ids)}.")
    started = time.perf_counter()
    need = limits.capture_bytes(len(ids), *_shape(model))
    with jobs.within(f"{model.name} on {len(ids)} token ids", need), torch.inference_mode():
        x = torch.tensor([ids], device=model.device)
        options = {"use_cache": False} if accepts(model.net, "use_cache") else {}
        attn, warnings = record(model, family.STACKS, progress, input_ids=x, attention_mask=torch.ones_like(x),
                                **options, **last_logits_only(model.net))
    return AttentionResult(
        kind="text", model=model.name, attn=attn, tokens=token_strings(model, ids),
        special=special_flags(model, ids), word_spans=[(i, i + 1) for i in range(len(ids))],
        causal=family.CAUSAL, prompt_len=len(ids) if family.CAUSAL else None,
        timings={"total_s": time.perf_counter() - started}, warnings=warnings)
