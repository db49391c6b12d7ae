"""AttentionResult: the one type that every layer of attnviz speaks.

A result holds every attention map of one model run on one input:

- ``attn[stack]``: float16 array ``[layers, heads, queries, keys]`` for each attention stack
  that the model has: ``"encoder"`` (self-attention of an encoder, or of an image model),
  ``"decoder"`` (causal self-attention of a decoder), ``"cross"`` (decoder queries over encoder
  keys, so ``[layers, heads, target, source]``). Row ``attn[l, h, i, :]`` is the softmax
  distribution of query ``i`` over the keys, summing to 1.
- ``tokens``: the token strings of the source sequence (encoder, or the whole sequence of a
  decoder-only model); ``target_tokens`` those of the decoder of an encoder-decoder.
- ``special``: per token, whether it is a special token ([CLS], [SEP], BOS, </s>, image prefix
  tokens such as CLS or registers). ``target_special`` likewise.
- ``word_spans``: ``[start, end)`` token index ranges, one per word, for merging sub-words.
- ``grid`` (images): the patch grid. Token ``grid.prefix + r * grid.cols + c`` is the patch at
  row ``r``, column ``c``; each patch covers ``grid.patch_px`` pixels of the model's input.
- ``grids`` (windowed, hierarchical image models such as Swin): one stack per stage,
  ``"stage1"``, ``"stage2"``..., each ``[blocks, heads, patches, patches]`` over its own grid
  (stages merge 2 x 2 patches, so grids shrink); each token's attention over its window is
  placed back at the keys' places on the grid, zero outside the window. ``grid`` is stage 1's.
  :meth:`AttentionResult.for_stage` gives one stage as a plain image result.
- ``image_tokens`` (vision-language models): where the image's tokens sit in the sequence, as
  ``{name: [[token index of cell (row, col)]]}``, each grid covering the whole of ``image``:
  ``"image"`` for a model that reads the picture once (LLaVA, PaliGemma); ``"tiles"`` (the
  tiles side by side) and ``"global"`` (the whole picture, downscaled) for one that reads it
  in tiles (Idefics3, SmolVLM). ``attn["decoder"][l, h, q][image_tokens[name]]`` is then
  query ``q``'s attention over that grid.

A stack is either a float16 numpy array or an :class:`attnviz.lazy.LazyStack`, which records
what defines the maps and computes them on demand (a capture records every model that runs
SDPA that way). Both index like ``[layers, heads, queries, keys]``; a large lazy stack refuses
to be materialised whole. :meth:`AttentionResult.attention` reads one head, float32
``[queries, keys]``, and is what the views and statistics stream over.

It saves to and loads from one ``.npz`` file with ``meta``, a JSON string with the rest
(``meta["format"]`` is FORMAT_VERSION), and the optional ``image`` (uint8 [height, width, 3],
the picture the model saw). A result of at most NPZ_MAPS_MAX attention weights in all is
written as today: one float16 array per stack named ``attn_<stack>`` (compressed). A larger
lazy one is written as what was recorded, uncompressed: per stack ``q_<stack>`` float32
``[layers, heads, queries, dim]``, ``k_<stack>`` float32 ``[layers, kv_heads, keys, dim]``,
its masks and key biases ``mask_<stack>_<i>``, and per layer scale, causal flag, window, mask
index, soft-cap and key bias index in ``meta["recorded"][stack]``; loading it recomputes the
maps on demand.

Format 4 adds the context-mixing file that :meth:`attnviz.mixing.Mixing.save` writes (same
``meta`` text with ``tokens`` and ``special``, and ``image``): ``mixing_<method>`` float32
``[layers, N, N]`` per method (rows sum to 1; ``mixing_attention`` always),
``mixing_value_norms`` float32 ``[layers, heads, N]`` and, when kept, ``mixing_alti_heads``
float32 ``[layers, heads, N, N]`` (docs/mixing.md).
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from attnviz.lazy import Call, LazyStack, array_cells

STACKS = ("encoder", "decoder", "cross")
STAGE = re.compile(r"^stage[1-9][0-9]*$")  # windowed, hierarchical image models: one stack per stage
FORMAT_VERSION = 4  # 1: attn_<stack> arrays only; 2: also recorded stacks (see the module docstring); 3: key biases;
# 4: also context-mixing files (attnviz.mixing)
NPZ_MAPS_MAX = 2 ** 26  # attention weights in all up to which the maps themselves are saved (128 MB float16)


@dataclass(frozen=True)
class PatchGrid:
    """How an image's patch tokens are laid out.

    rows, cols: patches down and across; patch_px: side of one patch in pixels of the model's
    input image; prefix: tokens before the first patch (CLS, registers), which have no place
    on the grid.
    """

    rows: int
    cols: int
    patch_px: int
    prefix: int = 1

    @property
    def n_patches(self) -> int:
        return self.rows * self.cols

    def positions_px(self) -> np.ndarray:
        """Centre of every patch token, ``[n_patches, 2]`` as (row, col) in pixels."""
        r, c = np.divmod(np.arange(self.n_patches), self.cols)
        return (np.stack([r, c], axis=1) + 0.5) * self.patch_px


def grid_tokens(grid: PatchGrid) -> list[str]:
    """The names of a grid's patch tokens, "(row,col)" in row-major order."""
    return [f"({r},{c})" for r in range(grid.rows) for c in range(grid.cols)]


