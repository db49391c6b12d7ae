"""Image encoders with pre-norm layers: ViT and DeiT, DINOv2 (with or without registers; its
layer scale multiplies the attention branch), and the vision towers of CLIP and SigLIP. Each
layer is

    r = h + scale * Attention(norm1(h)),   out = r + scale2 * MLP(norm2(r))

(scale = 1 but in DINOv2), so the attention's input x is norm1(h).
"""
from __future__ import annotations

from typing import Callable

from PIL import Image

from attnviz.capture import accepts, image_pixels
from attnviz.errors import AttnvizError
from attnviz.families.anatomy import Anatomy, Spec, build, config_heads, not_covered
from attnviz.models.model import Model

VIT = Spec(layers="layers", value="attention.v_proj", out="attention.o_proj")
DINOV2 = Spec(layers="encoder.layer", value="attention.v_proj", out="attention.o_proj", scale="layer_scale1.lambda1")
TOWER = Spec(layers="encoder.layers", value="self_attn.v_proj", out="self_attn.out_proj")
ARCHITECTURES = {
    "vit": VIT, "deit": VIT, "dinov2": DINOV2, "dinov2_with_registers": DINOV2,
    "clip_vision_model": TOWER, "siglip_vision_model": TOWER,
}


def _kind(model: Model) -> str:
    config = model.vision_tower.config
    return getattr(getattr(config, "vision_config", None), "model_type", None) or config.model_type


def anatomy(model: Model) -> Anatomy:
    kind = _kind(model)
    if kind not in ARCHITECTURES:
        raise not_covered(model.name, f"a {kind} image model")
    tower = model.vision_tower
    where = getattr(tower, "vision_model", tower)  # CLIP and SigLIP keep their layers one module down
    config = getattr(where.config, "vision_config", None) or where.config
    return Anatomy(name=f"{model.name} (a {kind} image encoder)", root=tower,
                   layers=build(ARCHITECTURES[kind], where, config_heads(config)), norm="pre-norm LayerNorm")


def forward(model: Model, input, size: int | None = None) -> Callable[[], object]:
    """Runs the vision tower on the picture ``input``, resized to ``size`` as capture does."""
    if not isinstance(input, Image.Image):
        raise AttnvizError(f"{model.name} is an image model: give it an image, not {type(input).__name__}.")
    pixels, _ = image_pixels(model, input, size)
    tower = model.vision_tower
    kwargs = {"interpolate_pos_encoding": True} if accepts(tower, "interpolate_pos_encoding") else {}
    return lambda: tower(pixel_values=pixels, **kwargs)
