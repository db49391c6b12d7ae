"""Token highlighting: a text's tokens as running lines, each on a background coloured by a
score (a rollout share, an attribution...). Pure plotly.

The figure is one heatmap of ``[lines, per_line]`` cells, token ``i`` in cell
``(i // per_line, i % per_line)`` with its label written in it; empty cells past the last
token are blank. Scores that are all >= 0 run from white (0) to the colour scale's darkest
(their maximum); signed scores use a diverging scale centred on 0.
"""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from attnviz.viz.heatmap import COLORSCALE, plotly_text, title_layout

DIVERGING = "RdBu_r"  # signed scores: blue negative, white 0, red positive
LINE_PX = 34


def token_highlight(labels: list[str], scores: np.ndarray, *, title: str = "", note: str = "",
                    per_line: int = 12, score_name: str = "score") -> go.Figure:
    """``labels[i]`` coloured by ``scores[i]`` (one score per token, in token order), written
    ``per_line`` tokens a line; the hover gives the token's index and exact score."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores for {len(labels)} tokens")
    n = len(labels)
    per_line = max(1, min(per_line, n))
    lines = -(-n // per_line)
    z = np.full(lines * per_line, np.nan)
    z[:n] = scores
    text = np.array(plotly_text(labels) + [""] * (lines * per_line - n), dtype=object)
    index = np.arange(lines * per_line)
    finite = scores[np.isfinite(scores)]
    low = float(finite.min()) if finite.size else 0.0
    top = float(np.abs(finite).max()) if finite.size else 1.0
    colour = (dict(colorscale=DIVERGING, zmin=-top or -1.0, zmax=top or 1.0) if low < 0
              else dict(colorscale=COLORSCALE, zmin=0.0, zmax=top or 1.0))
    fig = go.Figure(go.Heatmap(
        z=z.reshape(lines, per_line), text=text.reshape(lines, per_line), texttemplate="%{text}",
        customdata=index.reshape(lines, per_line), xgap=2, ygap=2, textfont=dict(size=13),
        hovertemplate=f"token %{{customdata}} · %{{text}}<br>{score_name} %{{z:.4f}}<extra></extra>",
        colorbar=dict(title=score_name, thickness=12), **colour))
    fig.update_layout(
        title=title_layout(title, note), height=int(130 + LINE_PX * lines), margin=dict(l=10, r=10, t=90, b=10),
        xaxis=dict(visible=False), yaxis=dict(visible=False, autorange="reversed"), plot_bgcolor="white")
    return fig
