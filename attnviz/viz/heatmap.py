"""Attention heatmaps as plotly figures, and the shared look of every attnviz chart.

A heatmap shows ``values[row, col]`` (colour) with one label per row and per column; the hover
says the row, the column and the exact attention weight. Arrays travel to the browser as
float32 typed arrays, so a 256 x 256 heatmap is about 350 kB.
"""
from __future__ import annotations

import html
import re

import numpy as np
import plotly.graph_objects as go
from plotly.colors import get_colorscale, sample_colorscale

COLORSCALE = "Blues"  # white (no attention) to dark blue (all of it)
CELL_PX = 14  # height of one row when labels are readable
MIN_HEIGHT, MAX_HEIGHT = 320, 760
TOP_PX = 140  # room for the title and the key labels above the plot


def png_config(filename: str) -> dict:
    """plotly config for st.plotly_chart: the camera button saves a 2x PNG named ``filename``."""
    return {"toImageButtonOptions": {"format": "png", "filename": safe_filename(filename), "scale": 2},
            "displaylogo": False}


def safe_filename(name: str) -> str:
    """``name`` with every character but letters, digits, '.', '_' and '-' replaced by '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "attnviz"


def plotly_text(labels: list[str]) -> list[str]:
    """Labels escaped for plotly, which reads text as HTML: a token such as ``</s>`` or ``<s>``
    would otherwise vanish and strike through what follows."""
    return [html.escape(label, quote=False) for label in labels]


def colour_lut(n: int = 256) -> np.ndarray:
    """``[n, 3]`` uint8 RGB of COLORSCALE at n evenly spaced values in 0..1 (for images)."""
    rgb = sample_colorscale(get_colorscale(COLORSCALE), list(np.linspace(0.0, 1.0, n)), colortype="tuple")
    return np.round(np.array(rgb) * 255).astype(np.uint8)


def figure_height(n_rows: int) -> int:
    return int(min(MAX_HEIGHT, max(MIN_HEIGHT, 120 + CELL_PX * n_rows)))


def heatmap(values: np.ndarray, row_labels: list[str], col_labels: list[str], *,
            weights: np.ndarray | None = None, title: str = "", row_title: str = "query",
            col_title: str = "key", zmax: float = 1.0, colorbar_title: str = "weight",
            note: str = "") -> go.Figure:
    """One heatmap: ``values[row, col]`` coloured from 0 to ``zmax``.

    weights: the exact attention weights shown on hover when ``values`` are rescaled for
        colour (e.g. each row divided by its maximum); None when the values are the weights.
    row_labels, col_labels: must be unique (see attnviz.analysis.tokens.unique_labels);
        rows run top to bottom, columns (labelled on top) left to right; the hover names both
        with ``row_title`` and ``col_title``.
    note: a line under the title (e.g. that the matrix is block-aggregated).
    """
    values = np.asarray(values, dtype=np.float32)
    if weights is None:
        hover = f"{row_title} %{{y}}<br>{col_title} %{{x}}<br>weight %{{z:.4f}}<extra></extra>"
        custom = None
    else:
        hover = f"{row_title} %{{y}}<br>{col_title} %{{x}}<br>weight %{{customdata:.4f}}<extra></extra>"
        custom = np.asarray(weights, dtype=np.float32)
    fig = go.Figure(go.Heatmap(
        z=values, x=plotly_text(col_labels), y=plotly_text(row_labels), customdata=custom, zmin=0.0, zmax=zmax,
        colorscale=COLORSCALE, hovertemplate=hover, colorbar=dict(title=colorbar_title, thickness=12),
        xgap=0, ygap=0))
    fig.update_layout(
        title=title_layout(title, note), height=figure_height(len(row_labels)) + TOP_PX,
        margin=dict(l=10, r=10, t=TOP_PX, b=10),
        xaxis=dict(side="top", tickangle=-60, type="category", automargin=True),
        yaxis=dict(title=row_title, autorange="reversed", type="category", automargin=True),
        plot_bgcolor="white")
    return fig


def title_layout(title: str, note: str = "") -> dict:
    """A title (with an optional smaller line under it) pinned to the figure's top left."""
    return dict(text=title, subtitle=dict(text=note, font=dict(size=12)), x=0.01, xanchor="left",
                xref="container", y=0.99, yanchor="top", yref="container")
