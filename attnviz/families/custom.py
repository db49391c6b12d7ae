"""attnviz's own models (attnviz.lab): the Build-your-own transformer, the transformer text
classifier and the ViT classifier. Their layers are pre-norm (attnviz.lab.blocks.Block):

    r = h + Attention(LayerNorm(h)),   out = r + MLP(LayerNorm(r))

with one fused query, key and value projection. The classifiers that pool an LSTM's states
with attention have no attention layers between tokens: nothing to mix.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from PIL import Image

import attnviz.jobs as jobs
from attnviz.errors import AttnvizError
from attnviz.families.anatomy import Anatomy, Spec, build
from attnviz.inputs import clean_text
from attnviz.models.converters.common import Progress
from attnviz.models.model import AS_LOADED, Model
from attnviz.pixels import square_pixels
from attnviz.recorder import record_attention
from attnviz.recording import stack_maps
from attnviz.result import AttentionResult, PatchGrid
from attnviz.tokens import one_text

NAME = "custom"
READS = "own"  # a text its tokenizer reads, or, for an image classifier (model.image), a picture
STACKS = ("encoder",)
OPTIONS = None  # options are not checked: its capture reads what applies (a size is the model's own)
EXTRA_TOKENS = 0
TOKEN_IDS = False
CAUSAL = False
OUTPUT = "own"

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


def shape(model: Model) -> tuple[int, int, int, int, bool]:
    """(layers, heads, hidden size, stacks, recorded) for a capture's memory estimate, from the
    lab model's config; it keeps every map it records (not recorded lazily)."""
    cfg = model.net.config
    return int(cfg.n_layers), int(cfg.n_heads), int(cfg.d_model), 1, False


def capture(model: Model, input, *, size: int | None = None, progress: Progress | None = None,
            **options) -> AttentionResult:
    """A lab model (attnviz.lab) run under the attention recorder (see :func:`_capture_recorded`)."""
    return _capture_recorded(model, input, size)


POOL_TOKEN = "[POOL]"


def _capture_recorded(model: Model, input, size: int | None) -> AttentionResult:
    """A lab model (attnviz.lab) run under the attention recorder.

    Its input is read by ``model.tokenizer.encode`` (text) or resized to its square input
    (``model.image``: an image classifier, whose tokens are [CLS] and the patches). Every
    attention call it makes is recorded, one ``[heads, queries, keys]`` map per layer. A
    classifier that pools its tokens with one learned query (attention pooling, one weight per
    token; its module says so with ``pools = True``) records one map with a single query: it becomes a leading ``[POOL]`` token whose row
    holds those weights, while the other tokens' rows keep all their weight on themselves (no
    attention mixes them; an LSTM does)."""
    t0 = time.perf_counter()
    warnings: list[str] = []
    if model.image is not None:
        if not isinstance(input, Image.Image):
            raise AttnvizError(f"{model.name} is an image model: give it an image, not {type(input).__name__}.")
        side = model.image.size
        if size is not None and int(size) != side:
            warnings.append(f"{model.name} reads {side} x {side} px images only; the image was resized to that.")
        x, seen = square_pixels(model, input)
        rows = side // model.image.patch
        tokens = ["[CLS]"] + [f"({r},{c})" for r in range(rows) for c in range(rows)]
        special = [i == 0 for i in range(len(tokens))]
    else:
        if isinstance(input, Image.Image):
            raise AttnvizError(f"{model.name} is a text model: give it text, not an image.")
        encoded = model.tokenizer.encode(one_text(input, model))
        x = torch.tensor([encoded.ids], device=model.device)
        tokens, special, warnings = list(encoded.tokens), list(encoded.special), list(encoded.warnings)
    t1 = time.perf_counter()
    with jobs.hold(model.gate, AS_LOADED), record_attention() as rec:
        model.net(x)
    t2 = time.perf_counter()
    pooled = bool(getattr(model.net, "pools", False))
    if not rec.maps:
        raise AttnvizError("The model made no attention call that attnviz could record.")
    attn = _pooled_stack(rec.maps[0], len(tokens)) if pooled else stack_maps(rec.maps)
    if pooled:
        tokens, special = [POOL_TOKEN] + tokens, [True] + special
    timings = {"tokenize_s": t1 - t0, "forward_s": t2 - t1, "copy_s": time.perf_counter() - t2}
    if model.image is None:
        return AttentionResult(kind="text", model=model.name, attn={"encoder": attn}, tokens=tokens,
                               special=special, word_spans=[(i, i + 1) for i in range(len(tokens))],
                               timings=timings, warnings=warnings)
    return AttentionResult(
        kind="image", model=model.name, attn={"encoder": attn}, tokens=tokens, special=special,
        grid=PatchGrid(rows=rows, cols=rows, patch_px=model.image.patch, prefix=1),
        image=np.asarray(seen, dtype=np.uint8), timings=timings, warnings=warnings)


def _pooled_stack(pooling: torch.Tensor, n: int) -> np.ndarray:
    """The one map of an attention-pooling classifier (``pooling`` [1, heads, 1, n]: one query
    over the ``n`` tokens) as float16 [1, heads, n + 1, n + 1] with a pooling token first, its
    row first (the pooling query gives itself no weight) and the identity below it."""
    pool = pooling[0, :, 0].float()  # [heads, n]
    attn = torch.zeros(1, pool.shape[0], n + 1, n + 1)
    attn[0, :, 0, 1:] = pool
    attn[0, :, 1:, 1:] = torch.eye(n)
    return attn.to(torch.float16).numpy()
