"""Figures of local versus global attention and of attention flow: pure plotly, no Streamlit.

- :func:`distance_depth`: the ViT paper's Fig. 7, one dot per head per layer (mean attention
  distance against depth), coloured by normalised entropy, shaped by local/mixed/global;
  dot number layer * heads + head of the first trace, so that a click can open that head.
- :func:`stat_heatmap`: one statistic as a layers x heads heat map.
- :func:`token_bars`: raw attention, rollout and flow from one output token, as bars over the
  input tokens (text).
- :func:`method_overlays`: the same weights drawn on the photo side by side (images).
- :func:`method_figure`: either of the two, for a result: bars over the (merged, filtered)
  tokens of a text, overlays on the photo of an image.
- :func:`spread_sankey`: how one output token's rollout spreads through the layers, the
  strongest edges of each layer as a Sankey diagram (text).
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from attnviz.analysis.stats import HeadStats
from attnviz.analysis.tokens import display_label, reduce, token_axis
from attnviz.result import AttentionResult, PatchGrid
from attnviz.viz.image import OverlayStyle, layer_head_heatmap, overlay_grid_figure, patch_heat

STATISTICS = {  # HeadStats field -> what it is called on screen
    "mean_distance": "mean attention distance",
    "distance_ratio": "distance / a uniform head's",
    "local_share": "share within the window",
    "entropy_norm": "normalised entropy",
    "entropy": "entropy (nats)",
    "sink_mass": "sink mass (special tokens)",
}
CLASS_SYMBOLS = {"local": "circle", "mixed": "diamond", "global": "square", "n/a": "x"}
METHOD_COLOURS = {"raw attention": "#8c8c8c", "rollout": "#1f77b4", "flow": "#d62728"}


def stat_label(stats: HeadStats, name: str) -> str:
    """The on-screen name of statistic ``name`` with its unit."""
    if name == "mean_distance":
        return f"{STATISTICS[name]} ({stats.distance_unit})"
    if name == "local_share":
        return f"share within {stats.window} {stats.window_unit}"
    return STATISTICS[name]


def distance_depth(stats: HeadStats, *, spread: HeadStats | None = None, local_min: float = 0.5,
                   global_min: float = 0.75, title: str = "", height: int = 480) -> go.Figure:
    """Mean attention distance of every head against its layer (x = layer, 0-based; the heads
    of a layer are spread a little around it), coloured by normalised entropy, one marker
    shape per class (:meth:`HeadStats.classes` with the given thresholds). With ``spread``
    (the standard deviations over several inputs) each dot gets an error bar. A dashed line
    marks the distance of a head that attends evenly. The first trace holds the dots, head by
    head within layer by layer: dot ``layer * heads + head``."""
    n_layers, n_heads = stats.mean_distance.shape
    layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
    offset = (head - (n_heads - 1) / 2) * (0.6 / max(n_heads, 1))
    classes = stats.classes(local_min, global_min)
    unit = stats.distance_unit
    std = spread.mean_distance if spread is not None else np.zeros_like(stats.mean_distance)
    hover = [f"layer {l}, head {h} · {classes[l, h]}<br>distance {stats.mean_distance[l, h]:.1f}"
             + (f" ± {std[l, h]:.1f}" if spread is not None else "") + f" {unit}"
             f"<br>entropy {stats.entropy[l, h]:.2f} nats ({stats.entropy_norm[l, h]:.2f} of the maximum)"
             f"<br>sink mass {stats.sink_mass[l, h]:.2f} · within window {stats.local_share[l, h]:.2f}"
             for l, h in zip(layer.ravel(), head.ravel())]
    fig = go.Figure(go.Scatter(
        x=(layer + offset).ravel(), y=stats.mean_distance.ravel(), mode="markers",
        text=hover,
        hovertemplate="%{text}<extra></extra>",
        error_y=dict(type="data", array=std.ravel(), visible=spread is not None, thickness=1, width=0),
        marker=dict(size=10, color=stats.entropy_norm.ravel(), colorscale="Viridis", cmin=0.0, cmax=1.0,
                    symbol=[CLASS_SYMBOLS[c] for c in classes.ravel()], line=dict(width=0.5, color="#333"),
                    colorbar=dict(title="entropy /<br>log(keys)")),
        showlegend=False))
    for name, symbol in CLASS_SYMBOLS.items():  # legend entries for the shapes
        if name != "n/a" and (classes == name).any():
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name,
                                     marker=dict(symbol=symbol, size=10, color="#bbb", line=dict(width=0.5, color="#333"))))
    if np.isfinite(stats.uniform_distance):
        fig.add_hline(y=stats.uniform_distance, line_dash="dash", line_color="#999",
                      annotation_text="uniform head", annotation_position="top left")
    fig.update_xaxes(title="layer (network depth)", dtick=1, range=[-0.6, n_layers - 0.4])
    fig.update_yaxes(title=stat_label(stats, "mean_distance"), rangemode="tozero")
    fig.update_layout(title=title, height=height, margin=dict(l=0, r=0, t=40 if title else 10, b=0),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1.0, xanchor="right"),
                      clickmode="event+select")
    return fig


def stat_heatmap(stats: HeadStats, name: str, title: str = "") -> go.Figure:
    """Statistic ``name`` (a key of STATISTICS) as a layers x heads heat map."""
    return layer_head_heatmap(getattr(stats, name), title=title or stat_label(stats, name), label=stat_label(stats, name))


def token_bars(labels: list[str], weights: dict[str, np.ndarray], *, title: str = "") -> go.Figure:
    """One bar chart per method (``weights``: name -> share of each input unit, ``[units]``),
    stacked with a shared x axis of the unit ``labels``."""
    fig = make_subplots(rows=len(weights), cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        subplot_titles=list(weights))
    for row, (name, w) in enumerate(weights.items(), start=1):
        fig.add_trace(go.Bar(x=list(range(len(labels))), y=w, name=name, marker_color=METHOD_COLOURS.get(name),
                             customdata=labels, hovertemplate="%{customdata}: %{y:.3f}<extra>" + name + "</extra>"),
                      row=row, col=1)
        fig.update_yaxes(title="share", rangemode="tozero", row=row, col=1)
    fig.update_xaxes(tickmode="array", tickvals=list(range(len(labels))), ticktext=labels, tickangle=-60,
                     row=len(weights), col=1)
    fig.update_layout(title=title, height=140 + 170 * len(weights), showlegend=False, bargap=0.15,
                      margin=dict(l=0, r=0, t=60 if title else 30, b=0))
    return fig


def method_overlays(photo: Image.Image, grid: PatchGrid, weights: dict[str, np.ndarray],
                    style: OverlayStyle = OverlayStyle()) -> go.Figure:
    """The weights of each method (``[tokens]``, prefix tokens first) drawn on the photo side by
    side; each title says how much went to the prefix tokens, which have no place on it."""
    heats = np.stack([patch_heat(w, grid) for w in weights.values()])
    titles = [f"{name} (prefix {float(np.sum(w[:grid.prefix])):.0%})" for name, w in weights.items()]
    return overlay_grid_figure(photo, heats, titles, style, columns=len(weights))


def method_figure(result: AttentionResult, stack: str, source: int, weights: dict[str, np.ndarray], *,
                  merge: bool = False, hide_special: bool = False, photo: Image.Image | None = None,
                  style: OverlayStyle = OverlayStyle()) -> go.Figure:
    """How output token ``source`` draws on the input by each method (``weights``: name ->
    ``[keys]``, in token order): for a text, :func:`token_bars` over the key tokens (sub-words
    merged and special tokens hidden, rows renormalised, as asked); for an image,
    :func:`method_overlays` on ``photo`` (by default the picture the model saw)."""
    if result.kind != "text":
        if photo is None:
            photo = Image.fromarray(result.image)
        return method_overlays(photo, result.grid, weights, style)
    axis = token_axis(result.key_tokens(stack), result.key_special(stack), result.key_word_spans(stack),
                      merge=merge, hide_special=hide_special)
    one = token_axis(["output"], [False], None)
    shares = {m: reduce(np.asarray(w)[None, :], one, axis)[0] for m, w in weights.items()}
    label = display_label(result.query_tokens(stack)[source])
    return token_bars(axis.labels, shares, title=f"How “{label}” (token {source}) draws on the input")


def spread_sankey(edges: np.ndarray, labels: list[str], n_layers: int, *, title: str = "") -> go.Figure:
    """A Sankey diagram of rollout edges ``[edges, 4]`` rows (layer l, i, j, share) from
    :func:`attnviz.analysis.flow.rollout_spread`: the output token on the left, the input on
    the right, one column per layer boundary, each node a token at that depth."""
    nodes: dict[tuple[int, int], int] = {}

    def node(depth: int, token: int) -> int:
        return nodes.setdefault((depth, token), len(nodes))

    layer, i, j = (edges[:, c].astype(int) for c in range(3))
    source = [node(l, a) for l, a in zip(layer, i)]
    target = [node(l - 1, b) for l, b in zip(layer, j)]
    keys = list(nodes)
    n_tokens = max(len(labels), 1)
    fig = go.Figure(go.Sankey(
        arrangement="snap",
        node=dict(label=[labels[t] for _, t in keys], pad=6, thickness=12,
                  x=[0.01 + 0.98 * (n_layers - d) / n_layers for d, _ in keys],
                  y=[0.01 + 0.98 * t / n_tokens for _, t in keys],
                  customdata=[f"after layer {d - 1}" if d > 0 else "input" for d, _ in keys],
                  hovertemplate="%{label} (%{customdata})<extra></extra>"),
        link=dict(source=source, target=target, value=edges[:, 3],
                  hovertemplate="%{source.label} → %{target.label}: %{value:.3f}<extra></extra>")))
    fig.update_layout(title=title, height=520, margin=dict(l=0, r=0, t=40 if title else 10, b=0))
    return fig
