"""attnviz's own models (attnviz.lab): the Build-your-own transformer, the transformer text
classifier and the ViT classifier. Their layers are pre-norm (attnviz.lab.blocks.Block):

    r = h + Attention(LayerNorm(h)),   out = r + MLP(LayerNorm(r))

with one fused query, key and value projection. The classifiers that pool an LSTM's states
with attention have no attention layers between tokens: nothing to mix.
"""
from __future__ import annotations

from typing import Callable

import torch
from PIL import Image

from attnviz.capture import square_pixels
from attnviz.errors import AttnvizError
from attnviz.families.anatomy import Anatomy, Spec, build
from attnviz.inputs import clean_text
from attnviz.models.model import Model

BLOCKS = Spec(layers="blocks", value="attn.qkv", out="attn.out", fused=True)


def anatomy(model: Model) -> Anatomy:
    blocks = getattr(model.net, "blocks", None)
    if not blocks:
        raise AttnvizError(f"{model.name} reads its tokens with an LSTM: it has no layers to mix.")
    return Anatomy(name=f"{model.name} (attnviz's own transformer)", root=model.net,
                   layers=build(BLOCKS, model.net, blocks[0].attn.heads), norm="pre-norm LayerNorm")


def forward(model: Model, input, size: int | None = None) -> Callable[[], object]:
    """Runs the model on ``input`` as capture does: a text read by its tokenizer, or a picture
    resized to its square input."""
    if model.image is not None:
        if not isinstance(input, Image.Image):
            raise AttnvizError(f"{model.name} is an image model: give it an image, not {type(input).__name__}.")
        x, _ = square_pixels(model, input)
    else:
        if not isinstance(input, str):
            raise AttnvizError(f"{model.name} is a text model: give it one text.")
        x = torch.tensor([model.tokenizer.encode(clean_text(input)).ids], device=model.device)
    return lambda: model.net(x)
