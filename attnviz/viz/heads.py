"""Figures of the head atlas, head similarity and comparisons: pure plotly, no Streamlit.

- :func:`atlas_figure`: the layers x heads grid coloured by each head's role label; the hover
  gives every score; an invisible marker per head (point ``layer * n_heads + head`` of trace
  1, customdata ``[layer, head]``) makes a click select it.
- :func:`clustered_figure`: the heads' divergence matrix in dendrogram order, the dendrogram
  above it (scipy's hierarchy); point ``k`` of the heatmap's marker trace is leaf ``k``.
- :func:`side_by_side`, :func:`difference_figure`: two aligned maps, and A - B.
- :func:`head_grid`: any ``[rows, cols]`` per-head number (divergence, score difference).
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from attnviz.analysis.similarity import HeadClusters
from attnviz.viz.heatmap import COLORSCALE, plotly_text, title_layout

ROLE_COLOURS = {
    "induction": "#d62728", "duplicate_token": "#ff7f0e", "previous_token": "#1f77b4", "self": "#9467bd",
    "first_token": "#7f7f7f", "special": "#8c564b", "delimiter": "#e377c2", "local": "#17becf", "none": "#ececec",
}
MAX_TICK_LABELS = 80  # above this many heads the clustered heatmap names them on hover only


def _score_text(scores: dict[str, np.ndarray], layer: int, head: int) -> str:
    return "<br>".join(f"{name} {'n/a' if np.isnan(v[layer, head]) else f'{v[layer, head]:.3f}'}"
                       for name, v in scores.items())


def atlas_figure(scores: dict[str, np.ndarray], labels: np.ndarray, *, title: str = "", note: str = "",
                 selected: tuple[int, int] | None = None) -> go.Figure:
    """Layers (down) x heads (across), each cell the colour of its label (ROLE_COLOURS); the
    hover shows the label and every score of ``scores`` (name -> ``[layers, heads]``)."""
    n_layers, n_heads = labels.shape
    names = [r for r in ROLE_COLOURS if (labels == r).any()]
    code = np.vectorize(names.index)(labels).astype(float)
    k = len(names)
    scale = []
    for i, name in enumerate(names):  # a step per label
        scale += [[i / k, ROLE_COLOURS[name]], [(i + 1) / k, ROLE_COLOURS[name]]]
    fig = go.Figure(go.Heatmap(z=code, x=list(range(n_heads)), y=list(range(n_layers)), zmin=-0.5, zmax=k - 0.5,
                               colorscale=scale, showscale=False, hoverinfo="skip", xgap=2, ygap=2))
    layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
    hover = [f"layer {l}, head {h}: <b>{labels[l, h]}</b><br>{_score_text(scores, l, h)}" for l, h in zip(layer, head)]
    fig.add_trace(go.Scatter(x=head, y=layer, mode="markers", marker=dict(size=18, symbol="square",
                             color="rgba(0,0,0,0)"), customdata=np.stack([layer, head], 1).tolist(),
                             hovertext=hover, hovertemplate="%{hovertext}<extra></extra>", showlegend=False))
    for name in names:  # legend entries
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name,
                                 marker=dict(size=12, symbol="square", color=ROLE_COLOURS[name])))
    if selected is not None:
        l, h = selected
        fig.add_shape(type="rect", x0=h - 0.5, x1=h + 0.5, y0=l - 0.5, y1=l + 0.5, line=dict(color="black", width=3))
    fig.update_xaxes(title="head", dtick=1, side="top", showgrid=False, zeroline=False)
    fig.update_yaxes(title="layer", dtick=1, autorange="reversed", showgrid=False, zeroline=False)
    fig.update_layout(title=title_layout(title, note), height=160 + 26 * n_layers, margin=dict(l=10, r=10, t=110, b=10),
                      legend=dict(orientation="h", y=-0.02, yanchor="top"), plot_bgcolor="white",
                      clickmode="event+select", dragmode=False)
    return fig


def clustered_figure(clusters: HeadClusters, *, title: str = "", note: str = "",
                     selected: int | None = None) -> go.Figure:
    """The divergence matrix with heads in dendrogram leaf order, the dendrogram on top.
    ``selected``: a head (``layer * n_heads + head``) whose row and column are outlined."""
    order = clusters.order
    n = len(order)
    names = [clusters.name(i) for i in order]
    d = clusters.divergence[np.ix_(order, order)]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.22, 0.78], vertical_spacing=0.01)
    for xs, ys in clusters.tree_lines():
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="#555", width=1), hoverinfo="skip",
                                 showlegend=False), row=1, col=1)
    fig.add_trace(go.Heatmap(z=d.astype(np.float32), x=list(range(n)), y=list(range(n)), zmin=0.0,
                             zmax=max(1e-6, float(d.max())), colorscale=COLORSCALE, reversescale=True,
                             customdata=np.array([[f"{a} vs {b}" for b in names] for a in names]),
                             hovertemplate="%{customdata}<br>JS divergence %{z:.3f}<extra></extra>",
                             colorbar=dict(title="JS (bits)", thickness=12, len=0.75, y=0.38)), row=2, col=1)
    if selected is not None:
        k = int(np.flatnonzero(order == selected)[0])
        for kw in (dict(x0=k - 0.5, x1=k + 0.5, y0=-0.5, y1=n - 0.5), dict(x0=-0.5, x1=n - 0.5, y0=k - 0.5, y1=k + 0.5)):
            fig.add_shape(type="rect", line=dict(color="#d62728", width=2), row=2, col=1, **kw)
    ticks = dict(tickvals=list(range(n)), ticktext=names) if n <= MAX_TICK_LABELS else dict(showticklabels=False)
    fig.update_xaxes(showgrid=False, zeroline=False, range=[-0.5, n - 0.5], **ticks, row=2, col=1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, row=1, col=1)
    fig.update_yaxes(title="joins at", showgrid=False, row=1, col=1)
    fig.update_yaxes(autorange="reversed", showgrid=False, zeroline=False, **ticks, row=2, col=1)
    side = min(1100, max(420, 8 * n + 200))
    fig.update_layout(title=title_layout(title, note), height=side + 120, margin=dict(l=10, r=10, t=90, b=10),
                      plot_bgcolor="white")
    return fig


def side_by_side(a: np.ndarray, b: np.ndarray, labels_a: list[str], labels_b: list[str], *, title_a: str,
                 title_b: str, title: str = "") -> go.Figure:
    """Two maps ``[query, key]`` next to each other on one colour scale (0..1)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=(title_a, title_b), horizontal_spacing=0.12)
    for col, (m, labels) in enumerate(((a, labels_a), (b, labels_b)), start=1):
        text = plotly_text(labels)
        fig.add_trace(go.Heatmap(z=np.asarray(m, np.float32), x=text, y=text, zmin=0.0, zmax=1.0, colorscale=COLORSCALE,
                                 showscale=col == 2, colorbar=dict(title="weight", thickness=12),
                                 hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.4f}<extra></extra>"),
                      row=1, col=col)
        fig.update_xaxes(type="category", tickangle=-60, side="bottom", row=1, col=col)
        fig.update_yaxes(type="category", autorange="reversed", row=1, col=col)
    n = max(len(labels_a), len(labels_b))
    fig.update_layout(title=title_layout(title), height=int(min(760, max(360, 160 + 16 * n))),
                      margin=dict(l=10, r=10, t=120, b=10))
    return fig


