"""The app's views as functions, for notebooks and scripts: each takes an AttentionResult (or
the path of a saved .npz) and returns a plotly Figure (a PIL image for :func:`overlay`), which
Jupyter shows as it is; ``fig.write_image("f.svg")`` or :func:`attnviz.export.write` saves it.

    import attnviz
    from attnviz import figures
    model = attnviz.load_model("minilm-l6")
    result = attnviz.capture(model, "The cat sat on the mat.")
    figures.heatmap(result, layer=2, head=5)      # one head, tokens on both axes
    figures.overview(result)                      # every layer x head at once
    figures.rollout(result, token=0)              # how the CLS output draws on the input

Every function is a thin wrapper over the figure builders of attnviz.viz and the numbers of
attnviz.analysis, the same ones the dashboard draws with. Common arguments:

- ``stack``: "encoder", "decoder" or "cross" (default: the result's first stack);
- ``layer``: a layer index, negative from the top (-1, the default, is the last layer);
- ``head``: a head index, or "mean", "max" or "min" of all heads;
- ``token``: a token index (the query, or the output token that rollout and flow start from;
  default the first token, or the last one of a decoder);
- ``merge``, ``hide_special``, ``row_max``: the text views' options (merge sub-words into
  words, hide special tokens with rows renormalised, colour each row up to its maximum).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from attnviz.analysis import flow as flow_analysis
from attnviz.analysis import routes as routes_analysis
from attnviz.analysis.flow import FUSIONS
from attnviz.analysis.stats import head_stats
from attnviz.analysis.tokens import last_content_unit
from attnviz.errors import AttnvizError
from attnviz.result import AttentionResult
from attnviz.viz import flow as flow_viz
from attnviz.viz import image as image_viz
from attnviz.viz import routes as routes_viz
from attnviz.viz import text as text_viz
from attnviz.viz.highlight import token_highlight

VIEWS = ("heatmap", "overview", "lines", "focus", "overlay", "rollout", "distance", "flow", "highlight", "routes")

Resultish = AttentionResult | str | Path


def load(result: Resultish) -> AttentionResult:
    """``result`` itself, or the result saved at that path."""
    if isinstance(result, AttentionResult):
        return result
    try:
        return AttentionResult.load(result)
    except (OSError, ValueError, KeyError) as e:
        raise AttnvizError(f"{result} is not an attnviz result (.npz): {e}") from None


# -- the text explorer -------------------------------------------------------------------------
def heatmap(result: Resultish, layer: int = -1, head: int | str = "mean", *, stack: str | None = None,
            merge: bool = False, hide_special: bool = False, row_max: bool = True) -> go.Figure:
    """One head (or all heads fused) of one layer: queries down, keys across, the exact weight
    on hover; above 256 tokens a side it is block-aggregated (the subtitle says how)."""
    result = load(result)
    stack = _stack(result, stack)
    fig, _ = text_viz.head_heatmap(result, stack, _layer(result, stack, layer), _head(result, stack, head),
                                   text_viz.TextOptions(merge, hide_special, row_max))
    return fig


def overview(result: Resultish, *, stack: str | None = None, merge: bool = False, hide_special: bool = False,
             row_max: bool = True) -> go.Figure:
    """Every layer x head of a stack as a thumbnail, in one image (layers down, heads across)."""
    result = load(result)
    stack = _stack(result, stack)
    options = text_viz.TextOptions(merge, hide_special, row_max)
    fig, _ = text_viz.overview(result, stack, text_viz.thumbnails(result, stack, options), options)
    return fig


def lines(result: Resultish, layer: int = -1, heads: list[int] | None = None, *, stack: str | None = None,
          token: int | None = None, direction: str = "out", share: float = 0.7, merge: bool = False,
          hide_special: bool = False, row_max: bool = True) -> go.Figure:
    """BertViz-style token lines of ``heads`` (default all) in one layer: per query the
    strongest lines covering ``share`` of its weight; with ``token``, only what that query
    attends to (``direction="out"``) or what attends to that key (``"in"``)."""
    result = load(result)
    stack = _stack(result, stack)
    n_heads = result.attn[stack].shape[1]
    heads = list(range(n_heads)) if heads is None else [_head(result, stack, h) for h in heads]
    if any(isinstance(h, str) for h in heads):
        raise AttnvizError("token lines draw single heads: give head indices")
    fig, _ = text_viz.token_lines(result, stack, _layer(result, stack, layer), heads,
                                  text_viz.TextOptions(merge, hide_special, row_max), share=share, token=token,
                                  direction=direction)
    return fig


def focus(result: Resultish, token: int | None = None, head: int | str = "mean", *, stack: str | None = None,
          side: str = "to", merge: bool = False, hide_special: bool = False, row_max: bool = True) -> go.Figure:
    """One token through every layer: what it attends to (``side="to"``, a row per layer) or
    what attends to it (``side="by"``). ``token`` is a unit of the shown axis (a word when
    ``merge``); default the last token that is not special."""
    result = load(result)
    stack = _stack(result, stack)
    if side not in ("to", "by"):
        raise AttnvizError('side must be "to" (what the token attends to) or "by" (what attends to it)')
    options = text_viz.TextOptions(merge, hide_special, row_max)
    q, k = text_viz.axes(result, stack, options)
    axis, special = (q, result.query_special(stack)) if side == "to" else (k, result.key_special(stack))
    unit = last_content_unit(axis, special) if token is None else _index(token, len(axis), "token")
    fig_to, fig_by, _, _ = text_viz.token_focus(result, stack, _head(result, stack, head), options,
                                                query=unit, key=unit)
    return fig_to if side == "to" else fig_by


def highlight(result: Resultish, scores: np.ndarray | None = None, *, stack: str | None = None,
              token: int | None = None, fusion: str = "mean", per_line: int = 12) -> go.Figure:
    """The text with each token on a background coloured by ``scores`` (one per key token,
    e.g. an attribution); by default the rollout share of output ``token`` on each token."""
    result = load(result)
    if result.kind != "text":
        raise AttnvizError("highlighting is for texts; for images see overlay and rollout")
    stack = _stack(result, stack)
    tokens = result.key_tokens(stack)
    if scores is None:
        stack = _self_stack(result, stack)
        source = source_token(result, stack, token)
        scores = flow_analysis.rollout(result.attn[stack], _fusion(fusion), source=source)
        name, title = "rollout share", f"{result.model} · rollout from token {source} ({tokens[source]!r})"
    else:
        name, title = "score", f"{result.model} · token scores"
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(tokens),):
        raise AttnvizError(f"give one score per token: {len(tokens)} scores, not {scores.shape}")
    return token_highlight(tokens, scores, title=title, per_line=per_line, score_name=name)


# -- the image explorer ------------------------------------------------------------------------
def overlay(result: Resultish, layer: int = -1, head: int | str = "mean", *, query: int = 0,
            style: image_viz.OverlayStyle = image_viz.OverlayStyle()) -> Image.Image:
    """What token ``query`` (0: CLS) attends to among the patches, in one head (or all fused)
    of one layer, drawn on the picture the model saw: a PIL RGB image of its size."""
    result = load(result)
    photo = _photo(result)
    heat = image_viz.query_heat(result, _layer(result, "encoder", layer), _head(result, "encoder", head),
                                _index(query, result.attn["encoder"].shape[2], "query"))
    return image_viz.heat_overlay(photo, heat, style)


def overlay_figure(result: Resultish, layer: int = -1, head: int | str = "mean", *, query: int = 0,
                   style: image_viz.OverlayStyle = image_viz.OverlayStyle()) -> go.Figure:
    """:func:`overlay` as a titled plotly figure (for SVG and PDF)."""
    result = load(result)
    layer = _layer(result, "encoder", layer)
    head = _head(result, "encoder", head)
    query = _index(query, result.attn["encoder"].shape[2], "query")
    picture = overlay(result, layer, head, query=query, style=style)
    fig = image_viz.overlay_figure(picture, image_viz.query_heat(result, layer, head, query))
    what = text_viz.head_name(head)
    fig.update_layout(title=dict(text=f"{result.model} · token {query} · layer {layer} · {what}", x=0.01),
                      margin=dict(t=50))
    return fig


# -- local or global, and flow -----------------------------------------------------------------
def rollout(result: Resultish, token: int | None = None, *, stack: str | None = None, fusion: str = "mean",
            merge: bool = False, hide_special: bool = False) -> go.Figure:
    """Attention rollout from output ``token`` through every layer: bars over the input
    tokens of a text, an overlay on the photo of an image."""
    result = load(result)
    stack = _self_stack(result, stack)
    source = source_token(result, stack, token)
    weights = {"rollout": flow_analysis.rollout(result.attn[stack], _fusion(fusion), source=source)}
    return flow_viz.method_figure(result, stack, source, weights, merge=merge, hide_special=hide_special)


def flow(result: Resultish, token: int | None = None, *, stack: str | None = None, fusion: str = "mean",
         merge: bool = False, hide_special: bool = False) -> go.Figure:
    """How output ``token`` draws on the input by raw attention (last layer), rollout and
    exact attention flow side by side (flow left out when the graph is too big)."""
    result = load(result)
    stack = _self_stack(result, stack)
    source = source_token(result, stack, token)
    attn, fusion = result.attn[stack], _fusion(fusion)
    weights = {"raw attention": flow_analysis.last_layer_attention(attn, source, fusion),
               "rollout": flow_analysis.rollout(attn, fusion, source=source)}
    layers, n = attn.shape[0], attn.shape[-1]
    if layers * n * n <= flow_analysis.MAX_FLOW_EDGES:
        weights["flow"] = flow_analysis.attention_flow(attn, source, fusion)
    return flow_viz.method_figure(result, stack, source, weights, merge=merge, hide_special=hide_special)


def routes(result: Resultish, token: int | None = None, *, stack: str | None = None, pooled: bool = False,
           threshold: float | None = None) -> go.Figure:
    """The information-flow routes of the attention down to output ``token`` (every token,
    read as their mean, when ``pooled``): a layered graph of the edges whose weight in the
    residual-augmented attention (heads' mean, as rollout) is at least ``threshold`` and that
    reach the output (docs/routes.md); by default the threshold keeps about 5% of the edges.
    An edge's hover gives each head's own attention weight on it."""
    result = load(result)
    stack = _self_stack(result, stack)
    attn = result.attn[stack]
    n_layers, n_heads, n, _ = attn.shape
    outputs = np.arange(n) if pooled else source_token(result, stack, token)
    fused = np.stack([flow_analysis.fuse_stream((result.attention(layer, h, stack) for h in range(n_heads)), "mean")
                      for layer in range(n_layers)])
    found = routes_analysis.routes(fused, "attention", outputs, threshold=threshold, heads=attn,
                                   max_edges=routes_viz.MAX_DRAWN_EDGES)
    tokens = result.key_tokens(stack)
    what = "every token (mean)" if pooled else f"token {int(outputs)} ({tokens[int(outputs)]!r})"
    image = result.kind == "image" and result.image is not None
    return routes_viz.routes_figure(found, tokens, title=f"{result.model} · attention routes to {what}",
                                    photo=Image.fromarray(result.image) if image else None,
                                    grid=result.grid if result.kind == "image" else None)


def distance(result: Resultish, *, stack: str | None = None, window: int = 2) -> go.Figure:
    """Mean attention distance of every head against depth (the ViT paper's Fig. 7)."""
    result = load(result)
    stack = _stack(result, stack)
    stats = head_stats(result, stack, window=window)
    return flow_viz.distance_depth(stats, title=f"{result.model} · {stack}: one dot per head")


# -- checking the arguments --------------------------------------------------------------------
def _stack(result: AttentionResult, stack: str | None) -> str:
    stack = stack or result.stacks[0]
    if stack not in result.stacks:
        raise AttnvizError(f"the result has no {stack!r} stack; it has {', '.join(result.stacks)}")
    return stack


def _self_stack(result: AttentionResult, stack: str | None) -> str:
    stack = _stack(result, stack)
    if stack == "cross":
        raise AttnvizError("rollout and flow follow self-attention down a stack; choose encoder or decoder")
    return stack


def _index(i: int, n: int, what: str) -> int:
    i = int(i)
    if not -n <= i < n:
        raise AttnvizError(f"{what} {i} is out of range: there are {n} (0..{n - 1})")
    return i % n


def _layer(result: AttentionResult, stack: str, layer: int) -> int:
    return _index(layer, result.attn[stack].shape[0], "layer")


def _head(result: AttentionResult, stack: str, head: int | str) -> int | str:
    if isinstance(head, str) and not head.lstrip("-").isdigit():
        return _fusion(head)
    return _index(int(head), result.attn[stack].shape[1], "head")


def _fusion(fusion: str) -> str:
    if fusion not in FUSIONS:
        raise AttnvizError(f"heads are fused by one of {', '.join(FUSIONS)}, not {fusion!r}")
    return fusion


def source_token(result: AttentionResult, stack: str, token: int | None) -> int:
    """``token`` checked, or by default the output token that rollout and flow start from: the
    first (CLS) of an encoder, the last of a decoder."""
    n = result.attn[stack].shape[-1]
    if token is None:
        return n - 1 if result.is_causal(stack) else 0
    return _index(token, n, "token")


def _photo(result: AttentionResult) -> Image.Image:
    if result.kind != "image" or result.grid is None:
        raise AttnvizError("overlays are for images; for texts see heatmap, rollout and highlight")
    if result.image is None:
        raise AttnvizError("this result holds no picture to draw on")
    return Image.fromarray(result.image)
