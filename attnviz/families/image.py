"""Image encoders with pre-norm layers: ViT and DeiT, DINOv2 (with or without registers; its
layer scale multiplies the attention branch), and the vision towers of CLIP and SigLIP. Each
layer is

    r = h + scale * Attention(norm1(h)),   out = r + scale2 * MLP(norm2(r))

(scale = 1 but in DINOv2), so the attention's input x is norm1(h).
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from PIL import Image

import attnviz.jobs as jobs
from attnviz.errors import AttnvizError
from attnviz.families.anatomy import Anatomy, Spec, build, config_heads, not_covered
from attnviz.models.converters.common import Progress
from attnviz.models.model import AS_LOADED, Model
from attnviz.pixels import image_pixels
from attnviz.recording import accepts, is_causal
from attnviz.recording import forward as record
from attnviz.recording import transformers_shape as shape  # noqa: F401 (the family's shape)
from attnviz.result import AttentionResult, PatchGrid, grid_tokens
from attnviz.tokens import one_text, special_flags, token_strings, tokenize, word_spans

NAME = "image"
READS = "image"
STACKS = ("encoder",)  # a windowed model (Swin): one "stage<N>" stack per stage
OPTIONS = frozenset({"size"})
EXTRA_TOKENS = 0
TOKEN_IDS = False
CAUSAL = False
OUTPUT = "class"

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


def capture(model: Model, input, *, size: int | None = None, progress: Progress | None = None,
            **options) -> AttentionResult:
    """A PIL image, resized so that its shorter side is ``size`` pixels (the model's own size by
    default) with its aspect ratio kept (see attnviz.pixels.image_pixels); a two-tower model
    (CLIP, SigLIP) also takes a text, read by its text tower."""
    if isinstance(input, Image.Image):
        return _capture_image(model, input, size, progress)
    if model.text_tower is not None:
        return _capture_text_tower(model, one_text(input, model), progress)
    raise AttnvizError(f"{model.name} is an image model: give it an image, not {type(input).__name__}.")


def _capture_text_tower(model: Model, text: str, progress: Progress | None = None) -> AttentionResult:
    """A text through the text tower of a two-tower model (CLIP, SigLIP), recorded as every
    capture is (attnviz.recording.forward). CLIP's text tower is causal: the result says so
    when no query sees a key after it."""
    t0 = time.perf_counter()
    enc, warnings = tokenize(model, text)
    ids = enc["input_ids"][0].tolist()
    t1 = time.perf_counter()
    attn, recorded = record(model, STACKS, progress, net=model.text_tower, input_ids=enc["input_ids"].to(model.device))
    t2 = time.perf_counter()
    return AttentionResult(
        kind="text", model=model.name, attn=attn, tokens=token_strings(model, ids),
        special=special_flags(model, ids), word_spans=word_spans(enc, len(ids)),
        causal=len(ids) > 1 and is_causal(attn["encoder"]),
        timings={"tokenize_s": t1 - t0, "forward_s": t2 - t1}, warnings=warnings + recorded)


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
    attn, warnings = record(model, STACKS, progress, net=net, pixel_values=pixel_values, **kwargs)
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


def prefix_names(net: torch.nn.Module, prefix: int) -> list[str]:
    """Names of the ``prefix`` tokens before the patches: [CLS], then [DIST] when the model has
    a distillation token (DeiT), then registers [REG1], [REG2]..."""
    names = ["[CLS]"] + (["[DIST]"] if any(n.endswith("distillation_token") for n, _ in net.named_parameters()) else [])
    names = names[:prefix]
    return names + [f"[REG{i + 1}]" for i in range(prefix - len(names))]
