"""The loaded model: the one type that every loader returns and :func:`attnviz.capture` reads.

Everything that loads or builds a model imports it from here (the loader of transformers
checkpoints, attnviz's own models in :mod:`attnviz.lab`, tests), so that none of them has to
import another to name it.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class ImageSpec:
    """How a model wants its pixels: side of the default square input, patch size in pixels,
    and the per-channel mean/std applied after scaling to [0, 1]."""

    size: int
    patch: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass
class Model:
    """A loaded model, ready for :func:`attnviz.capture`.

    family: one of attnviz.models.loader.FAMILIES; max_tokens: the longest input it is run on
    (longer text is truncated with a warning); tokenizer: a transformers tokenizer, or for
    attnviz's own models (family "custom") the object whose ``encode(text)`` gives their token
    ids (see :mod:`attnviz.lab`); image: how an image model wants its pixels (None for text);
    lock: held while the model runs, so that sessions sharing it never interleave.
    """

    name: str
    family: str
    net: torch.nn.Module
    device: torch.device
    max_tokens: int
    tokenizer: Any = None
    image: ImageSpec | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def n_layers(self) -> int:
        cfg = self.net.config
        return getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "num_layers", 0)
