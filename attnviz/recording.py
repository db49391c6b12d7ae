"""The one recording path every family's capture runs its model through, and what those
captures share.

:func:`forward` runs a model (or a part of it, such as a two-tower model's vision tower) with
its attention recorded (:class:`attnviz.recorder.record_attention` with ``lazy=True``, under the
model's gate in the recorded mode, which switches it to its default attention) and returns lazy
stacks (attnviz.lazy); where a model's attention cannot be recorded, a second, eager run
materialises its maps, and a warning says so. Where a model's attention calls are not one per
layer over the whole input (Swin attends within windows, its calls' batch), its family gives
a :class:`Placement`, the step by which the calls recorded, every window of each, become its
stacks. :func:`stack_maps` stacks per-layer maps (that fallback's, and a custom model's) and
:func:`attentions_of` reads a transformers output's ``output_attentions`` maps;
:func:`accepts` and :func:`last_logits_only` say what a model's forward takes, and
:func:`transformers_shape` what a capture's memory grows with.
"""
from __future__ import annotations

import inspect
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Hashable

import numpy as np
import torch

import attnviz.jobs as jobs
from attnviz.errors import AttnvizError
from attnviz.lazy import Call, LazyStack, scores
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


CROSS = re.compile(r"cross|enc", re.IGNORECASE)  # a decoder's cross-attention: encoder_attn, EncDecAttention...


class RecordingPoints:
    """Which stack and layer each attention module's calls belong to, by the module's name.

    A call made inside ``parts[stack]`` (a module) belongs to that stack, at the place its
    qualified name's numbers give (``layers.3.self_attn``: (3,); T5's
    ``block.3.layer.1.EncDecAttention``: (3, 1)); calls of one module (a layer shared across
    depths, as ALBERT's) keep the order they were made in. With ``cross``, a module of the
    ``"decoder"`` part whose name says ``cross`` or ``enc`` after its layer number
    (``encoder_attn``, ``EncDecAttention``, ``crossattention``) is the ``"cross"`` stack's. A
    call made outside every part (a vision-language model's vision tower) is no stack's."""

    def __init__(self, parts: dict[str, torch.nn.Module], cross: bool = False) -> None:
        self.where: dict[int, tuple[str, tuple[int, ...]]] = {}  # id(module) -> (stack, place)
        for stack, part in parts.items():
            for name, module in part.named_modules():
                steps = name.split(".")
                numbers = [i for i, p in enumerate(steps) if p.isdigit()]
                after = steps[numbers[0] + 1:] if numbers else []
                is_cross = cross and stack == "decoder" and any(CROSS.search(p) for p in after)
                place = tuple(int(steps[i]) for i in numbers)
                self.where.setdefault(id(module), ("cross" if is_cross else stack, place))

    def of(self, module: torch.nn.Module | None) -> str | None:
        """The stack of a call made by ``module``, or None (no stack's)."""
        found = self.where.get(id(module)) if module is not None else None
        return None if found is None else found[0]

    def split(self, calls: list, callers: list, stacks: tuple[str, ...]) -> dict[str, list]:
        """``calls`` (made by ``callers``, in call order) per stack, each in layer order."""
        placed: dict[str, list] = {s: [] for s in stacks}
        for order, (call, caller) in enumerate(zip(calls, callers)):
            found = self.where.get(id(caller)) if caller is not None else None
            if found is not None and found[0] in placed:
                placed[found[0]].append((found[1], order, call))
        return {s: [call for _, _, call in sorted(placed[s], key=lambda x: x[:2])] for s in stacks}


def recording_points(net: torch.nn.Module, stacks: tuple[str, ...], part: torch.nn.Module | None = None
                     ) -> RecordingPoints:
    """The recording points of ``net``'s ``stacks``: an encoder-decoder's encoder (its
    ``get_encoder()``) and decoder (``get_decoder()``, self- and cross-attention told apart by
    name); a single stack's, ``part`` (the module whose attention is the stack, such as a
    vision-language model's language model), else the whole of ``net``."""
    if stacks == ("encoder", "decoder", "cross"):
        return RecordingPoints({"encoder": net.get_encoder(), "decoder": net.get_decoder()}, cross=True)
    return RecordingPoints({stacks[0]: part if part is not None else net})


@dataclass(frozen=True)
class Placement:
    """How a family makes its stacks from attention calls that are not one per layer over the
    whole input: a windowed model (Swin) attends within windows of its grid, the windows its
    attention calls' batch, and each call's windows are placed back on its stage's grid.

    ``parts``: the module of each stack, whose attention modules are its recording points (a
    call's layer is the number its module's name gives inside the part: ``blocks.1.attention``
    is layer 1); ``layers``: the calls each stack has, one per layer; ``place(stack, weights)``:
    the stack's maps from its layers' probabilities, in layer order, each float32
    ``[items x heads, queries, keys]`` (every batch item of the call, its heads item after item).

    ``shares``: what runs must have in common to share the model in one recorded pass (Swin's
    grid, from which its blocks set their windows as they run); ``ready``: readies the model
    for such a pass, called by the first run that holds it (a model that keeps state from
    earlier passes: Swin's blocks put back as built)."""

    parts: dict[str, torch.nn.Module]
    layers: dict[str, int]
    place: Callable[[str, list[torch.Tensor]], np.ndarray]
    shares: Hashable = None
    ready: Callable[[], None] | None = None


