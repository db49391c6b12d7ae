"""Figures of a trained classifier (Build your own): the confusion matrix, held-out texts with
their words shaded by the attention that decides, and attention over images."""
from __future__ import annotations

import html
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from attnviz.viz.heatmap import plotly_text, title_layout
from attnviz.viz.image import OverlayStyle, heat_overlay

SHOWN_PX = 128  # side of an image overlay


def confusion_chart(confusion: np.ndarray, labels: Sequence[str], *, title: str = "") -> go.Figure:
    """``confusion[true, predicted]`` counts as a heat map (true classes down, predicted
    across), each cell labelled with its count."""
    names = plotly_text([str(label) for label in labels])
    fig = go.Figure(go.Heatmap(z=confusion, x=names, y=names, colorscale="Blues", text=confusion,
                               texttemplate="%{text}", showscale=False,
                               hovertemplate="true %{y}<br>predicted %{x}<br>%{z} examples<extra></extra>"))
    fig.update_xaxes(title="predicted", side="bottom", type="category")
    fig.update_yaxes(title="true", autorange="reversed", type="category")
    side = int(min(560, max(260, 120 + 36 * len(labels))))
    fig.update_layout(title=title_layout(title), height=side, margin=dict(l=10, r=10, t=80, b=10))
    return fig


def shaded_words(words: Sequence[str], weights: np.ndarray, rationale: np.ndarray | None = None) -> str:
    """HTML: the words, each on an orange background as strong as its weight (the largest
    weight fully coloured), its weight in the tooltip; rationale words (True in
    ``rationale``) are underlined."""
    top = float(np.max(weights)) if len(weights) else 0.0
    spans = []
    for i, (w, a) in enumerate(zip(words, weights)):
        alpha = 0.0 if top <= 0 else float(a) / top
        line = "text-decoration: underline 2px;" if rationale is not None and rationale[i] else ""
        spans.append(f'<span title="{float(a):.3f}" style="background: rgba(255, 140, 0, {alpha:.2f}); '
                     f'padding: 1px 2px; border-radius: 3px; {line}">{html.escape(w)}</span>')
    return " ".join(spans)


def image_overlay(image: np.ndarray, heat: np.ndarray, style: OverlayStyle = OverlayStyle()) -> Image.Image:
    """``heat[row, col]`` over the patches of ``image`` (uint8 [height, width, 3]), shown
    SHOWN_PX px wide."""
    return heat_overlay(Image.fromarray(image), heat, style, size=(SHOWN_PX, SHOWN_PX))


def class_heats(weights: Sequence[np.ndarray], truth: np.ndarray, n_classes: int, grid: int) -> np.ndarray:
    """Per class, the mean over its held-out images of the attention that decides:
    ``heat[class, row, col]`` (zero for a class with no held-out image)."""
    out = np.zeros((n_classes, grid, grid), dtype=np.float32)
    for c in range(n_classes):
        mine = [w for w, t in zip(weights, truth) if t == c]
        if mine:
            out[c] = np.mean(mine, axis=0).reshape(grid, grid)
    return out
