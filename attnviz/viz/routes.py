"""Information-flow routes (attnviz.analysis.routes) as a layered graph: pure plotly.

Layers are rows (0, the input, at the bottom; L, the output, at the top) and tokens columns,
in token order (for an image: the prefix tokens, then the patches row by row, a faint line
between two rows of the grid). Tokens with no kept node are collapsed: each run of them
becomes a thin gap, marked on the input row with how many tokens it holds. Edges are drawn as
lines, wider for a larger weight, grouped into a few widths (one trace each); nodes are dots
coloured by their share of the output, on a log scale, with the output nodes ringed. An edge
from a token to itself (the residual stream's share) is grey, an edge across tokens dark red.

Traces, in order: the edge lines (one per width and colour drawn, hover off), ``EDGE_HOVER`` (one
invisible point per kept edge, two thirds of the way up it, whose hover lists the heads that
carry it), ``NODES`` (one point per kept node, ``customdata = [layer, token]`` so that a
click can open that layer's heatmap with the token selected), and ``GAPS`` (one point per
collapsed run) when there is one.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from attnviz.analysis.routes import Routes
from attnviz.analysis.tokens import display_label
from attnviz.errors import AttnvizError
from attnviz.result import PatchGrid
from attnviz.viz.heatmap import plotly_text
from attnviz.viz.image import data_uri, fit_size

EDGE_HOVER, NODES, GAPS = "edges", "nodes", "collapsed tokens"
MAX_DRAWN_EDGES = 30_000  # more lines than a browser draws smoothly, and than anyone can read
WIDTHS = 6  # line widths drawn, from the threshold to the strongest edge
RESIDUAL_RGB, MIXING_RGB = "160, 160, 175", "150, 30, 70"  # a token to itself (grey), across tokens (wine)
FAINT_EDGES = 200  # the thinnest lines fade as the edges outnumber this (opacity 0.6 down to 0.1)
GAP = 0.4  # the width of a collapsed run of tokens, in columns
HEADS_LISTED = 6  # heads named on an edge's hover, the strongest first
SHARE_FLOOR = 1e-4  # shares below this are coloured as this (log scale)
THUMB_PX = 160  # longest side of the photo's thumbnail under the input row
ROW_PX = 40  # height of one layer row
TOP_PX = 70  # room for the title and its note
LABELS_PX = 70  # room for the token labels under the input row


def columns(idle: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """x of every token (``[N]`` float; a collapsed token gets its gap's centre) and the
    collapsed runs ``(first, last, x)``: shown tokens one column apart, a run of idle tokens
    a gap of GAP columns."""
    x = np.empty(len(idle))
    runs = []
    at = 0.0
    t = 0
    while t < len(idle):
        if not idle[t]:
            x[t] = at
            at += 1.0
            t += 1
            continue
        end = t
        while end + 1 < len(idle) and idle[end + 1]:
            end += 1
        centre = at - 0.5 + GAP / 2
        x[t:end + 1] = centre
        runs.append((t, end, centre))
        at += GAP
        t = end + 1
    return x, runs


def head_lines(heads: np.ndarray | None, n_edges: int) -> list[str]:
    """The hover line of each of ``n_edges`` edges: its strongest heads (``heads[edge, head]``)
    with their contributions, or that the method has no per-head values (``heads`` None)."""
    if heads is None:
        return ["this method has no per-head values"] * n_edges
    order = np.argsort(-heads, axis=1, kind="stable")[:, :HEADS_LISTED]
    more = heads.shape[1] - order.shape[1]
    tail = f", … ({more} more)" if more > 0 else ""
    return ["heads " + ", ".join(f"h{h} {row[h]:.3f}" for h in top) + tail for row, top in zip(heads, order)]


def width_classes(weights: np.ndarray, threshold: float) -> list[np.ndarray]:
    """WIDTHS boolean masks over the edges, thinnest first: the weights from ``threshold`` to
    the largest split evenly on a square-root scale (so that edges well above the threshold
    stand out even when the residual edges weigh far more)."""
    top = float(weights.max()) if len(weights) else threshold
    position = np.sqrt(np.clip((weights - threshold) / max(top - threshold, 1e-12), 0.0, 1.0))
    cls = np.minimum((position * WIDTHS).astype(int), WIDTHS - 1)
    return [cls == w for w in range(WIDTHS)]


def routes_figure(r: Routes, tokens: list[str], *, title: str = "", photo: Image.Image | None = None,
                  grid: PatchGrid | None = None) -> go.Figure:
    """The layered graph of routes ``r`` over ``tokens`` (one label per token). For an image,
    ``grid`` marks the rows of patches and ``photo`` is drawn small under the input row (as a
    ``data:`` URI, no outside request)."""
    n_layers, n = r.n_layers, r.n_tokens
    if len(tokens) != n:
        raise AttnvizError(f"{len(tokens)} token labels for routes over {n} tokens.")
    if len(r.edges) > MAX_DRAWN_EDGES:
        raise AttnvizError(f"{len(r.edges):,} edges are kept at threshold {r.threshold:.4g}: too many to draw "
                           f"(at most {MAX_DRAWN_EDGES:,}); raise the threshold.")
    labels = plotly_text([display_label(t) for t in tokens])
    x, runs = columns(r.idle_tokens())
    shown = np.flatnonzero(~r.idle_tokens())
    fig = go.Figure()

    layer, i, j = r.edges.T
    faint = float(np.clip(FAINT_EDGES / max(len(r.edges), 1), 0.1, 0.6))  # the thinnest lines' opacity
    residual = i == j
    for w, pick in enumerate(width_classes(r.weights, r.threshold)):
        step = (w / (WIDTHS - 1)) ** 2
        for own, rgb in ((True, RESIDUAL_RGB), (False, MIXING_RGB)):
            chosen = pick & (residual == own)
            if not chosen.any():
                continue
            xs = np.stack([x[j[chosen]], x[i[chosen]], np.full(chosen.sum(), np.nan)], axis=1).ravel()
            ys = np.stack([layer[chosen], layer[chosen] + 1, np.full(chosen.sum(), np.nan)], axis=1).ravel()
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                     line=dict(width=0.4 + 4.6 * step,
                                               color=f"rgba({rgb}, {faint + (0.8 - faint) * step:.2f})")))

    heads = head_lines(r.heads, len(r.edges))
    text = [f"layer {l + 1}: {labels[b]} ({b}) → {labels[a]} ({a})<br>weight {w:.4f}<br>{h}"
            for l, a, b, w, h in zip(layer.tolist(), i.tolist(), j.tolist(), r.weights.tolist(), heads)]
    fig.add_trace(go.Scatter(x=x[j] + (x[i] - x[j]) * 2 / 3, y=layer + 2 / 3, mode="markers", name=EDGE_HOVER,
                             text=text, hovertemplate="%{text}<extra></extra>", showlegend=False,
                             marker=dict(size=6, color="rgba(0,0,0,0)")))

    node_layer, node_token = np.nonzero(r.kept_nodes)
    share = r.shares[node_layer, node_token]
    is_output = np.isin(node_token, r.outputs) & (node_layer == n_layers)
    ticks = (10.0 ** np.arange(np.log10(SHARE_FLOOR), 0.5)).tolist()
    size = float(np.clip(700 / max(len(shown), 1), 5, 14))
    fig.add_trace(go.Scatter(
        x=x[node_token], y=node_layer, mode="markers", name=NODES, showlegend=False,
        customdata=np.stack([node_layer, node_token], axis=1),
        text=[f"{'output · ' if o else ''}{'input' if l == 0 else f'layer {l}'} · {labels[t]} ({t})<br>share {s:.4f}"
              for l, t, s, o in zip(node_layer.tolist(), node_token.tolist(), share.tolist(), is_output.tolist())],
        hovertemplate="%{text}<extra></extra>",
        marker=dict(size=size, color=np.log10(np.maximum(share, SHARE_FLOOR)), colorscale="Viridis",
                    cmin=np.log10(SHARE_FLOOR), cmax=0.0,
                    line=dict(width=np.where(is_output, 2.0, 0.5), color=np.where(is_output, "#d62728", "#333")),
                    colorbar=dict(title="share of<br>the output", tickvals=np.log10(ticks).tolist(),
                                  ticktext=[f"{v:g}" for v in ticks], len=0.6))))
    if runs:
        fig.add_trace(go.Scatter(
            x=[c for _, _, c in runs], y=[0] * len(runs), mode="markers", name=GAPS, showlegend=False,
            text=[f"tokens {a}–{b} ({b - a + 1}): no kept route" if b > a else f"token {a}: no kept route"
                  for a, b, _ in runs],
            hovertemplate="%{text}<extra></extra>",
            marker=dict(symbol="line-ns", size=10, line=dict(width=1, color="#999"))))

    if grid is not None:  # faint lines between the rows of patches
        for row in range(1, grid.rows):
            first = grid.prefix + row * grid.cols
            fig.add_vline(x=(x[first - 1] + x[first]) / 2, line=dict(width=0.5, color="#ccc", dash="dot"))
    plot_px = ROW_PX * (n_layers + 1.1)
    below = LABELS_PX
    if photo is not None:  # under the token labels, in the bottom margin
        thumb = photo.convert("RGB").resize(fit_size(photo.size, THUMB_PX), Image.Resampling.BILINEAR)
        fig.add_layout_image(source=data_uri(thumb), xref="paper", yref="paper", x=0.0, y=-LABELS_PX / plot_px,
                             sizex=1.0, sizey=thumb.height / plot_px, xanchor="left", yanchor="top",
                             sizing="contain", layer="above")
        below += thumb.height + 10

    tickvals = [float(x[t]) for t in shown] + [c for _, _, c in runs]
    ticktext = [labels[t] for t in shown] + [f"⋯{b - a + 1}" for a, b, _ in runs]
    fig.update_xaxes(tickmode="array", tickvals=tickvals, ticktext=ticktext, tickangle=-90,
                     tickfont=dict(size=9 if len(tickvals) > 60 else 11), showgrid=False, zeroline=False,
                     range=[float(x.min()) - 0.8, float(x.max()) + 0.8])
    fig.update_yaxes(tickmode="array", tickvals=list(range(n_layers + 1)),
                     ticktext=["input"] + [f"layer {l}" for l in range(1, n_layers + 1)],
                     range=[-0.6, n_layers + 0.5], showgrid=False, zeroline=False)
    note = (f"{r.method} · threshold {r.threshold:.4g} · {len(r.edges):,} edges kept · "
            f"{int((~r.idle_tokens()).sum())} of {n} tokens shown")
    fig.update_layout(title=dict(text=f"{title}<br><sup>{note}</sup>" if title else note, x=0.01),
                      height=int(TOP_PX + plot_px + below), plot_bgcolor="white",
                      margin=dict(l=70, r=10, t=TOP_PX, b=below), hovermode="closest", clickmode="event+select",
                      hoverdistance=8)
    return fig
