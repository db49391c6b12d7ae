"""Pictures for a model: the size an image is fed at and its pixel values.

Shared by the image families' captures (attnviz.families), context mixing and explain, so that
a capture, a mixing and an explanation of the same picture read the same pixels:
:func:`image_input_size` (the fed size: shorter side chosen, aspect kept, whole patches, a cap
on tokens), :func:`image_pixels` (an image model's input at a size), :func:`square_pixels`
(a model that reads one square size) and :func:`pixel_values` (a resized picture normalised).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from attnviz.errors import AttnvizError
from attnviz.inputs import to_rgb
from attnviz.limits import token_cap
from attnviz.models.model import Model

MAX_IMAGE_TOKENS = 4096  # patches; each head a view reads is 4096 x 4096 (attention is recorded, see attnviz.lazy)


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


def pixel_values(seen: Image.Image, model: Model) -> torch.Tensor:
    """An RGB image as the model reads it: float32 [1, 3, height, width], scaled to [0, 1] and
    normalised by the model's mean and std."""
    spec = model.image
    pixels = np.asarray(seen, dtype=np.float32) / 255.0
    pixels = (pixels - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    return torch.from_numpy(pixels.transpose(2, 0, 1)[None].copy()).to(model.device)


def square_pixels(model: Model, image: Image.Image) -> tuple[torch.Tensor, Image.Image]:
    """(pixel_values [1, 3, side, side], the picture the model sees) for a model that reads
    square images of one side only (``model.image.size``; attnviz's own ViT): the image
    resized to that square."""
    side = model.image.size
    seen = to_rgb(image).resize((side, side), Image.Resampling.BICUBIC)
    return pixel_values(seen, model), seen