def forward(model: Model, stacks: tuple[str, ...], progress: Progress | None, net: torch.nn.Module | None = None,
            part: torch.nn.Module | None = None, placement: Placement | None = None, **inputs):
    """Run the model (or ``net``, a part of it such as a two-tower model's vision tower) and
    return ``({stack: maps}, warnings)``: lazy stacks when every attention call was recorded
    (see attnviz.capture), else, from a second, eager run, materialised float16 maps.

    Calls are assigned to stacks and layers by the module that made them (:class:`RecordingPoints`),
    not by their order; ``part``: the module of a single stack when it is not the whole of
    ``net`` (a vision-language model's language model: its vision tower's calls belong to no
    stack). ``placement``: the family's stacks and how its calls become their maps (a windowed
    model's, :class:`Placement`); every batch item of a call is recorded then, and a model that
    writes its attention out in torch operations gives its own probabilities (its softmaxes'
    outputs) instead of calls, from the same pass. progress: called after each attention call
    of a stack (one per layer and stack) with the fraction done and a message; each attention
    call also ends a step of the running job (attnviz.jobs)."""
    net = net or model.net
    if placement is None:
        counts, points = _layer_counts(part if part is not None else net, stacks), recording_points(net, stacks, part)
    else:
        counts, points = placement.layers, RecordingPoints(placement.parts)
    total = sum(counts.values()) if counts else 0
    done = 0

    def on_call(caller: torch.nn.Module | None) -> None:  # a step ends with each attention call
        nonlocal done
        if points.of(caller) is not None:
            done += 1
            if progress is not None and total:
                progress(min(done / total, 1.0), f"Running {model.name}: attention call {done} of {total}")
        jobs.checkpoint(min(done / total, 1.0) if total else None)

    mode = (RECORDED, id(net)) if placement is None else (RECORDED, id(net), placement.shares)
    with jobs.hold(model.gate, mode, lambda: _recorded_setup(net, placement)):
        if counts:
            with record_attention(lazy=True, on_call=on_call, whole_batch=placement is not None) as rec:
                net(**inputs)
            if placement is not None:
                return _placed(model, placement, points, rec, stacks), []
            split = points.split(rec.calls, rec.callers, stacks)
            whole = (all(len(split[s]) == counts[s] for s in stacks)
                     and not any(points.of(m) is not None for m in rec.map_callers))
            try:
                if whole:
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


@contextmanager
def _recorded_setup(net: torch.nn.Module, placement: Placement | None):
    """The setup of a recorded pass's gate mode: ``net`` switched to its default attention
    (attnviz.recorder.default_attention), and readied as ``placement`` says."""
    with default_attention(net) as switched:
        if placement is not None and placement.ready is not None:
            placement.ready()
        yield switched


def _placed(model: Model, placement: Placement, points: RecordingPoints, rec: record_attention,
            stacks: tuple[str, ...]) -> dict:
    """The stacks of ``placement`` from what ``rec`` recorded (every batch item): per stack, the
    probabilities of its calls, or the maps a model that writes its attention out in torch
    operations computed (its softmaxes' outputs), handed to ``placement.place``."""
    calls = points.split(rec.calls, rec.callers, stacks)
    maps = points.split(rec.maps, rec.map_callers, stacks)
    placed = {}
    for s in stacks:
        want = placement.layers[s]
        if len(calls[s]) == want:
            weights = [_probabilities(c, rec.masks) for c in calls[s]]
        elif len(maps[s]) == want and not calls[s]:
            weights = [m.reshape(-1, *m.shape[-2:]) for m in maps[s]]
        else:
            raise AttnvizError(f"{model.name} computes its attention in a way attnviz does not record: "
                               f"{max(len(calls[s]), len(maps[s]))} of {want} attention calls of {s} were seen.")
        placed[s] = placement.place(s, weights)
    return placed


def _probabilities(call: Call, masks: list[np.ndarray]) -> torch.Tensor:
    """float32 ``[heads, queries, keys]``: every head of a recorded call (attnviz.lazy's
    arithmetic; a row with every key masked is zero)."""
    return torch.softmax(scores(call, masks, slice(None), slice(None)), dim=-1).nan_to_num_(0.0)


def is_causal(maps) -> bool:
    """Whether no query of a stack (a LazyStack or an array ``[layers, heads, queries, keys]``)
    sees a key after it; an array is read whole, a lazy stack from its calls and masks."""
    if isinstance(maps, LazyStack):
        return maps.causal
    return not np.triu(np.asarray(maps, dtype=np.float32), k=1).any()


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
