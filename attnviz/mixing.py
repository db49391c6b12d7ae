"""Context mixing: how much each token's output of a layer takes from each token of the layer's
input, by the attention weights and by four methods that count what the weights leave out
(definitions in docs/mixing.md):

- ``attention``: the heads' mean attention, for comparison;
- ``attention_norm`` (Kobayashi et al. 2020): ``|| sum_h alpha^h_ij f^h(x_j) ||``, rows normalised;
- ``globenc`` (Modarressi et al. 2022): attention, residual and both LayerNorms of a post-norm
  layer (refused, in ``skipped``, for pre-norm models);
- ``alti`` (Ferrando et al. 2022; in pre-norm models their decoder form, Ferrando & Voita 2024):
  attention and residual (and the first LayerNorm of a post-norm layer), heads kept in
  ``alti_heads`` while they fit ALTI_HEADS_BYTES;
- ``value_zeroing`` (Mohebbi et al. 2023): ``1 - cos(y_i, y_i^(not j))`` of the whole layer's
  output with token j's value vectors zeroed: one layer pass per token per layer, so at most
  VALUE_ZEROING_MAX_TOKENS tokens, with progress and cancel.

    import attnviz
    model = attnviz.load_model("minilm-l6")
    m = attnviz.mixing(model, "The cat sat on the mat.", methods=("alti", "value_zeroing"))
    m.matrices["alti"]          # float32 [layers, N, N], row i: token i's output of the layer
    m.rollout("alti")           # [N, N]: the layers carried from the output down to the input
    m.save("cat-mixing.npz")

The attention weights are those :func:`attnviz.capture` records (the model's default
implementation), and the input is tokenised or resized as capture does; the model's layers are
read through its family (:mod:`attnviz.families`). Computed in float32, cosines in float64.
"""
from __future__ import annotations

import io
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import attnviz.analysis.mixing as arithmetic
import attnviz.jobs as jobs
from attnviz.analysis.mixing import METHODS
from attnviz.capture import bound_text, bytes_at, capture, estimate_bytes
from attnviz.errors import AttnvizError
from attnviz.families import family_of
from attnviz.families.anatomy import Anatomy, Layer, LayerRun, attention_inputs, record, run_layer
from attnviz.lazy import LazyStack, ScaledStack
from attnviz.models.model import Model
from attnviz.recorder import default_attention
from attnviz.result import FORMAT_VERSION, AttentionResult, PatchGrid

DEFAULT_METHODS = ("attention", "attention_norm", "alti", "globenc")  # value_zeroing runs when asked for
VALUE_ZEROING_MAX_TOKENS = 512  # one layer pass per token per layer
MATRIX_BYTES = 2 ** 28  # one method's float32 [layers, N, N] at most: the longest input mixing reads
ALTI_HEADS_BYTES = 2 ** 27  # alti_heads, float32 [layers, heads, N, N], kept (and saved) up to this
BLOCK_BYTES = 2 ** 26  # decomposed vectors (row blocks of sum_h alpha f, per-head parts) computed at once
BLOCK_COPIES = 3  # a block's vectors live beside about two temporaries of their size (differences, norms)
ZEROED_BYTES = 2 ** 28  # the zeroed layer runs of value zeroing computed at once (an estimate of their activations)
CAPTURE_SHARE = 0.1  # of the progress bar, for the capture

Progress = Callable[[float, str], None]


class Cancelled(AttnvizError):
    """Raised when ``cancel()`` returned True between two steps of :func:`mixing`."""


