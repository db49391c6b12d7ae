"""Figures of the mechanics lab and of "Build your own": small labelled matrices, per-row bars,
grids of heads, the cost chart and the training curve. Pure plotly: data in, figure out.

Matrices here are small (the lab caps them at a few dozen rows), so every figure carries its
numbers; nothing is downsampled.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from attnviz.analysis.tokens import unique_labels
from attnviz.viz.heatmap import COLORSCALE, title_layout

TEXT_CELLS = 400  # matrices with more cells than this show colours only, numbers on hover
DIVERGING = "RdBu_r"  # scores and values: blue negative, white 0, red positive
METHOD_COLOURS = dict(zip(("global", "local", "top-k", "fused"), qualitative.D3))
ROW_PX = 26


def matrix(values: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], *, title: str = "",
           weights: bool = False, row_title: str = "query", col_title: str = "key") -> go.Figure:
    """A heatmap of ``values[row, col]`` with the numbers written in the cells.

    weights: the values are attention weights (0 to 1, white to blue); otherwise any real
    numbers on a diverging scale centred on 0. Cells at -inf (masked scores) are left blank
    and read "-inf".
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.where(np.isfinite(values), values, np.nan)
    text = np.where(np.isneginf(values), "-inf", np.vectorize(lambda v: f"{v:.2f}")(values))
    if weights:
        colour = dict(colorscale=COLORSCALE, zmin=0.0, zmax=1.0)
    else:
        top = float(np.nanmax(np.abs(finite))) if np.isfinite(finite).any() else 1.0
        colour = dict(colorscale=DIVERGING, zmin=-top or -1.0, zmax=top or 1.0)
    show_text = values.size <= TEXT_CELLS
    fig = go.Figure(go.Heatmap(
        z=finite, x=unique_labels(list(col_labels)), y=unique_labels(list(row_labels)), text=text,
        texttemplate="%{text}" if show_text else None, textfont=dict(size=10), xgap=1, ygap=1,
        hovertemplate=f"{row_title} %{{y}}<br>{col_title} %{{x}}<br>%{{text}}<extra></extra>",
        colorbar=dict(thickness=10), **colour))
    fig.update_layout(
        title=title_layout(title), height=_height(len(row_labels)), margin=dict(l=10, r=10, t=70, b=10),
        xaxis=dict(side="top", type="category", tickangle=-45, automargin=True, title=col_title),
        yaxis=dict(autorange="reversed", type="category", automargin=True, title=row_title),
        plot_bgcolor="#eeeeee")
    return fig


