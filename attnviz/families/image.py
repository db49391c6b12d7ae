"""Image encoders with pre-norm layers: ViT and DeiT, DINOv2 (with or without registers; its
layer scale multiplies the attention branch), and the vision towers of CLIP and SigLIP. Each
layer is

    r = h + scale * Attention(norm1(h)),   out = r + scale2 * MLP(norm2(r))

(scale = 1 but in DINOv2), so the attention's input x is norm1(h).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
from PIL import Image

from attnviz.errors import AttnvizError
from attnviz.families.anatomy import Anatomy, Spec, build, config_heads, not_covered
from attnviz.models.converters.common import Progress
from attnviz.models.model import Model
from attnviz.pixels import image_pixels
from attnviz.recording import Placement, accepts, is_causal
from attnviz.recording import forward as record
from attnviz.recording import transformers_shape as shape  # noqa: F401 (the family's shape)
from attnviz.result import AttentionResult, PatchGrid, grid_tokens
from attnviz.tokens import one_text, special_flags, token_strings, tokenize, word_spans

NAME = "image"
READS = "image"
STACKS = ("encoder",)  # a windowed model (Swin): one "stage<N>" stack per stage (its Placement)
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
    net = model.vision_tower
    kwargs = {"interpolate_pos_encoding": True} if accepts(net, "interpolate_pos_encoding") else {}
    if spec.align:
        return _capture_windowed(model, seen, progress, t1 - t0, pixel_values=pixel_values, **kwargs)
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


def _capture_windowed(model: Model, seen: Image.Image, progress: Progress | None, preprocess_s: float,
                      **inputs) -> AttentionResult:
    """A windowed model (Swin, Swin V2), run once through the recording path: its attention
    calls, one per block with the block's windows as the batch, are the recording points of
    its stages (``encoder.layers.<s>.blocks.<b>.attention``), and each call's windows are placed
    back on the stage's grid by :func:`unwindow` (zero outside the window): one "stage<N>"
    stack per stage, float16 ``[blocks, heads, patches, patches]``, its grid in ``grids``."""
    net, spec = model.net, model.image
    stages = {f"stage{s}": stage for s, stage in enumerate(net.encoder.layers, start=1)}
    grids = _stage_grids(seen.size, spec.patch, len(stages))
    heads = dict(zip(stages, net.config.num_heads))

    def place(stack: str, weights: list[torch.Tensor]) -> np.ndarray:
        grid, blocks = grids[stack], stages[stack].blocks
        maps = torch.empty(len(weights), heads[stack], grid.n_patches, grid.n_patches, dtype=torch.float16)
        for b, (w, block) in enumerate(zip(weights, blocks)):
            window = math.isqrt(w.shape[-1])  # the window the call attended in (a grid smaller than the window shrinks it)
            maps[b] = unwindow(w.view(-1, heads[stack], *w.shape[-2:]), (grid.rows, grid.cols), window,
                               int(block.shift_size))
        return maps.numpy()

    placement = Placement(parts=stages, layers={s: len(stage.blocks) for s, stage in stages.items()}, place=place,
                          shares=seen.size, ready=lambda: _windows_as_built(net))
    t1 = time.perf_counter()
    attn, warnings = record(model, tuple(stages), progress, placement=placement, **inputs)
    first = grids["stage1"]
    return AttentionResult(
        kind="image", model=model.name, attn=attn, tokens=grid_tokens(first), special=[False] * first.n_patches,
        grid=first, grids=grids, image=np.asarray(seen, dtype=np.uint8), warnings=warnings,
        timings={"preprocess_s": preprocess_s, "forward_s": time.perf_counter() - t1})


def _windows_as_built(net: torch.nn.Module) -> None:
    """Puts each block of a windowed model back to the window and shift it was built with (the
    config's window, shifted by half of it in every second block of a stage). transformers'
    Swin blocks shrink both, for good, on a pass whose grid is no larger than the window (a
    stage of a small picture: no shift there), so a later pass on a larger picture would run
    without the shift; Swin V2's blocks set theirs once, from the config, and are left alone."""
    window = net.config.window_size
    for stage in net.encoder.layers:
        for b, block in enumerate(stage.blocks):
            if hasattr(block, "set_shift_and_window_size"):
                block.window_size, block.shift_size = window, 0 if b % 2 == 0 else window // 2


def _stage_grids(size: tuple[int, int], patch: int, stages: int) -> dict[str, PatchGrid]:
    """The patch grid of each stage of a windowed model fed a picture of ``size`` (width,
    height) pixels: ``patch`` px patches in "stage1", then each stage merges 2 x 2 patches
    (an odd side is padded by one patch first, so it halves rounding up)."""
    rows, cols = size[1] // patch, size[0] // patch
    grids = {}
    for s in range(1, stages + 1):
        grids[f"stage{s}"] = PatchGrid(rows=rows, cols=cols, patch_px=patch * 2 ** (s - 1), prefix=0)
        rows, cols = (rows + 1) // 2, (cols + 1) // 2
    return grids


def unwindow(weights: torch.Tensor, dims: tuple[int, int], window: int, shift: int) -> torch.Tensor:
    """Window attention ``weights[window, head, i, j]`` (T = window^2 tokens per window) as
    dense float32 ``[head, patch, patch]`` over a grid ``dims`` = (rows, cols) in row-major
    order, zero outside each window.

    The model pads the grid at the bottom and right to whole windows, shifts it cyclically up
    and left by ``shift`` and cuts it into windows, row after row: slot i of window w holds,
    in the shifted padded grid, row wr * window + i // window and column wc * window + i %
    window (wr, wc = divmod(w, padded cols // window)); shifting back adds ``shift`` to both,
    modulo the padded grid. Slots on padding have no place on the grid: a patch's weights on
    padding are left out (its row then sums to less than 1)."""
    rows, cols = dims
    n_windows, heads, t, _ = weights.shape
    padded_rows, padded_cols = -(-rows // window) * window, -(-cols // window) * window
    if n_windows != (padded_rows // window) * (padded_cols // window) or t != window * window:
        raise ValueError(f"{n_windows} windows of {t} tokens do not tile a {rows} x {cols} grid "
                         f"in windows of {window} x {window}")
    w, i = torch.arange(n_windows)[:, None], torch.arange(t)[None, :]
    wr, wc = w // (padded_cols // window), w % (padded_cols // window)
    y = (wr * window + i // window + shift) % padded_rows
    x = (wc * window + i % window + shift) % padded_cols
    on_grid = (y < rows) & (x < cols)  # [windows, T]: slots that are patches, not padding
    index = y * cols + x  # [windows, T]: the grid token in each window slot
    pairs = on_grid[:, :, None] & on_grid[:, None, :]  # [windows, T, T]
    queries, keys = index[:, :, None].expand(-1, -1, t)[pairs], index[:, None, :].expand(-1, t, -1)[pairs]
    dense = torch.zeros(heads, rows * cols, rows * cols, dtype=torch.float32)
    dense[:, queries, keys] = weights.float().permute(1, 0, 2, 3)[:, pairs]
    return dense


def prefix_names(net: torch.nn.Module, prefix: int) -> list[str]:
    """Names of the ``prefix`` tokens before the patches: [CLS], then [DIST] when the model has
    a distillation token (DeiT), then registers [REG1], [REG2]..."""
    names = ["[CLS]"] + (["[DIST]"] if any(n.endswith("distillation_token") for n, _ in net.named_parameters()) else [])
    names = names[:prefix]
    return names + [f"[REG{i + 1}]" for i in range(prefix - len(names))]
