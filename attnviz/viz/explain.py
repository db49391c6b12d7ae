"""Figures of "which picture to trust": the faithfulness scoreboard, the input as running
text highlighted by a method's scores, and one overlay per method on a photo. Pure plotly and
HTML strings, no Streamlit.

- :func:`method_label`: a method's name (the routes row with its threshold);
- :func:`scoreboard`: each method's Spearman correlation with blank-out on this input, and
  (when given) the mean over many inputs with ± 1 std bars;
- :func:`unit_scores` and :func:`running_text`: token scores summed per word (the rule of
  attnviz.analysis.tokens: a key word gets the sum of its tokens), and the text each unit shows;
- :func:`highlight_html`: the running text, each unit's background by its score (red for
  positive, blue for negative, the strength |score| / the largest |score| of the text);
- :func:`method_overlays`: each method's patch scores on the photo, side by side.
"""
from __future__ import annotations

import html
import math

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from attnviz.analysis.faithfulness import Agreement
from attnviz.analysis.tokens import Axis, display_label
from attnviz.result import PatchGrid
from attnviz.viz.image import OverlayStyle, overlay_grid_figure, patch_heat

METHOD_LABELS = {
    "attention": "raw attention (last layer)",
    "rollout": "rollout",
    "flow": "attention flow",
    "attn_x_grad": "attention × gradient (Chefer)",
    "grad_x_input": "input × gradient",
    "integrated_gradients": "integrated gradients",
    "blankout": "blank-out (reference)",
    "attention_norm": "attention-norm rollout",
    "globenc": "GlobEnc rollout",
    "alti": "ALTI rollout",
    "value_zeroing": "value zeroing rollout",
    "routes": "ALTI routes (5% of edges)",
}
POSITIVE, NEGATIVE = (214, 39, 40), (31, 119, 180)  # backgrounds of positive and negative scores


def method_label(method: str, output: dict | None = None) -> str:
    """A method's name for people; the routes row names the threshold it was followed at when
    ``output`` (an explanation's output) says it: "ALTI routes, threshold 0.0712"."""
    routes = (output or {}).get("routes") if method == "routes" else None
    if routes is None:
        return METHOD_LABELS.get(method, method)
    return f"{routes['method'].upper()} routes, threshold {routes['threshold']:.3g}"


def rho_text(r: float) -> str:
    """A correlation for people: two decimals, "—" when undefined."""
    return "—" if r is None or not math.isfinite(r) else f"{r:+.2f}"


def scoreboard(rho: dict[str, float], spread: dict[str, Agreement] | None = None, *, title: str = "",
               output: dict | None = None) -> go.Figure:
    """Horizontal bars: each method's Spearman correlation with blank-out on this input (``rho``,
    NaN drawn as no bar), and with ``spread`` a second bar per method, the mean over many inputs,
    with ± 1 std error bars. Methods top to bottom in the order of ``rho``, named by
    :func:`method_label` with the explanation's ``output``."""
    methods = list(rho) + [m for m in (spread or {}) if m not in rho]
    labels = [method_label(m, output) for m in methods]
    fig = go.Figure()
    this = [rho.get(m, math.nan) for m in methods]
    fig.add_trace(go.Bar(y=labels, x=[v if math.isfinite(v) else None for v in this], orientation="h",
                         name="this input", marker_color="#1f77b4", text=[rho_text(v) for v in this],
                         textposition="outside", cliponaxis=False,
                         hovertemplate="%{y}: %{x:.3f}<extra>this input</extra>"))
    if spread:
        agree = [spread.get(m) for m in methods]
        mean = [a.mean if a is not None and math.isfinite(a.mean) else None for a in agree]
        fig.add_trace(go.Bar(
            y=labels, x=mean, orientation="h", marker_color="#ff7f0e",
            name=f"mean over {max((a.n for a in agree if a is not None), default=0)} inputs (± 1 std)",
            error_x=dict(type="data", array=[a.std if a is not None else None for a in agree], thickness=1.5),
            customdata=[[a.std if a is not None else math.nan, a.n if a is not None else 0] for a in agree],
            hovertemplate="%{y}: %{x:.3f} ± %{customdata[0]:.3f} over %{customdata[1]} inputs<extra></extra>"))
    fig.add_vline(x=0, line_color="#888", line_width=1)
    fig.update_xaxes(range=[-1.15, 1.15], title="Spearman correlation with blank-out", zeroline=False)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, barmode="group", height=120 + 34 * len(methods) * (2 if spread else 1),
                      margin=dict(l=0, r=45, t=40 if title else 10, b=0),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, x=1.0, xanchor="right"))
    return fig