def row_bars(values: np.ndarray, row_labels: Sequence[str], *, title: str = "", xmax: float | None = None,
             axis_title: str = "") -> go.Figure:
    """One horizontal bar per row (top to bottom, like the rows of :func:`matrix`)."""
    fig = go.Figure(go.Bar(x=np.asarray(values, dtype=np.float64), y=unique_labels(list(row_labels)),
                           orientation="h", marker_color="#1f77b4", texttemplate="%{x:.2f}",
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>"))
    fig.update_layout(title=title_layout(title), height=_height(len(row_labels)), margin=dict(l=10, r=10, t=70, b=10),
                      xaxis=dict(range=[0, xmax] if xmax else None, title=axis_title),
                      yaxis=dict(autorange="reversed", type="category", automargin=True))
    return fig


def head_grid(weights: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], *,
              row_names: Sequence[str] | None = None, title: str = "") -> go.Figure:
    """Small multiples of attention weights ``[grid rows, grid cols, queries, keys]`` (e.g.
    [layers, heads, ...]), all on one 0-to-1 colour scale; ``row_names`` label the grid rows."""
    weights = np.asarray(weights, dtype=np.float32)
    rows, cols = weights.shape[:2]
    names = list(row_names) if row_names is not None else [""] * rows
    fig = make_subplots(rows=rows, cols=cols, horizontal_spacing=0.02, vertical_spacing=0.06 if rows > 1 else 0,
                        shared_xaxes=True, shared_yaxes=True,
                        subplot_titles=[f"{names[r]} head {c}".strip() for r in range(rows) for c in range(cols)])
    x, y = unique_labels(list(col_labels)), unique_labels(list(row_labels))
    for r in range(rows):
        for c in range(cols):
            fig.add_trace(go.Heatmap(
                z=weights[r, c], x=x, y=y, zmin=0.0, zmax=1.0, colorscale=COLORSCALE, showscale=r == c == 0,
                colorbar=dict(thickness=10, title="weight"),
                hovertemplate=f"{names[r]} head {c}<br>query %{{y}}<br>key %{{x}}<br>weight %{{z:.3f}}<extra></extra>"),
                row=r + 1, col=c + 1)
    labelled = cols <= 4 and len(x) <= 16  # a few panels have room for the token labels
    fig.update_xaxes(type="category", showticklabels=False, tickangle=-45)
    fig.update_yaxes(type="category", autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=labelled, row=rows)  # keys under the bottom row
    fig.update_yaxes(showticklabels=labelled, col=1)  # queries left of the first column
    side = max(120, min(260, 900 // max(cols, 1)))
    fig.update_layout(title=title_layout(title), height=70 + rows * (side + 30), margin=dict(l=10, r=10, t=70, b=10),
                      plot_bgcolor="white")
    return fig


def cost_chart(lengths: Sequence[int], formula: dict[str, tuple[Sequence[float], Sequence[float]]],
               measured: Sequence, *, throughput: float, title: str = "") -> go.Figure:
    """Time (left) and memory (right) against the sequence length n, log-log.

    formula: method -> (flops per n, bytes per n) at ``lengths``; flops become seconds at
    ``throughput`` flop/s (dashed lines). measured: points with ``method``, ``n``, ``seconds``,
    ``peak_bytes`` (solid lines with markers); points with seconds None are left out.
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=("time of one call (s)", "peak memory (bytes)"),
                        horizontal_spacing=0.1)
    for method, (flops, nbytes) in formula.items():
        style = dict(color=METHOD_COLOURS.get(method), dash="dash")
        for col, y in ((1, np.asarray(flops, dtype=np.float64) / throughput), (2, nbytes)):
            fig.add_trace(go.Scatter(x=list(lengths), y=list(y), mode="lines", line=style, legendgroup=method,
                                     name=f"{method}, formula", showlegend=col == 1,
                                     hovertemplate=f"{method} formula<br>n %{{x}}<br>%{{y:.3g}}<extra></extra>"),
                          row=1, col=col)
    for method in dict.fromkeys(p.method for p in measured):
        points = [p for p in measured if p.method == method and p.seconds is not None]
        if not points:
            continue
        n = [p.n for p in points]
        style = dict(color=METHOD_COLOURS.get(method))
        for col, y in ((1, [p.seconds for p in points]), (2, [p.peak_bytes for p in points])):
            fig.add_trace(go.Scatter(x=n, y=y, mode="lines+markers", line=style, legendgroup=method,
                                     name=f"{method}, measured", showlegend=col == 1,
                                     hovertemplate=f"{method} measured<br>n %{{x}}<br>%{{y:.3g}}<extra></extra>"),
                          row=1, col=col)
    fig.update_xaxes(type="log", title="sequence length n (tokens)")
    fig.update_yaxes(type="log", exponentformat="SI")
    fig.update_layout(title=title_layout(title), height=460, margin=dict(l=10, r=10, t=80, b=10),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def training_chart(steps: Sequence[int], loss: Sequence[float], accuracy: Sequence[float], *,
                   title: str = "", unit: str = "token") -> go.Figure:
    """Loss (left axis, nats per ``unit``) and accuracy (right axis, 0-1) per training step;
    ``unit``: what one prediction is (a token of a toy task, an example of a classifier)."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=list(steps), y=list(loss), name=f"loss (nats/{unit})", line=dict(color="#d62728")),
                  secondary_y=False)
    fig.add_trace(go.Scatter(x=list(steps), y=list(accuracy), name=f"{unit} accuracy", line=dict(color="#1f77b4")),
                  secondary_y=True)
    fig.update_yaxes(title="loss", rangemode="tozero", showgrid=False, secondary_y=False)
    fig.update_yaxes(title="accuracy", range=[0, 1.02], dtick=0.2, tickformat=".0%", secondary_y=True)
    fig.update_xaxes(title="step")
    fig.update_layout(title=title_layout(title), height=340, margin=dict(l=10, r=10, t=80, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=1, xanchor="right"))
    return fig


def _height(n_rows: int) -> int:
    return int(min(720, max(220, 100 + ROW_PX * n_rows)))
