"""What :mod:`attnviz.mixing` reads of a model's attention layers, whatever its architecture.

A family module (``attnviz.families.encoder``, ``.decoder``, ``.image``, ``.seq2seq``,
``.custom``) describes every attention layer of a model it covers as a :class:`Layer` (found
through a :class:`Spec` of attribute paths), gathers them in an :class:`Anatomy`, and gives a
function that runs the model's layers once on an input as :func:`attnviz.capture` runs them.
:func:`record` runs it with hooks that keep, per layer, what went in (:class:`LayerRun`), and
:func:`run_layer` runs one layer again on that input with chosen tokens' value vectors zeroed.

Names and axes: d the width of the residual stream; H attention heads; G key/value heads (head
h reads key/value head ``h // (H // G)``; G = H without grouped-query attention); dh the width
of a head; N tokens. Weights are float32 copies laid out so that ``row @ w`` maps an input row
to an output row.

Hooks are registered only while the caller holds the model's lock (as a capture does), and
removed before it is released: no other session ever runs the model while they are there.
"""
from __future__ import annotations

import operator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from attnviz.errors import AttnvizError

COVERED = ("BERT-like text encoders (BERT, RoBERTa, XLM-RoBERTa, ELECTRA, DistilBERT, MiniLM), decoders "
           "(Llama, Mistral, Qwen2, Qwen3, Gemma, SmolLM; GPT-2), image encoders (ViT, DeiT, DINOv2, the vision "
           "towers of CLIP and SigLIP), the encoder of T5, BART, mBART, Pegasus and Marian models, and attnviz's "
           "own transformer and ViT")


def not_covered(name: str, what: str) -> AttnvizError:
    """The one message for a model mixing does not read: what it is, and what mixing applies to."""
    return AttnvizError(f"Context mixing does not cover {name} ({what}); it applies to {COVERED}.")


@dataclass(frozen=True)
class Norm:
    """A LayerNorm as data: ``y = weight * (z - mean(z)) / sqrt(var(z) + eps) + bias`` over the
    last axis (weight and bias float32 [d])."""

    weight: torch.Tensor
    bias: torch.Tensor
    eps: float


