"""The loaded model: the one type that every loader returns and :func:`attnviz.capture` reads.

Everything that loads or builds a model imports it from here (the loader of transformers
checkpoints, attnviz's own models in :mod:`attnviz.lab`, tests), so that none of them has to
import another to name it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from attnviz.jobs import Gate

AS_LOADED = "as loaded"  # the gate's mode of code that runs the model as the loader left it (see Model.gate)


@dataclass(frozen=True)
class ImageSpec:
    """How a model wants its pixels: side of the default square input, patch size in pixels,
    and the per-channel mean/std applied after scaling to [0, 1]. A windowed model (Swin)
    attends within windows of ``window_size`` patches and halves its grid at each of its
    stages, so its input sides are multiples of patch x window x 2^(stages - 1) (``align``): then
    every stage's grid is whole windows, and no padding token enters any window."""

    size: int
    patch: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    align: int = 0  # windowed models (Swin): input sides are multiples of this many pixels (0: the patch)

    @property
    def step(self) -> int:
        """Pixels each side of the input is a multiple of."""
        return self.align or self.patch


@dataclass
class Model:
    """A loaded model, ready for :func:`attnviz.capture`.

    family: a key of attnviz.families.FAMILIES; max_tokens: the longest input it is run on
    (longer text is truncated with a warning); tokenizer: a transformers tokenizer, or for
    attnviz's own models (family "custom") the object whose ``encode(text)`` gives their token
    ids (see :mod:`attnviz.lab`); image: how an image model wants its pixels (None for text);
    gate: what every run of the model goes through (attnviz.jobs.hold): code that runs it as
    loaded (eager attention, ``output_attentions``) holds it in mode ``AS_LOADED``; a capture
    holds it in the mode that switches its attention to the recorded implementation. Runs in
    one mode share the model, step by step; no run changes the model under another's forward.
    """

    name: str
    family: str
    net: torch.nn.Module
    device: torch.device
    max_tokens: int
    tokenizer: Any = None
    image: ImageSpec | None = None
    gate: Gate = field(default_factory=Gate, repr=False, compare=False)
    processor: Any = None  # vision-language models: the processor that places image tokens in the prompt
    max_patches: int = 0

    def __post_init__(self) -> None:
        # A Model is read, never trained: its parameters take no gradients, so the backward
        # passes of explain keep only what the gradients of the inputs need (not every
        # layer's input for its weights' gradients). The lab's Trainer takes them back.
        self.net.requires_grad_(False)

    @property
    def n_layers(self) -> int:
        cfg = getattr(self.vision_tower, "config", None) or self.net.config  # a two-tower model's: its vision tower's
        return getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "num_layers", 0)

    @property
    def can_generate(self) -> bool:
        """Whether the net has a language-model head to generate with (a bare GPT2Model has not)."""
        can = getattr(self.net, "can_generate", None)
        return bool(can and can())

    @property
    def text_tower(self) -> torch.nn.Module | None:
        """The text tower of a two-tower image model (CLIP, SigLIP) that came with a tokenizer."""
        return getattr(self.net, "text_model", None) if self.tokenizer is not None and self.two_towers else None

    @property
    def vision_tower(self) -> torch.nn.Module:
        """What pixels go through: the vision tower of a two-tower model, else the net itself."""
        return self.net.vision_model if self.two_towers else self.net

    @property
    def two_towers(self) -> bool:
        """Whether the net is a two-tower image-text model (CLIP, SigLIP): a vision tower and a
        text tower side by side."""
        return hasattr(self.net, "vision_model") and hasattr(self.net, "text_model")