@dataclass
class Mixing:
    """Context mixing of one input (see the module docstring).

    tokens, special: as the capture's (special tokens are in every matrix); matrices: method ->
    float32 ``[layers, N, N]``, row i of layer l how token i's output of layer l draws on each
    token of its input (rows sum to 1); value_norms: float32 ``[layers, heads, N]``,
    ``||f^h(x_j)||``; alti_heads: float32 ``[layers, heads, N, N]`` (ALTI's contribution of key
    j to query i through head h; the residual takes the rest of each row) when ALTI ran and it
    fits ALTI_HEADS_BYTES, else None; skipped: method -> why it was not computed; digest: the
    digest of the capture whose attention it used (AttentionResult.digest); causal: keys after
    the query get nothing; grid, image: an image input's patch grid and the picture the model
    saw; timings: seconds."""

    model: str
    kind: str
    tokens: list[str]
    special: list[bool]
    matrices: dict[str, np.ndarray]
    value_norms: np.ndarray
    digest: str
    alti_heads: np.ndarray | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    causal: bool = False
    grid: PatchGrid | None = None
    image: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays it holds: what caching it costs."""
        return (sum(m.nbytes for m in self.matrices.values()) + self.value_norms.nbytes
                + (0 if self.alti_heads is None else self.alti_heads.nbytes))

    @property
    def methods(self) -> list[str]:
        return list(self.matrices)

    def method_matrices(self, method: str) -> np.ndarray:
        """float32 ``[layers, N, N]``: ``matrices[method]``, or one clear message saying why the
        method is not in this result (skipped, or not asked for)."""
        if method not in self.matrices:
            why = f": {self.skipped[method]}" if method in self.skipped else ""
            raise AttnvizError(f"No {method!r} mixing in this result{why}; it has {', '.join(self.matrices)}.")
        return self.matrices[method]

    def rollout(self, method: str) -> np.ndarray:
        """float64 ``[N, N]``: the method's layers multiplied from the output down to the input
        (attention and attention_norm with the residual added, ``rownorm(0.5 M + 0.5 I)``)."""
        return arithmetic.rollout(self.method_matrices(method), method)

    def flow(self, method: str, source: int, progress: Callable[[float], None] | None = None) -> np.ndarray:
        """float64 ``[N]``: the exact max-flow from output token ``source`` to each input token,
        the method's layers (as :meth:`rollout` takes them) as capacities."""
        return arithmetic.flow(self.method_matrices(method), method, source, progress)

    def as_result(self, method: str, result: AttentionResult) -> AttentionResult:
        """The method's per-layer matrices as an AttentionResult that every view reads like
        attention: ``result`` (the capture this mixing was computed from) with its first stack,
        the one mixing reads, replaced by float16 ``[layers, 1, N, N]``: one "head" per layer,
        that layer's mixing (row i: how token i's output of the layer draws on each token of its
        input). Its other stacks (an encoder-decoder's decoder and cross-attention) are left out."""
        if result.digest != self.digest:
            raise AttnvizError(f"This mixing was computed from another capture than the one given ({result.model}).")
        stack = result.stacks[0]
        return replace(result, attn={stack: self.method_matrices(method)[:, None]})

    def meta(self) -> dict:
        """Everything but the arrays, as plain JSON-able values."""
        return {"format": FORMAT_VERSION, "kind": self.kind, "model": self.model, "tokens": self.tokens,
                "special": [bool(s) for s in self.special], "methods": self.methods, "skipped": self.skipped,
                "warnings": self.warnings, "causal": self.causal, "capture_digest": self.digest,
                "grid": None if self.grid is None else asdict(self.grid), "timings": self.timings,
                "alti_heads": self.alti_heads is not None}

    def to_bytes(self) -> bytes:
        """The .npz of :meth:`save`, in memory."""
        arrays = {f"mixing_{m}": a for m, a in self.matrices.items()}
        arrays["mixing_value_norms"] = self.value_norms
        if self.alti_heads is not None:
            arrays["mixing_alti_heads"] = self.alti_heads
        if self.image is not None:
            arrays["image"] = self.image
        arrays["meta"] = np.array(json.dumps(self.meta(), ensure_ascii=False))
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    def save(self, path: str | Path) -> Path:
        """Write one .npz: ``mixing_<method>`` float32 [layers, N, N] per method computed (always
        ``mixing_attention``), ``mixing_value_norms`` float32 [layers, heads, N],
        ``mixing_alti_heads`` float32 [layers, heads, N, N] when kept, ``image`` for an image
        input, and ``meta`` (JSON text: tokens, special, methods, skipped, capture_digest...)."""
        path = Path(path)
        path.write_bytes(self.to_bytes())
        return path

    @classmethod
    def load(cls, path_or_file) -> "Mixing":
        """Read a file written by :meth:`save` (never unpickles)."""
        with np.load(path_or_file, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            matrices = {m: z[f"mixing_{m}"] for m in meta["methods"]}
            return cls(model=meta["model"], kind=meta["kind"], tokens=meta["tokens"], special=meta["special"],
                       matrices=matrices, value_norms=z["mixing_value_norms"], digest=meta["capture_digest"],
                       alti_heads=z["mixing_alti_heads"] if "mixing_alti_heads" in z.files else None,
                       skipped=meta["skipped"], warnings=meta["warnings"], causal=meta["causal"],
                       grid=PatchGrid(**meta["grid"]) if meta.get("grid") else None,
                       image=z["image"] if "image" in z.files else None, timings=meta["timings"])


class AttentionTimesNorm:
    """Attention x value norm per head, ``[layers, heads, N, N]`` computed a layer at a time:
    ``[l]`` is float32 ``[heads, N, N]``, head h's attention of the capture ``result`` with
    column j scaled by ``value_norms[l, h, j]`` (``||alpha^h_ij f^h(x_j)||``, attention_norm's
    own per-head contribution, before the heads are summed and the rows normalised)."""

    def __init__(self, result: AttentionResult, value_norms: np.ndarray) -> None:
        self.result, self.value_norms = result, value_norms
        layers, heads, n = value_norms.shape
        self.shape = (layers, heads, n, n)

    def __getitem__(self, layer: int) -> np.ndarray:
        return self.result.layer_attention(layer, self.result.stacks[0]) * self.value_norms[layer][:, None, :]


def head_contributions(mixed: Mixing, method: str, result: AttentionResult | None = None):
    """Each head's own contribution to the method's mixing, ``[layers, heads, N, N]`` (read a
    layer at a time), or None where the method has none: ALTI's ``alti_heads`` (None when they
    were not kept), attention_norm's :class:`AttentionTimesNorm` of the capture ``result`` that
    ``mixed`` used (None without it); attention, globenc and value_zeroing have none."""
    mixed.method_matrices(method)
    if method == "alti":
        return mixed.alti_heads
    if method == "attention_norm" and result is not None:
        if result.digest != mixed.digest:
            raise AttnvizError("The capture given is not the one this mixing used.")
        return AttentionTimesNorm(result, mixed.value_norms)
    return None


def check_methods(methods) -> list[str]:
    """The methods asked for, known and in order, with ``attention`` first (it is always
    computed, for comparison); an AttnvizError names an unknown one."""
    methods = [m.strip() for m in ([methods] if isinstance(methods, str) else methods) if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise AttnvizError(f"Unknown mixing method {unknown[0]!r}; the methods are {', '.join(METHODS)}.")
    return ["attention"] + [m for m in METHODS[1:] if m in methods]


def _refusals(anatomy: Anatomy) -> dict[str, str]:
    """method -> why it does not apply to the model of ``anatomy`` (whatever the input)."""
    if anatomy.post_norm:
        return {}
    return {"globenc": f"GlobEnc decomposes the two LayerNorms of a post-norm layer (BERT-like); "
                       f"{anatomy.name} is {anatomy.norm}."}


def refusals(model: Model) -> dict[str, str]:
    """method -> why it does not apply to ``model`` (every method, with the same reason, when
    mixing does not cover the model at all); the methods not named apply."""
    try:
        return _refusals(family_of(model).anatomy(model))
    except AttnvizError as e:
        return {m: str(e) for m in METHODS}


def max_mixing_tokens(layers: int) -> int:
    """The longest input mixing reads for a model of ``layers`` layers: one method's
    float32 [layers, N, N] within MATRIX_BYTES."""
    return math.isqrt(MATRIX_BYTES // (4 * layers))


def mixing_bytes(model: Model, n_tokens: int, methods, anatomy: Anatomy | None = None) -> int:
    """The memory :func:`mixing` takes for an input of ``n_tokens`` tokens by ``methods``: the
    capture's (attnviz.capture.bytes_at), a float32 ``[layers, N, N]`` matrix per method, the
    value norms, ALTI's per-head contributions where they are kept (at most ALTI_HEADS_BYTES),
    a block of decomposed vectors with the temporaries of its arithmetic (BLOCK_COPIES blocks;
    tests/test_explain.py measures the peak against it) and value zeroing's batch of layer
    runs. 0 for a model
    mixing does not cover (mixing refuses it before it takes anything)."""
    try:
        anatomy = anatomy or family_of(model).anatomy(model)
    except AttnvizError:
        return 0
    n, layers, heads = max(1, int(n_tokens)), len(anatomy.layers), anatomy.layers[0].heads
    asked = set(methods) | {"attention"}
    heads_bytes = 4 * layers * heads * n * n if "alti" in asked else 0
    return (bytes_at(model, n) + 4 * layers * n * n * len(asked) + 4 * layers * heads * n
            + (heads_bytes if heads_bytes <= ALTI_HEADS_BYTES else 0) + BLOCK_COPIES * BLOCK_BYTES
            + (ZEROED_BYTES if "value_zeroing" in asked else 0))


def _bounded(model: Model, input, warnings: list[str]):
    """A text input (or pair) cut as capture cuts it, so that it is tokenised once in reasonable time."""
    if isinstance(input, Image.Image):
        return input
    return tuple(bound_text(t, model, warnings) for t in input) if isinstance(input, tuple) else bound_text(input, model, warnings)


def _hooked(model: Model, anatomy: Anatomy):
    """The model's gate held in a mode of this run's own, so no other run shares the model
    while mixing's hooks are on it, with its default attention switched on (as a capture's)."""
    return jobs.hold(model.gate, ("mixing", object()), lambda: default_attention(anatomy.root))


class _Steps:
    """Progress over a known number of steps after the capture, and the cancel check between them."""

    def __init__(self, progress: Progress | None, cancel: Callable[[], bool] | None, total: int) -> None:
        self.progress, self.cancel, self.total, self.done = progress, cancel, max(total, 1), 0

    def check(self, where: str) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled(f"Context mixing was cancelled ({where}).")

    def step(self, message: str) -> None:
        self.done += 1
        jobs.checkpoint()
        if self.progress is not None:
            self.progress(CAPTURE_SHARE + (1 - CAPTURE_SHARE) * min(self.done / self.total, 1.0), message)
        self.check(message)


def mixing(model: Model, input, *, methods=DEFAULT_METHODS, pair: str | None = None, size: int | None = None,
           result: AttentionResult | None = None, progress: Progress | None = None,
           cancel: Callable[[], bool] | None = None) -> Mixing:
    """Context mixing of ``model`` on ``input`` (a text; with ``pair``, an encoder's second
    segment; or a PIL image, resized to ``size`` as capture does) by ``methods`` (any of
    attnviz.analysis.mixing.METHODS; ``attention`` is always included).

    result: the capture of this very input when the caller has it (its attention and digest
    are used; otherwise it is captured here). A method that does not apply is left out with
    its reason in ``skipped`` (GlobEnc on a pre-norm model; value zeroing over
    VALUE_ZEROING_MAX_TOKENS tokens); when every method asked for is skipped, an AttnvizError
    says why. progress(fraction, message): called as the capture, then each layer and each
    batch of value zeroing's layer runs, are done; cancel(): checked between those steps, and
    True stops the work with :class:`Cancelled`."""
    started = time.perf_counter()
    methods = check_methods(methods)
    family = family_of(model)
    anatomy = family.anatomy(model)
    warnings: list[str] = []
    input = _bounded(model, (input, pair) if pair is not None else input, warnings)
    if result is None:
        scaled = None if progress is None else (lambda f, m: progress(CAPTURE_SHARE * f, m))
        result = capture(model, input, size=size, progress=scaled)
    elif result.model != model.name:
        raise AttnvizError(f"The capture given is of {result.model}, not {model.name}.")
    captured = time.perf_counter()
    stack = result.stacks[0]
    n, n_layers = len(result.key_tokens(stack)), len(anatomy.layers)
    if n > max_mixing_tokens(n_layers):
        raise AttnvizError(f"Context mixing keeps a [layers, tokens, tokens] matrix per method: {model.name} reads "
                           f"{n} tokens here, and at most {max_mixing_tokens(n_layers):,} fit (value_norms() reads any length).")
    skipped = {m: why for m, why in _refusals(anatomy).items() if m in methods}
    if "value_zeroing" in methods and n > VALUE_ZEROING_MAX_TOKENS:
        skipped["value_zeroing"] = (f"value zeroing runs every layer once per token, so it is capped at "
                                    f"{VALUE_ZEROING_MAX_TOKENS} tokens; this input has {n}.")
    asked = [m for m in methods if m != "attention"]
    if asked and all(m in skipped for m in asked):
        raise AttnvizError(" ".join(skipped[m] for m in asked))
    methods = [m for m in methods if m not in skipped]
    heads = anatomy.layers[0].heads
    keep_heads = "alti" in methods and n_layers * heads * n * n * 4 <= ALTI_HEADS_BYTES
    if "alti" in methods and not keep_heads:
        warnings.append(f"ALTI's per-head contributions are not kept over {n} tokens ([layers, heads, N, N] "
                        f"would pass {ALTI_HEADS_BYTES // 2 ** 20} MB).")
    zeroing = "value_zeroing" in methods
    batch = _zeroed_batch(anatomy, n)
    steps = _Steps(progress, cancel, n_layers * (1 + (math.ceil(n / batch) if zeroing else 0)))
    steps.check("before the layers ran")
    forward = family.forward(model, input, size)
    matrices = {m: np.zeros((n_layers, n, n), np.float32) for m in methods}
    value_norms = np.zeros((n_layers, heads, n), np.float32)
    alti_heads = np.zeros((n_layers, heads, n, n), np.float32) if keep_heads else None
    timings = {"capture_s": captured - started}
    need = mixing_bytes(model, n, methods, anatomy)
    with jobs.within(f"{model.name}: context mixing", need), _hooked(model, anatomy), torch.inference_mode():
        t0 = time.perf_counter()
        runs = record(anatomy, forward)
        if runs[0].h.shape[0] != n:
            raise AttnvizError(f"The capture given has {n} tokens, but {model.name} reads {runs[0].h.shape[0]} from this "
                               "input: give the capture of this input.")
        t1 = time.perf_counter()
        for index, (layer, run) in enumerate(zip(anatomy.layers, runs)):
            alpha = torch.from_numpy(np.stack([result.attention(index, h, stack) for h in range(heads)])).to(model.device)
            out = _layer_mixing(layer, run, alpha, methods, keep_heads)
            value_norms[index] = out.pop("value_norms")
            if keep_heads:
                alti_heads[index] = out.pop("alti_heads")
            for m, rows in out.items():
                matrices[m][index] = rows
            steps.step(f"Mixing: layer {index + 1} of {n_layers}")
        t2 = time.perf_counter()
        if zeroing:
            causal = result.is_causal(stack)
            for index, (layer, run) in enumerate(zip(anatomy.layers, runs)):
                distances = _zeroed_distances(layer, run, batch, steps, f"layer {index + 1} of {n_layers}")
                matrices["value_zeroing"][index] = arithmetic.value_zeroing(distances, causal)
        t3 = time.perf_counter()
    timings.update(record_s=t1 - t0, layers_s=t2 - t1, value_zeroing_s=t3 - t2, total_s=time.perf_counter() - started)
    return Mixing(model=model.name, kind=result.kind, tokens=list(result.key_tokens(stack)),
                  special=list(result.key_special(stack)), matrices=matrices, value_norms=value_norms,
                  digest=result.digest, alti_heads=alti_heads, skipped=skipped,
                  warnings=warnings + [w for w in result.warnings if w not in warnings], causal=result.is_causal(stack),
                  grid=result.grid, image=result.image, timings=timings)


def _np(t: torch.Tensor) -> np.ndarray:
    """A tensor on any device as a numpy array (on the CPU)."""
    return t.detach().cpu().numpy()


def _rows(n: int, bytes_per_row: int) -> list[np.ndarray]:
    """Row indices in blocks of at most BLOCK_BYTES (one row at least)."""
    size = max(1, BLOCK_BYTES // max(bytes_per_row, 1))
    return [np.arange(s, min(n, s + size)) for s in range(0, n, size)]


def _sum_heads(alpha: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """``[B, N, d]``: ``sum_h alpha[h, b, j] vectors[h, j]`` for ``alpha [H, B, N]`` and
    ``vectors [H, N, d]``, as N matrix products [B, H] x [H, d], one per key j."""
    return torch.bmm(alpha.permute(2, 1, 0), vectors.permute(1, 0, 2)).permute(1, 0, 2)


def _layer_mixing(layer: Layer, run: LayerRun, alpha: torch.Tensor, methods: list[str],
                  keep_heads: bool) -> dict[str, np.ndarray]:
    """One layer's rows of every method but value zeroing, its value norms and (keep_heads)
    ALTI's per-head contributions, from its recorded run and ``alpha`` [H, N, N].

    In a post-norm layer the first norm's linear part is linear in its input, so the vector a
    head brings from token j to row i, carried through it, is ``alpha^h_ij g^h_j / std_i`` with
    ``g = weight * (f - mean f)`` computed once per layer (attnviz.analysis.mixing.norm_parts)."""
    f = layer.values(run.x)  # [H, N, d]
    heads, n, d = f.shape
    out = {"value_norms": _np(f.norm(dim=-1)), "attention": arithmetic.rownorm(_np(alpha.mean(dim=0)))}
    want = {m: np.zeros((n, n), np.float32) for m in methods if m not in ("attention", "value_zeroing")}
    if keep_heads:
        out["alti_heads"] = np.zeros((heads, n, n), np.float32)
    post = layer.post_norms is not None and ("alti" in want or "globenc" in want)
    head_parts = keep_heads or ("alti" in want and layer.post_norms is None)
    h = run.h.float()
    if post:
        first, second = layer.post_norms
        centred = f.new_tensor(arithmetic.norm_parts(_np(f), _np(first.weight), np.ones((heads, n), np.float32)))
    for rows in _rows(n, 4 * n * d * (1 + 3 * heads * head_parts)):
        index = torch.from_numpy(rows).to(f.device)
        a = alpha[:, index]  # [H, B, N]
        mixed = _sum_heads(a, f)  # [B, N, d]: sum_h alpha^h_ij f^h(x_j)
        if "attention_norm" in want:
            want["attention_norm"][rows] = arithmetic.rownorm(_np(mixed.norm(dim=-1)))
        whole = h[index] + mixed.sum(dim=1) + layer.b_o  # the attention's output plus the residual
        vectors, scale, target, residual = f, f.new_ones(len(rows)), whole, h[index]
        if post:  # alti (2022) and globenc: the residual joins token i, all through the first norm
            std = torch.sqrt(whole.var(dim=-1, unbiased=False) + first.eps)
            residual = f.new_tensor(arithmetic.norm_parts(_np(h[index]), _np(first.weight), _np(std)))
            transformed = _sum_heads(a, centred) / std[:, None, None]
            transformed[torch.arange(len(rows), device=f.device), index] += residual
            target = F.layer_norm(whole, (d,), first.weight, first.bias, first.eps)
            if "alti" in want:
                want["alti"][rows] = arithmetic.alti(_np(transformed), _np(target))
            if "globenc" in want:
                want["globenc"][rows] = arithmetic.globenc(_np(transformed), _np(second.weight))
            vectors, scale = centred, 1 / std
        if head_parts:  # each head's vector from each token, and the residual: ALTI's decoder form
            parts = a.permute(1, 2, 0)[..., None] * vectors.permute(1, 0, 2)[None] * scale[:, None, None, None]
            token, by_head = arithmetic.head_contributions(_np(parts), _np(residual), _np(target), rows)
            if layer.post_norms is None and "alti" in want:
                want["alti"][rows] = token
            if keep_heads:
                out["alti_heads"][:, rows] = by_head.transpose(1, 0, 2)
    return {**out, **want}


def _zeroed_batch(anatomy: Anatomy, n: int) -> int:
    """Zeroed runs of one layer computed at once: ZEROED_BYTES over an estimate of one run's
    activations (16 vectors of the residual width per token, and one head's scores per head)."""
    layer = anatomy.layers[0]
    d = layer.w_o.shape[-1]
    return max(1, ZEROED_BYTES // (4 * n * (16 * d + layer.heads * n)))


def _zeroed_distances(layer: Layer, run: LayerRun, batch: int, steps: _Steps, where: str) -> np.ndarray:
    """float64 ``[N, N]``: ``1 - cos(y_i, y_i^(not j))`` at [i, j], from the layer run on its
    input unchanged and with each token j's value vectors zeroed, ``batch`` tokens at a time."""
    y = run_layer(layer, run, [None])[0].double()
    n = y.shape[0]
    distances = np.zeros((n, n))
    for start in range(0, n, batch):
        tokens = list(range(start, min(n, start + batch)))
        zeroed = run_layer(layer, run, tokens).double()  # [B, N, d]
        distances[:, tokens] = _np(1.0 - F.cosine_similarity(zeroed, y[None], dim=-1)).T
        steps.step(f"Value zeroing, {where}: tokens {tokens[-1] + 1} of {n}")
    return distances


def value_norms_bytes(model: Model, input, *, pair: str | None = None, size: int | None = None) -> int:
    """The memory :func:`value_norms` takes on ``input`` (its arguments): a capture's
    estimate (attnviz.capture.estimate_bytes) and a block of value vectors (BLOCK_BYTES)."""
    return estimate_bytes(model, (input, pair) if pair is not None else input, size=size) + BLOCK_BYTES


def value_norms(model: Model, input, *, pair: str | None = None, size: int | None = None,
                progress: Progress | None = None) -> np.ndarray:
    """float32 ``[layers, heads, N]``: ``||f^h(x_j)||`` of ``model`` on ``input`` (as :func:`mixing`
    reads it, without generation), from one forward pass that keeps nothing of a layer but
    these norms, computed in blocks of tokens: no N x N array, so any length the model reads
    works. Attention x value norm of head h is its attention map with column j scaled by
    ``value_norms[layer, h, j]``. progress(fraction, message): after each layer."""
    family = family_of(model)
    anatomy = family.anatomy(model)
    input = _bounded(model, (input, pair) if pair is not None else input, [])
    forward = family.forward(model, input, size)
    norms: list[np.ndarray] = []

    def each(index: int, x: torch.Tensor) -> None:
        layer = anatomy.layers[index]
        rows = _rows(x.shape[0], 4 * layer.heads * layer.w_o.shape[-1])
        norms.append(np.concatenate([_np(layer.values(x[r[0]:r[-1] + 1]).norm(dim=-1)) for r in rows], axis=1))
        if progress is not None:
            progress(len(norms) / len(anatomy.layers), f"Value norms: layer {len(norms)} of {len(anatomy.layers)}")

    need = value_norms_bytes(model, input, size=size)
    with jobs.within(f"{model.name}: value norms", need), _hooked(model, anatomy), torch.inference_mode():
        attention_inputs(anatomy, forward, each)
    return np.stack(norms).astype(np.float32)


def scaled_by_value_norms(result: AttentionResult, norms: np.ndarray) -> AttentionResult:
    """Attention x value norm, per head: ``result`` with its first stack (the one mixing and
    :func:`value_norms` read) replaced by ``alpha^h_ij * norms[l, h, j]``, each head's key
    column j scaled by the value norm ``||f^h(x_j)||`` (``norms`` float32 ``[layers, heads, N]``
    from :func:`value_norms` or ``Mixing.value_norms``). A lazy stack stays lazy
    (attnviz.lazy.ScaledStack: rows are scaled as they are read, at any length); an array is
    scaled as a whole. Rows no longer sum to 1: they are in the units of the value vectors.
    Other stacks are left out."""
    stack = result.stacks[0]
    a = result.attn[stack]
    n_layers, n_heads, _, n_keys = a.shape
    norms = np.asarray(norms, dtype=np.float32)
    if norms.shape != (n_layers, n_heads, n_keys):
        raise AttnvizError(f"The value norms are {list(norms.shape)} [layers, heads, tokens], but the capture's "
                           f"{stack} attention has {n_layers} layers, {n_heads} heads and {n_keys} tokens: give the "
                           "norms of this very input (without generated tokens).")
    scaled = ScaledStack(a, norms) if isinstance(a, LazyStack) else np.asarray(a, np.float32) * norms[:, :, None, :]
    return replace(result, attn={stack: scaled})