def _as_array(m) -> np.ndarray:
    """A torch tensor (any device, any float dtype) or array as a float32 numpy array."""
    if hasattr(m, "detach"):
        m = m.detach().float().cpu().numpy()
    return np.asarray(m, dtype=np.float32)


@dataclass
class AttentionResult:
    """Every attention map of one run. See the module docstring for the axes."""

    kind: str  # "text" or "image"
    model: str
    attn: dict[str, np.ndarray | LazyStack]
    tokens: list[str]
    special: list[bool]
    word_spans: list[tuple[int, int]] = field(default_factory=list)
    target_tokens: list[str] | None = None
    target_special: list[bool] | None = None
    target_word_spans: list[tuple[int, int]] | None = None
    grid: PatchGrid | None = None
    image: np.ndarray | None = None  # uint8 [height, width, 3], what the model saw
    causal: bool = False  # decoder-only model: rows are zero above the diagonal
    segments: list[int] | None = None  # sentence A/B id per token for text pairs
    prompt_len: int | None = None  # decoder-only: tokens before the generated ones
    timings: dict[str, float] = field(default_factory=dict)  # seconds
    warnings: list[str] = field(default_factory=list)
    grids: dict[str, PatchGrid] | None = None  # per-stage grids of "stage<N>" stacks (Swin)
    image_tokens: dict[str, list[list[int]]] | None = None  # vision-language: token index per image cell

    def __post_init__(self) -> None:
        if self.kind not in ("text", "image"):
            raise ValueError(f"kind must be 'text' or 'image', not {self.kind!r}")
        unknown = {s for s in self.attn if s not in STACKS and not STAGE.match(s)}
        if unknown:
            raise ValueError(f"unknown attention stacks {sorted(unknown)}; known: {STACKS}")
        for stack, a in self.attn.items():
            if a.ndim != 4:
                raise ValueError(f"attn[{stack!r}] must be [layers, heads, queries, keys], got {a.shape}")
            if not isinstance(a, LazyStack):
                self.attn[stack] = a.astype(np.float16, copy=False)
        if len(self.special) != len(self.tokens):
            raise ValueError("special must have one flag per token")
        self.word_spans = [tuple(s) for s in self.word_spans]
        if self.target_word_spans is not None:
            self.target_word_spans = [tuple(s) for s in self.target_word_spans]

    # -- what the axes of a stack are ------------------------------------------------------
    @property
    def stacks(self) -> list[str]:
        """The stacks present, in the canonical order encoder, decoder, cross (then stages)."""
        stages = sorted((s for s in self.attn if STAGE.match(s)), key=lambda s: int(s[5:]))
        return [s for s in STACKS if s in self.attn] + stages

    def for_stage(self, stack: str) -> "AttentionResult":
        """Stage ``stack`` of a windowed model as a plain image result: its maps as the
        "encoder" stack over its own grid, so that every image view and statistic applies."""
        grid = self.grids[stack]
        return AttentionResult(kind="image", model=self.model, attn={"encoder": self.attn[stack]},
                               tokens=grid_tokens(grid), special=[False] * grid.n_patches, grid=grid,
                               image=self.image, timings=self.timings, warnings=self.warnings)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays the result holds (maps and picture): what caching it costs."""
        return sum(a.nbytes for a in self.attn.values()) + (self.image.nbytes if self.image is not None else 0)

    def query_tokens(self, stack: str) -> list[str]:
        return self.target_tokens if stack in ("decoder", "cross") and self.target_tokens is not None else self.tokens

    def key_tokens(self, stack: str) -> list[str]:
        return self.target_tokens if stack == "decoder" and self.target_tokens is not None else self.tokens

    def query_special(self, stack: str) -> list[bool]:
        return self.target_special if stack in ("decoder", "cross") and self.target_special is not None else self.special

    def key_special(self, stack: str) -> list[bool]:
        return self.target_special if stack == "decoder" and self.target_special is not None else self.special

    def query_word_spans(self, stack: str) -> list[tuple[int, int]]:
        return self.target_word_spans if stack in ("decoder", "cross") and self.target_word_spans is not None else self.word_spans

    def key_word_spans(self, stack: str) -> list[tuple[int, int]]:
        return self.target_word_spans if stack == "decoder" and self.target_word_spans is not None else self.word_spans

    def is_causal(self, stack: str) -> bool:
        """Whether the rows of this stack only see keys up to the query (zero above the diagonal)."""
        return stack == "decoder" or (self.causal and stack == "encoder")

    def shape(self, stack: str) -> tuple[int, int, int, int]:
        return tuple(self.attn[stack].shape)

    @classmethod
    def from_maps(cls, maps, tokens: list[str] | None = None, *, model: str = "custom",
                  special: list[bool] | None = None, causal: bool | None = None,
                  grid: PatchGrid | None = None, image: np.ndarray | None = None) -> "AttentionResult":
        """A result from attention maps computed anywhere, e.g. ``record_attention().maps``.

        ``maps``: one map per layer, each ``[batch, heads, queries, keys]`` (the first batch
        item is kept) or ``[heads, queries, keys]``, torch tensors or numpy arrays; or one array
        ``[layers, heads, queries, keys]``. All layers must have the same shape. ``tokens``:
        one string per key (numbers when absent). ``causal``: whether the rows see only keys up
        to the query; by default, whether every map is zero above the diagonal. A causal result
        is a "decoder" stack, any other an "encoder" stack. ``grid`` and ``image`` make it an
        image result (patch tokens after ``grid.prefix`` prefix tokens)."""
        from attnviz.errors import AttnvizError

        layers = [_as_array(m) for m in (maps if isinstance(maps, (list, tuple)) else list(_as_array(maps)))]
        if not layers:
            raise AttnvizError("No attention maps given: record_attention() saw no attention call.")
        layers = [m[0] if m.ndim == 4 else m for m in layers]
        shapes = sorted({m.shape for m in layers})
        if len(shapes) > 1 or len(shapes[0]) != 3:
            raise AttnvizError(f"The maps must all be [heads, queries, keys] of one shape (or with a batch axis "
                               f"first); got {', '.join(str(s) for s in shapes)}. Pass the maps of one stack.")
        attn = np.stack(layers)
        n_query, n_key = attn.shape[-2:]
        tokens = [str(i) for i in range(n_key)] if tokens is None else [str(t) for t in tokens]
        if len(tokens) != n_key or n_query != n_key:
            raise AttnvizError(f"The maps are [{n_query} queries, {n_key} keys]: self-attention over as many tokens as "
                               f"given, and {len(tokens)} tokens were given.")
        if causal is None:
            causal = n_key > 1 and not np.triu(attn.astype(np.float32), k=1).any()
        return cls(kind="image" if grid is not None else "text", model=model,
                   attn={"decoder" if causal else "encoder": attn}, tokens=tokens,
                   special=list(special) if special is not None else [False] * n_key,
                   grid=grid, image=image, causal=bool(causal))

    def attention(self, layer: int, head: int, stack: str | None = None, queries=None) -> np.ndarray:
        """float32 ``[queries, keys]``: one head's attention. queries: None for every row, a
        slice or an index array (rows in that order). Lazy stacks compute only those rows, in
        row blocks, with a small cache (attnviz.lazy)."""
        a = self.attn[stack or self.stacks[0]]
        if isinstance(a, LazyStack):
            return a.rows(layer, head, queries)
        rows = a[layer, head]
        return np.asarray(rows if queries is None else rows[queries], dtype=np.float32)

    def layer_attention(self, layer: int, stack: str | None = None, queries=None) -> np.ndarray:
        """float32 ``[heads, queries, keys]``: every head of one layer (queries as in
        :meth:`attention`). Lazy stacks compute the heads together, a row block at a time
        (attnviz.lazy.LazyStack.layer_rows)."""
        a = self.attn[stack or self.stacks[0]]
        if isinstance(a, LazyStack):
            return a.layer_rows(layer, queries)
        rows = a[layer]
        return np.asarray(rows if queries is None else rows[:, queries], dtype=np.float32)

    def layer_cells(self, layer: int, stack: str | None, query_units, key_units, hidden=None) -> np.ndarray:
        """float32 ``[heads, query units, key units]``: every head of one layer reduced to cells,
        keys summed and queries averaged per unit, rows renormalised over the keys not
        ``hidden`` (attnviz.lazy.CellSums; the units as attnviz.analysis.tokens.Axis.token_units
        gives them, int per token, -1 for none). Lazy stacks compute the heads together and
        reduce each row block as it is computed, never writing whole rows."""
        a = self.attn[stack or self.stacks[0]]
        if isinstance(a, LazyStack):
            return a.layer_cells(layer, query_units, key_units, hidden)
        return array_cells(a[layer], query_units, key_units, hidden)

    def attention_columns(self, layer: int, head: int, stack: str | None = None, keys=None) -> np.ndarray:
        """float32 ``[queries, len(keys)]``: the weight every query of one head gives the key
        tokens ``keys`` (an index array): a few columns without computing whole rows."""
        a = self.attn[stack or self.stacks[0]]
        keys = np.atleast_1d(np.asarray(keys, dtype=np.int64))
        if isinstance(a, LazyStack):
            return a.columns(layer, head, keys)
        return np.asarray(a[layer, head][:, keys], dtype=np.float32)

    def is_lazy(self, stack: str) -> bool:
        """Whether ``stack`` is computed on demand rather than held as an array."""
        return isinstance(self.attn[stack], LazyStack)

    @cached_property
    def digest(self) -> str:
        """A content digest naming this result in caches (computed once): the model, tokens,
        image and the attention data (recorded tensors or maps)."""
        h = hashlib.blake2b(digest_size=16)
        meta = self.meta()
        for volatile in ("timings", "warnings"):
            meta.pop(volatile)
        h.update(json.dumps(meta, sort_keys=True).encode())
        for s in self.stacks:  # array by array, never a stacked copy of the recorded tensors
            a = self.attn[s]
            parts = a.recorded if isinstance(a, LazyStack) else [a]
            h.update(s.encode())
            for x in parts:
                h.update(np.ascontiguousarray(x).data)
        if self.image is not None:
            h.update(np.ascontiguousarray(self.image).data)
        return h.hexdigest()

    # -- saving and loading ----------------------------------------------------------------
    def meta(self) -> dict:
        """Everything but the arrays, as plain JSON-able values."""
        return {
            "format": FORMAT_VERSION,
            "kind": self.kind,
            "model": self.model,
            "stacks": self.stacks,
            "tokens": self.tokens,
            "special": [bool(s) for s in self.special],
            "word_spans": [list(s) for s in self.word_spans],
            "target_tokens": self.target_tokens,
            "target_special": None if self.target_special is None else [bool(s) for s in self.target_special],
            "target_word_spans": None if self.target_word_spans is None else [list(s) for s in self.target_word_spans],
            "grid": None if self.grid is None else asdict(self.grid),
            "causal": self.causal,
            "segments": self.segments,
            "prompt_len": self.prompt_len,
            "timings": self.timings,
            "warnings": self.warnings,
            "grids": None if self.grids is None else {k: asdict(g) for k, g in self.grids.items()},
            "image_tokens": self.image_tokens,
        }

    def saves_recorded(self) -> bool:
        """Whether :meth:`save` writes what was recorded rather than the maps (see the module
        docstring): the result is lazy and has more than NPZ_MAPS_MAX weights."""
        total = sum(int(np.prod(self.attn[s].shape)) for s in self.stacks)
        return total > NPZ_MAPS_MAX and all(self.is_lazy(s) and self.attn[s].savable for s in self.stacks)

    def _arrays(self, lazy: bool) -> dict[str, np.ndarray]:
        """The arrays of the .npz (without meta): maps, or recorded tensors when ``lazy``."""
        arrays = {}
        for s in self.stacks:
            a = self.attn[s]
            if lazy and isinstance(a, LazyStack):
                arrays[f"q_{s}"] = np.stack([c.q for c in a.calls])
                arrays[f"k_{s}"] = np.stack([c.k for c in a.calls])
                arrays.update({f"mask_{s}_{i}": m for i, m in enumerate(a.masks)})
            else:
                arrays[f"attn_{s}"] = np.asarray(a)
        if self.image is not None:
            arrays["image"] = self.image
        return arrays

    def _write(self, f) -> None:
        recorded = self.saves_recorded()
        meta = self.meta()
        if recorded:
            meta["recorded"] = {s: [{"scale": c.scale, "causal": c.causal, "window": c.window, "mask": c.mask,
                                     "softcap": c.softcap, "key_bias": c.key_bias} for c in self.attn[s].calls]
                                for s in self.stacks}
        arrays = self._arrays(lazy=recorded)
        arrays["meta"] = np.array(json.dumps(meta, ensure_ascii=False))
        (np.savez if recorded else np.savez_compressed)(f, **arrays)

    def save(self, path: str | Path) -> Path:
        """Write one .npz (see the module docstring): maps or recorded tensors, optional
        ``image``, ``meta`` JSON."""
        path = Path(path)
        with open(path, "wb") as f:  # a file object keeps numpy from appending ".npz"
            self._write(f)
        return path

    def to_bytes(self) -> bytes:
        """The same .npz as :meth:`save`, in memory (for download buttons)."""
        buf = io.BytesIO()
        self._write(buf)
        return buf.getvalue()

    @classmethod
    def load(cls, path_or_file) -> "AttentionResult":
        """Read a result written by :meth:`save`. Never unpickles (allow_pickle=False)."""
        with np.load(path_or_file, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            recorded = meta.get("recorded") or {}
            attn = {s: _load_recorded(z, s, recorded[s]) if s in recorded else z[f"attn_{s}"]
                    for s in meta["stacks"]}
            image = z["image"] if "image" in z.files else None
        grid = PatchGrid(**meta["grid"]) if meta.get("grid") else None
        return cls(
            kind=meta["kind"],
            model=meta["model"],
            attn=attn,
            tokens=meta["tokens"],
            special=meta["special"],
            word_spans=meta.get("word_spans") or [],
            target_tokens=meta.get("target_tokens"),
            target_special=meta.get("target_special"),
            target_word_spans=meta.get("target_word_spans"),
            grid=grid,
            image=image,
            causal=meta.get("causal", False),
            segments=meta.get("segments"),
            prompt_len=meta.get("prompt_len"),
            timings=meta.get("timings") or {},
            warnings=meta.get("warnings") or [],
            grids={k: PatchGrid(**g) for k, g in meta["grids"].items()} if meta.get("grids") else None,
            image_tokens=meta.get("image_tokens"),
        )

    def image_heat(self, name: str, layer: int, head: int | str, query: int) -> np.ndarray:
        """Vision-language: query ``query``'s attention in ``layer`` over the image grid ``name``
        of ``image_tokens``, ``[rows, cols]`` (``head`` an index, or "mean"/"max" over heads)."""
        rows = self.attn["decoder"][layer, :, query].astype(np.float32)  # [heads, keys]
        rows = rows[head] if isinstance(head, int) else getattr(np, head)(rows, axis=0)
        return rows[np.asarray(self.image_tokens[name])]

def _load_recorded(z, stack: str, layers: list[dict]) -> LazyStack:
    """A LazyStack from the arrays and per-layer ``meta["recorded"][stack]`` of a saved file."""
    q, k = z[f"q_{stack}"], z[f"k_{stack}"]
    masks = []
    while f"mask_{stack}_{len(masks)}" in z.files:
        masks.append(z[f"mask_{stack}_{len(masks)}"])
    calls = [Call(q=q[i], k=k[i], scale=float(c["scale"]), causal=bool(c["causal"]), window=c["window"],
                  mask=int(c["mask"]), softcap=c["softcap"], key_bias=int(c.get("key_bias", -1)))
             for i, c in enumerate(layers)]
    return LazyStack(calls, masks)