def difference_figure(diff: np.ndarray, labels: list[str], *, title: str = "") -> go.Figure:
    """``diff[query, key]`` = A - B on a red (A more) / blue (B more) scale centred on 0."""
    top = max(1e-6, float(np.nanmax(np.abs(diff))))
    text = plotly_text(labels)
    fig = go.Figure(go.Heatmap(z=np.asarray(diff, np.float32), x=text, y=text, zmin=-top, zmax=top, colorscale="RdBu",
                               reversescale=True, colorbar=dict(title="A − B", thickness=12),
                               hovertemplate="query %{y}<br>key %{x}<br>A − B %{z:+.4f}<extra></extra>"))
    fig.update_xaxes(type="category", tickangle=-60, side="top")
    fig.update_yaxes(type="category", autorange="reversed")
    fig.update_layout(title=title_layout(title), height=int(min(760, max(360, 160 + 16 * len(labels)))),
                      margin=dict(l=10, r=10, t=120, b=10))
    return fig


def head_grid(values: np.ndarray, *, title: str, label: str, row_name: str = "layer", col_name: str = "head",
              diverging: bool = False) -> go.Figure:
    """A heat map of ``values[row, col]``, one cell per head (or per pair of heads)."""
    n_rows, n_cols = values.shape
    finite = values[np.isfinite(values)]
    top = max(1e-6, float(np.abs(finite).max())) if finite.size else 1.0
    fig = go.Figure(go.Heatmap(
        z=values.astype(np.float32), x=list(range(n_cols)), y=list(range(n_rows)),
        colorscale="RdBu" if diverging else "Viridis", reversescale=diverging,
        zmin=-top if diverging else 0.0, zmax=top, colorbar=dict(title=label, thickness=12),
        hovertemplate=f"{row_name} %{{y}}, {col_name} %{{x}}<br>{label} %{{z:.3f}}<extra></extra>"))
    fig.update_xaxes(title=col_name, dtick=1 if n_cols <= 40 else None)
    fig.update_yaxes(title=row_name, dtick=1 if n_rows <= 40 else None, autorange="reversed")
    fig.update_layout(title=title_layout(title), height=160 + 24 * min(n_rows, 40), margin=dict(l=10, r=10, t=80, b=10))
    return fig


def role_panels(scores: dict[str, np.ndarray], *, title: str = "", note: str = "") -> go.Figure:
    """One layers x heads panel per role of ``scores`` (name -> ``[layers, heads]``, 0..1), side
    by side on one colour scale."""
    names = list(scores)
    n_layers, n_heads = next(iter(scores.values())).shape
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.06)
    for col, name in enumerate(names, start=1):
        fig.add_trace(go.Heatmap(z=np.asarray(scores[name], np.float32), x=list(range(n_heads)), y=list(range(n_layers)),
                                 zmin=0.0, zmax=1.0, colorscale=COLORSCALE, showscale=col == len(names),
                                 colorbar=dict(title="score", thickness=12), xgap=1, ygap=1,
                                 hovertemplate=f"layer %{{y}}, head %{{x}}<br>{name} %{{z:.3f}}<extra></extra>"),
                      row=1, col=col)
        fig.update_xaxes(title="head", dtick=1 if n_heads <= 16 else None, row=1, col=col)
        fig.update_yaxes(autorange="reversed", dtick=1 if n_layers <= 12 else 2, row=1, col=col,
                         title="layer" if col == 1 else None)
    fig.update_layout(title=title_layout(title, note), height=180 + 18 * n_layers, margin=dict(l=10, r=10, t=100, b=10),
                      plot_bgcolor="white")
    return fig
