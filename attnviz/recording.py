"""The one recording path every family's capture runs its model through, and what those
captures share.

:func:`forward` runs a model (or a part of it, such as a two-tower model's vision tower) with
its attention recorded (:class:`attnviz.recorder.record_attention` with ``lazy=True``, under the
model's gate in the recorded mode, which switches it to its default attention) and returns lazy
stacks (attnviz.lazy); where a model's attention cannot be recorded, a second, eager run
materialises its maps, and a warning says so. :func:`stack_maps` and :func:`attentions_of`
read a transformers output's ``output_attentions`` maps (the families that still read them);
:func:`accepts` and :func:`last_logits_only` say what a model's forward takes, and
:func:`transformers_shape` what a capture's memory grows with.
"""
from __future__ import annotations

import inspect

import numpy as np
import torch

import attnviz.jobs as jobs
from attnviz.errors import AttnvizError
from attnviz.lazy import LazyStack
from attnviz.models.converters.common import Progress  # (fraction in [0, 1], message), the store's too
from attnviz.models.loader import capture_shape
from attnviz.models.model import AS_LOADED, Model
from attnviz.recorder import default_attention, record_attention

RECORDED = "recorded"  # the gate's mode of a capture's forward pass (with the net it switches: one mode per net)
GENERATE_CAP = 256  # tokens a decoder or vision-language model generates at most before its capture


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


def forward(model: Model, stacks: tuple[str, ...], progress: Progress | None, net: torch.nn.Module | None = None,
            **inputs):
    """Run the model (or ``net``, a part of it such as a two-tower model's vision tower) and
    return ``({stack: maps}, warnings)``: lazy stacks when every attention call was recorded
    (see attnviz.capture), else, from a second, eager run, materialised float16 maps.

    progress: called after each attention call (one per layer and stack) with the fraction
    done and a message; each call also ends a step of the running job (attnviz.jobs)."""
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
    return {s: stack_maps(attentions_of(out, model, names[s])) for s in stacks}, [warning]


def stack_maps(attentions) -> np.ndarray:
    """A tuple of per-layer [1, heads, queries, keys] tensors -> float16 [layers, heads, q, k].

    Each layer is copied once, straight into one preallocated float16 tensor (torch converts
    with vector instructions; numpy's float16 ``astype`` is several times slower)."""
    first = attentions[0][0]
    out = torch.empty((len(attentions), *first.shape), dtype=torch.float16)
    for layer, a in enumerate(attentions):
        out[layer].copy_(a[0])
    return out.numpy()


def attentions_of(out, model: Model, name: str = "attentions"):
    """The per-layer attention maps ``out.<name>`` of a transformers output; a clear error when
    there are none."""
    attentions = getattr(out, name, None)
    if not attentions or any(a is None for a in attentions):
        raise AttnvizError(f"{model.name} returned no attention maps: its architecture "
                           f"({type(model.net).__name__}) does not expose them.")
    return attentions


def accepts(net: torch.nn.Module, arg: str) -> bool:
    """Whether ``net``'s forward takes the argument ``arg`` (``interpolate_pos_encoding``,
    ``logits_to_keep``: options that not every transformers model has)."""
    return arg in inspect.signature(net.forward).parameters


def last_logits_only(net: torch.nn.Module) -> dict:
    """The argument that makes a language model compute the logits of the last position only
    (``logits_to_keep``), where its forward takes it: a capture reads attention, and the logits
    of every position are a long input's largest tensor (8,192 positions x 49,152 words of
    float32 is 1.6 GB for SmolLM2) and a tenth of its arithmetic."""
    return {"logits_to_keep": 1} if accepts(net, "logits_to_keep") else {}


def transformers_shape(model: Model) -> tuple[int, int, int, int, bool]:
    """(layers, heads, hidden size, stacks, recorded) of a transformers ``model``, what a
    capture's memory grows with (attnviz.models.loader.capture_shape): the ``shape`` of the
    families whose nets are transformers models (attnviz.families)."""
    return capture_shape(model.net.config, model.family, type(model.net))