@dataclass
class Layer:
    """One attention layer as mixing reads it.

    module: the whole layer (attention, residuals, norms, feed-forward block), run again by
    value zeroing; value: the projection whose output holds the value vectors (its input is
    x, the attention's input); value_columns: the columns of that output that are the values
    (a fused projection computes queries and keys too); w_v [G, d, dh], b_v [G, dh]: each
    key/value head's value projection; w_o [H, dh, d]: each head's slice of the output
    projection; b_o [d]: the output bias as it reaches the residual stream (times the layer
    scale); scale [d]: the layer scale of the attention branch (DINOv2), or None;
    post_norms: for a post-norm layer, the norm after attention + residual and the norm after
    the feed-forward block + residual; None for a pre-norm layer.
    """

    module: nn.Module
    value: nn.Module
    value_columns: slice
    w_v: torch.Tensor
    b_v: torch.Tensor
    w_o: torch.Tensor
    b_o: torch.Tensor
    scale: torch.Tensor | None = None
    post_norms: tuple[Norm, Norm] | None = None

    @property
    def heads(self) -> int:
        return self.w_o.shape[0]

    def values(self, x: torch.Tensor) -> torch.Tensor:
        """``f^h(x_j)`` for every head h and row j of ``x`` [N, d]: float32 [H, N, d], the
        value vector of j in the key/value head that h reads (value bias included) carried
        through h's slice of the output projection (output bias excluded), times the layer
        scale where there is one."""
        v = torch.matmul(x.float(), self.w_v) + self.b_v[:, None]  # [G, N, dh]
        v = v.repeat_interleave(self.heads // v.shape[0], dim=0)  # [H, N, dh]
        f = torch.bmm(v, self.w_o)
        return f * self.scale if self.scale is not None else f


@dataclass
class Anatomy:
    """A model's attention layers, in order. root: the module whose attention implementation a
    capture switches (attnviz.capture.default_attention): the model, or its vision tower;
    norm: how its layers normalise, in words ("post-norm LayerNorm", "pre-norm RMSNorm"...);
    name: what the architecture is, in words."""

    name: str
    root: nn.Module
    layers: list[Layer]
    norm: str

    @property
    def post_norm(self) -> bool:
        return self.layers[0].post_norms is not None


@dataclass(frozen=True)
class Spec:
    """Where one architecture keeps what mixing reads, as attribute paths: ``layers`` from the
    module the family runs, the rest from a layer. fused: the value projection computes
    queries, keys and values together and the values are the last third of its output (GPT-2,
    attnviz's own models); scale: the attention branch's layer scale; post_norms: the two
    norms of a post-norm layer (after attention + residual, after the feed-forward block +
    residual)."""

    layers: str
    value: str
    out: str
    fused: bool = False
    scale: str | None = None
    post_norms: tuple[str, str] | None = None


def projection(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A projection's (weight [in, out], bias [out]) as float32: an ``nn.Linear`` (its weight
    transposed) or GPT-2's ``Conv1D`` (stored [in, out]); a zero bias when it has none."""
    if isinstance(module, nn.Linear):
        w = module.weight.detach().float().T
    elif type(module).__name__ == "Conv1D":
        w = module.weight.detach().float()
    else:
        raise AttnvizError(f"attnviz cannot read the projection {type(module).__name__} as a weight matrix.")
    b = module.bias.detach().float() if getattr(module, "bias", None) is not None else w.new_zeros(w.shape[1])
    return w.contiguous(), b


def layer_norm(module: nn.Module) -> Norm:
    """A torch LayerNorm as a :class:`Norm`."""
    if not isinstance(module, nn.LayerNorm):
        raise AttnvizError(f"attnviz reads post-norm layers with LayerNorm, not {type(module).__name__}.")
    return Norm(weight=module.weight.detach().float(), bias=module.bias.detach().float(), eps=float(module.eps))


def build(spec: Spec, where: nn.Module, heads: int) -> list[Layer]:
    """The :class:`Layer` of every layer that ``spec`` finds under ``where``, ``heads`` heads each."""
    layers = []
    for module in operator.attrgetter(spec.layers)(where):
        value = operator.attrgetter(spec.value)(module)
        w, b = projection(value)
        columns = slice(2 * w.shape[1] // 3, w.shape[1]) if spec.fused else slice(0, w.shape[1])
        w, b = w[:, columns], b[columns]
        w_o, b_o = projection(operator.attrgetter(spec.out)(module))
        d_head = w_o.shape[0] // heads
        groups = w.shape[1] // d_head
        scale = operator.attrgetter(spec.scale)(module).detach().float() if spec.scale else None
        norms = (tuple(layer_norm(operator.attrgetter(p)(module)) for p in spec.post_norms)
                 if spec.post_norms else None)
        layers.append(Layer(
            module=module, value=value, value_columns=columns,
            w_v=w.reshape(w.shape[0], groups, d_head).permute(1, 0, 2).contiguous(),
            b_v=b.reshape(groups, d_head), w_o=w_o.reshape(heads, d_head, -1).contiguous(),
            b_o=b_o * scale if scale is not None else b_o, scale=scale, post_norms=norms))
    if not layers:
        raise AttnvizError("The model has no attention layers to mix.")
    return layers


def config_heads(config) -> int:
    """Attention heads per layer, by whichever name the config uses."""
    for name in ("num_attention_heads", "n_head", "n_heads", "num_heads"):
        value = getattr(config, name, None)
        if value:
            return int(value)
    raise AttnvizError("The model's config does not say how many attention heads a layer has.")


# -- running the layers ---------------------------------------------------------------------------
@dataclass
class LayerRun:
    """One layer as a forward pass ran it (batch item 0). h [N, d]: its input (the residual
    stream); x [N, d]: its attention's input (its value projection's input; the output of the
    pre-attention norm in a pre-norm layer, h itself in a post-norm one); args, kwargs: the
    call, so that :func:`run_layer` can run it again."""

    h: torch.Tensor
    x: torch.Tensor
    args: tuple
    kwargs: dict = field(default_factory=dict)


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a module was called with: its first argument, or ``hidden_states=``."""
    return args[0] if args else kwargs["hidden_states"]


def record(anatomy: Anatomy, forward: Callable[[], object]) -> list[LayerRun]:
    """Call ``forward`` (which runs the model's layers once) with hooks that keep each layer's
    :class:`LayerRun`; every layer must run once."""
    seen: list[dict] = [{} for _ in anatomy.layers]

    def on_layer(i):
        def hook(module, args, kwargs):
            seen[i].update(h=_first_input(args, kwargs)[0], args=args, kwargs=kwargs)
        return hook

    def on_value(i):
        def hook(module, args, kwargs):
            seen[i]["x"] = _first_input(args, kwargs)[0]
        return hook

    with ExitStack() as hooks:
        for i, layer in enumerate(anatomy.layers):
            hooks.callback(layer.module.register_forward_pre_hook(on_layer(i), with_kwargs=True).remove)
            hooks.callback(layer.value.register_forward_pre_hook(on_value(i), with_kwargs=True).remove)
        forward()
    if any("h" not in s or "x" not in s for s in seen):
        raise AttnvizError(f"{anatomy.name}: a layer did not run as attnviz expects, so its mixing cannot be read.")
    return [LayerRun(h=s["h"], x=s["x"], args=s["args"], kwargs=s["kwargs"]) for s in seen]


def attention_inputs(anatomy: Anatomy, forward: Callable[[], object],
                     each: Callable[[int, torch.Tensor], None]) -> None:
    """Call ``forward`` with a hook that hands ``each(layer, x)`` every layer's attention input
    x [N, d] as it is computed, keeping nothing (what a long input's value norms need)."""
    def on_value(i):
        def hook(module, args, kwargs):
            each(i, _first_input(args, kwargs)[0])
        return hook

    with ExitStack() as hooks:
        for i, layer in enumerate(anatomy.layers):
            hooks.callback(layer.value.register_forward_pre_hook(on_value(i), with_kwargs=True).remove)
        forward()


def run_layer(layer: Layer, run: LayerRun, zero: list[int | None]) -> torch.Tensor:
    """float32 [len(zero), N, d]: the whole layer's output on its recorded input, once per
    entry of ``zero``: in batch item b, token ``zero[b]``'s value vectors (bias included) are
    set to zero in every head (None: nothing is zeroed). The call is the recorded one with the
    hidden states repeated along the batch; masks and position tensors broadcast over it."""
    h = run.h[None].expand(len(zero), *run.h.shape)
    args, kwargs = run.args, dict(run.kwargs)
    if args:
        args = (h, *args[1:])
    else:
        kwargs["hidden_states"] = h
    items = [b for b, j in enumerate(zero) if j is not None]
    tokens = [j for j in zero if j is not None]

    def zeroing(module, inputs, out):
        out = out.clone()
        out[items, tokens, layer.value_columns] = 0
        return out

    with ExitStack() as hooks:
        if items:
            hooks.callback(layer.value.register_forward_hook(zeroing).remove)
        out = layer.module(*args, **kwargs)
    return (out[0] if isinstance(out, tuple) else out).float()
