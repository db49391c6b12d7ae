"""Vision-language models: a decoder that reads a picture as image tokens in its prompt
(LLaVA, PaliGemma, Idefics3, SmolVLM). A capture reads the language model's self-attention over
the whole sequence (image tokens, prompt, generated tokens) and places the image tokens back on
the picture (AttentionResult.image_tokens). Context mixing and explain do not cover them.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image

import attnviz.jobs as jobs
from attnviz.errors import AttnvizError
from attnviz.inputs import clean_text, to_rgb
from attnviz.models.converters.common import Progress
from attnviz.models.model import AS_LOADED, Model
from attnviz.recording import GENERATE_CAP, is_causal, last_logits_only
from attnviz.recording import forward as record
from attnviz.recording import transformers_shape as shape  # noqa: F401 (the family's shape)
from attnviz.result import AttentionResult
from attnviz.tokens import special_flags, token_strings

NAME = "vision-language"
READS = "image+prompt"
STACKS = ("decoder",)
OPTIONS = frozenset({"prompt", "generate"})
EXTRA_TOKENS = 0
TOKEN_IDS = False
CAUSAL = True
OUTPUT = None  # explain does not cover them


def capture(model: Model, input, *, prompt: str | None = None, generate: int = 0, progress: Progress | None = None,
            **options) -> AttentionResult:
    """An image and a ``prompt``, optionally continued by ``generate`` greedy tokens."""
    if not isinstance(input, Image.Image):
        raise AttnvizError(f"{model.name} is a vision-language model: give it an image, and the text as prompt=.")
    return _capture_vision_language(model, input, prompt or "", generate, progress)


def _capture_vision_language(model: Model, image: Image.Image, prompt: str, generate: int,
                             progress: Progress | None) -> AttentionResult:
    """An image and a prompt through a vision-language model (LLaVA, PaliGemma, Idefics3...),
    optionally continued by ``generate`` greedy tokens: one forward pass over the whole
    sequence (image tokens, prompt, generated tokens), recorded (attnviz.recording.forward,
    the language model's attention calls alone: its vision tower's belong to no stack), gives
    the language model's attention, lazily.
    The image tokens are found by the model's image token id and placed back on their grids
    (see AttentionResult.image_tokens); the picture the model saw is rebuilt from its pixels."""
    proc, net = model.processor, model.net
    token = getattr(proc, "image_token", None) or "<image>"
    text = prompt if token in prompt else f"{token}{clean_text(prompt) if prompt.strip() else ''}"
    t0 = time.perf_counter()
    try:
        enc = proc(images=[to_rgb(image)], text=text, return_tensors="pt")
    except (ValueError, TypeError, KeyError) as e:
        raise AttnvizError(f"The processor of {model.name} could not read the image and prompt: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    ids = enc["input_ids"]
    prompt_len = ids.shape[1]
    generate = max(0, min(int(generate), GENERATE_CAP))
    if prompt_len + generate > model.max_tokens:
        raise AttnvizError(f"The image and prompt take {prompt_len} tokens (+ {generate} to generate); "
                           f"{model.name} is run on at most {model.max_tokens}. Shorten the prompt.")
    inputs = {k: v.to(model.device) for k, v in enc.items() if k != "labels"}
    t1 = time.perf_counter()
    if generate:
        pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else model.tokenizer.eos_token_id
        with jobs.hold(model.gate, AS_LOADED):
            ids = net.generate(**inputs, max_new_tokens=generate, do_sample=False, pad_token_id=pad)
        new = ids.shape[1] - prompt_len
        inputs.update(input_ids=ids, attention_mask=torch.ones_like(ids))
        if "token_type_ids" in inputs:  # PaliGemma: 0 for the prefix (image and prompt), 1 for what follows
            inputs["token_type_ids"] = torch.cat([inputs["token_type_ids"], torch.ones_like(ids[:, :new])], dim=1)
    t2 = time.perf_counter()
    attn, warnings = record(model, STACKS, progress, part=net.get_decoder(), **inputs, use_cache=False,
                            **last_logits_only(net))
    t3 = time.perf_counter()
    causal = is_causal(attn["decoder"])  # PaliGemma reads its prefix both ways
    all_ids = ids[0].tolist()
    picture, layout = _vision_layout(model, enc, all_ids, image)
    tokens = token_strings(model, all_ids)
    for name, cells in layout.items():
        for r, row in enumerate(cells):
            for c, i in enumerate(row):
                tokens[i] = f"<{name} {r},{c}>"
    return AttentionResult(
        kind="text", model=model.name, attn=attn, tokens=tokens, special=special_flags(model, all_ids),
        word_spans=[(i, i + 1) for i in range(len(all_ids))], causal=causal, prompt_len=prompt_len,
        image=picture, image_tokens=layout,
        timings={"preprocess_s": t1 - t0, "generate_s": t2 - t1, "forward_s": t3 - t2,
                 "copy_s": time.perf_counter() - t3},
        warnings=warnings)


def _vision_layout(model: Model, enc, ids: list[int], image: Image.Image) -> tuple[np.ndarray, dict[str, list[list[int]]]]:
    """(the picture the model saw, uint8 [h, w, 3]; its image-token grids). The image tokens
    come in runs, one per picture read: one run (LLaVA, PaliGemma: a square grid, after a CLS
    token when the model keeps it), or one run per tile and a last one for the whole picture
    downscaled (Idefics3, SmolVLM), the tiles laid out as the image processor cut them."""
    image_id = model.net.config.image_token_id
    positions = [i for i, t in enumerate(ids) if t == image_id]
    runs: list[list[int]] = []
    for i in positions:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    pixels = enc["pixel_values"][0]
    tiles = pixels if pixels.dim() == 4 else pixels[None]  # [pictures, 3, h, w]
    if not runs or len(runs) != len(tiles):
        raise AttnvizError(f"{model.name}: {len(runs)} runs of image tokens for {len(tiles)} pictures; attnviz cannot "
                           "place its image tokens on the photo.")
    pictures = _denormalise(model, tiles)
    grids = [_square(model, run) for run in runs]
    if len(runs) == 1:
        return pictures[0], {"image": grids[0]}
    n_rows, n_cols = _tile_layout(model, image, len(runs) - 1)
    side = len(grids[0])
    cells = [[grids[(R // side) * n_cols + C // side][R % side][C % side] for C in range(n_cols * side)]
             for R in range(n_rows * side)]
    rows = [np.concatenate(pictures[r * n_cols:(r + 1) * n_cols], axis=1) for r in range(n_rows)]
    return np.concatenate(rows, axis=0), {"tiles": cells, "global": grids[-1]}


def _square(model: Model, run: list[int]) -> list[list[int]]:
    side = int(round(len(run) ** 0.5))
    if side * side != len(run) and (side * side + 1) == len(run):
        run = run[1:]  # the vision tower's CLS token first (LLaVA with vision_feature_select_strategy="full")
    if side * side != len(run):
        raise AttnvizError(f"{model.name} gives {len(run)} image tokens per picture, not a square grid.")
    return [run[r * side:(r + 1) * side] for r in range(side)]


def _tile_layout(model: Model, image: Image.Image, n_tiles: int) -> tuple[int, int]:
    """Rows and columns of the tiles the image processor cut (Idefics3's reports them)."""
    try:
        info = model.processor.image_processor(images=[to_rgb(image)], return_row_col_info=True, return_tensors="pt")
        rows, cols = int(np.ravel(info["rows"])[0]), int(np.ravel(info["cols"])[0])
    except (TypeError, KeyError, ValueError):
        rows, cols = 1, n_tiles
    if rows * cols != n_tiles:
        raise AttnvizError(f"{model.name} cut the picture into {n_tiles} tiles, not {rows} x {cols}.")
    return rows, cols


def _denormalise(model: Model, tiles: torch.Tensor) -> list[np.ndarray]:
    """Pixel values [pictures, 3, h, w] back to uint8 [h, w, 3] pictures."""
    ip = model.processor.image_processor
    mean = np.array(getattr(ip, "image_mean", None) or (0.0, 0.0, 0.0), np.float32)
    std = np.array(getattr(ip, "image_std", None) or (1.0, 1.0, 1.0), np.float32)
    scale = 255.0 if getattr(ip, "do_rescale", True) else 1.0
    out = []
    for t in tiles.float().cpu().numpy():
        x = t.transpose(1, 2, 0)
        x = x * std + mean if getattr(ip, "do_normalize", True) else x
        out.append(np.clip(x * scale + 0.5, 0, 255).astype(np.uint8))
    return out