def unit_scores(scores: np.ndarray, axis: Axis) -> np.ndarray:
    """Token scores ``[tokens]`` summed within each unit of ``axis`` (a word's score is the sum
    of its tokens'): ``[units]``."""
    return np.add.reduceat(np.asarray(scores, np.float64)[axis.index], axis.starts)


def running_text(tokens: list[str], special: list[bool], axis: Axis) -> list[str]:
    """The text each unit of ``axis`` shows in running text, spaces included: byte-level and
    SentencePiece tokens carry their own leading spaces; WordPiece ones get a space before
    each word and lose their ``##``. Special tokens show as their label in brackets-free form."""
    carries_spaces = any(t[:1].isspace() for t in tokens)
    pieces = []
    for u, (first, _) in enumerate(axis.spans):
        members = axis.index[axis.starts[u]:(axis.starts[u + 1] if u + 1 < len(axis) else len(axis.index))]
        if special[first]:
            pieces.append((" " if u else "") + display_label(tokens[first]))
            continue
        parts = [tokens[i] for i in members]
        if carries_spaces:
            pieces.append("".join(parts))
        else:
            word = parts[0].removeprefix("##") + "".join(p.removeprefix("##") for p in parts[1:])
            pieces.append(("" if u == 0 or parts[0].startswith("##") else " ") + word)
    return pieces


def highlight_html(pieces: list[str], values: np.ndarray, special: list[bool], *, caption: str = "") -> str:
    """One paragraph of running text: each piece's background red (positive) or blue
    (negative), its strength |value| / the largest |value| among the non-special pieces;
    special pieces grey and unshaded. Every piece is HTML-escaped; the title of each span is
    its exact value."""
    values = np.asarray(values, np.float64)
    plain = ~np.asarray(special, dtype=bool)
    top = float(np.max(np.abs(values[plain]))) if plain.any() else 0.0
    spans = []
    for piece, v, is_special in zip(pieces, values, special):
        lead = piece[:len(piece) - len(piece.lstrip())]
        text = html.escape(piece.lstrip()).replace("\n", "<br>")
        if is_special:
            spans.append(f'{html.escape(lead)}<span style="color:#999;font-size:0.8em">{text}</span>')
            continue
        strength = abs(v) / top if top > 0 else 0.0
        r, g, b = POSITIVE if v >= 0 else NEGATIVE
        spans.append(f'{html.escape(lead)}<span title="{v:.4g}" style="background:rgba({r},{g},{b},{strength:.2f});'
                     f'border-radius:3px;padding:1px 1px">{text}</span>')
    head = f'<div style="font-size:0.8em;color:#666">{html.escape(caption)}</div>' if caption else ""
    return f'{head}<div style="line-height:1.9;white-space:pre-wrap">{"".join(spans)}</div>'


def method_overlays(photo: Image.Image, grid: PatchGrid, scores: dict[str, np.ndarray], rho: dict[str, float],
                    style: OverlayStyle = OverlayStyle(), columns: int = 4) -> go.Figure:
    """Each method's scores over the patches (``scores[method]`` over all tokens, prefix first)
    drawn on the photo side by side, each scaled on its own; titles give the Spearman
    correlation with blank-out."""
    heats = np.stack([patch_heat(s, grid) for s in scores.values()])
    titles = [m if m == "blankout" else f"{m} (ρ {rho_text(rho.get(m, math.nan))})" for m in scores]
    return overlay_grid_figure(photo, heats, titles, style, columns=columns)
