"""Attention over an image's patches, drawn on the photo: pure PIL images and plotly figures.

A *heat map* here is a float array ``heat[row, col]`` over the patch grid of an
:class:`~attnviz.result.AttentionResult` (``result.grid``): one query's attention weights on
the patch keys (prefix keys such as CLS and registers have no place on the grid and are left
out, not renormalised away). Drawn on the photo it is scaled to [0, 1] (each map on its own,
from its minimum to its ``top`` quantile, so that one sink patch does not leave the rest
dark), upsampled smoothly (bicubic) to the picture's size, coloured with a plotly colour
scale and blended over the photo.

The grid covers the whole photo: the model saw the photo resized (aspect kept, sides rounded
to whole patches), never cropped, so patch (r, c) covers rows ``r / rows .. (r + 1) / rows``
of the photo's height and likewise across.

Big pictures never travel to the browser as arrays: figures carry the overlay as one JPEG
(at most ``DISPLAY_SIDE`` pixels a side) and, for clicking and hovering, one invisible point
per patch.
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import plotly.colors
import plotly.graph_objects as go
from PIL import Image, ImageDraw
from plotly.subplots import make_subplots

from attnviz.analysis.flow import fuse_stream
from attnviz.result import AttentionResult, PatchGrid

COLORMAPS = ("Inferno", "Viridis", "Turbo", "Jet", "Hot", "Greys")
DISPLAY_SIDE = 768  # longest side, in pixels, of an overlay sent to the browser
THUMB_SIDE = 240  # longest side of one panel of a grid of overlays
TITLE_PX = 28  # room above each panel for its title
GRID_WIDTH_PX = 700  # the width a grid of overlays is laid out for (plotly stretches it)
MARKER_RGB = (0, 255, 255)  # outline of the clicked patch: cyan, on a dark rim


# -- selecting a map ----------------------------------------------------------------------
def patch_heat(weights: np.ndarray, grid: PatchGrid) -> np.ndarray:
    """A query's weights over all keys ``[keys]`` as ``heat[row, col]`` over the patch keys
    (float32; the prefix keys are dropped, the rest keep their raw weights)."""
    return np.asarray(weights[grid.prefix:], dtype=np.float32).reshape(grid.rows, grid.cols)


def query_heat(result: AttentionResult, layer: int, head: int | str, query: int = 0) -> np.ndarray:
    """``heat[row, col]``: what token ``query`` (0 = CLS) attends to among the patches in
    ``layer``, for one head (an index) or all heads fused ("mean", "max" or "min")."""
    if isinstance(head, str):
        n_heads = result.attn["encoder"].shape[1]
        weights = fuse_stream((result.attention(layer, h, "encoder", [query])[0] for h in range(n_heads)), head)
    else:
        weights = result.attention(layer, head, "encoder", [query])[0]
    return patch_heat(weights, result.grid)


def patch_token(grid: PatchGrid, row: int, col: int) -> int:
    """Token index of the patch at (row, col)."""
    return grid.prefix + row * grid.cols + col


def received_heat(result: AttentionResult, layer: int) -> np.ndarray:
    """``heat[row, col]``: attention each patch receives in ``layer``, the mean over heads
    and over the patch queries. Patches that soak up attention (DINOv2's high-norm artifact
    tokens, which registers were made to absorb) stand out."""
    grid = result.grid
    n_heads, n_queries = result.attn["encoder"].shape[1:3]
    total = sum(result.attention(layer, h, "encoder", slice(grid.prefix, None)).sum(axis=0, dtype=np.float64)
                for h in range(n_heads))  # [keys], summed over heads and patch queries
    return patch_heat(total / (n_heads * (n_queries - grid.prefix)), grid)


# -- drawing on the photo -----------------------------------------------------------------
@dataclass(frozen=True)
class OverlayStyle:
    """How a heat map is drawn on the photo.

    opacity: weight of the colours in the blend (0 = photo only, 1 = colours only);
    colormap: a plotly colour scale name; top: the quantile of the map drawn as the
    brightest colour (1.0 = its maximum; 0.99 lets the top 1% of patches saturate).
    """

    opacity: float = 0.6
    colormap: str = "Inferno"
    top: float = 0.99


@lru_cache(maxsize=16)
def colormap_lut(name: str) -> np.ndarray:
    """The plotly colour scale ``name`` sampled at 256 levels: uint8 ``[256, 3]`` RGB."""
    samples = plotly.colors.sample_colorscale(name, np.linspace(0.0, 1.0, 256).tolist(), colortype="tuple")
    lut = np.array(samples, dtype=np.float64)
    if lut.max() <= 1.0:  # tuple colours come as 0..1 floats
        lut = lut * 255.0
    return np.clip(lut + 0.5, 0, 255).astype(np.uint8)


def scale_unit(heat: np.ndarray, top: float = 1.0) -> np.ndarray:
    """Scale to [0, 1] from the minimum to the ``top`` quantile (1.0: the maximum), values
    above it clipped to 1; a flat map becomes all zeros."""
    heat = np.asarray(heat, dtype=np.float32)
    low, high = float(heat.min()), float(np.quantile(heat, top))
    return np.clip((heat - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(heat)


def heat_overlay(photo: Image.Image, heat: np.ndarray, style: OverlayStyle = OverlayStyle(), *,
                 size: tuple[int, int] | None = None, marker: tuple[int, int] | None = None) -> Image.Image:
    """The photo with ``heat[row, col]`` blended over it, as an RGB image of ``size``
    (width, height; the photo's own size by default).

    The map is scaled by :func:`scale_unit` (minimum to the ``style.top`` quantile),
    upsampled bicubically to the full picture, coloured with ``style.colormap`` and mixed in
    with weight ``style.opacity``. ``marker`` (row, col) outlines one patch.
    """
    size = tuple(size or photo.size)
    base = photo.convert("RGB")
    if base.size != size:
        base = base.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    smooth = Image.fromarray(scale_unit(heat, style.top)).resize(size, Image.Resampling.BICUBIC)
    levels = np.clip(np.asarray(smooth) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    colours = Image.fromarray(colormap_lut(style.colormap)[levels])
    out = Image.blend(base, colours, float(np.clip(style.opacity, 0.0, 1.0)))
    if marker is not None:
        rows, cols = np.shape(heat)
        mark_patch(out, marker, rows, cols)
    return out


def mark_patch(picture: Image.Image, patch: tuple[int, int], rows: int, cols: int) -> None:
    """Outline patch (row, col) of a rows x cols grid on ``picture`` (in place): cyan on a
    dark rim, so that it shows on light and dark maps alike."""
    row, col = patch
    w, h = picture.size
    box = [col * w / cols, row * h / rows, (col + 1) * w / cols - 1, (row + 1) * h / rows - 1]
    width = max(2, round(min(w, h) / 160))
    draw = ImageDraw.Draw(picture)
    draw.rectangle(box, outline=(0, 0, 0), width=width + 2)
    draw.rectangle([box[0] + 1, box[1] + 1, box[2] - 1, box[3] - 1], outline=MARKER_RGB, width=width)


def fit_size(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """(width, height) scaled down so that the longer side is at most ``longest``."""
    w, h = size
    scale = min(1.0, longest / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def png_bytes(picture: Image.Image) -> bytes:
    """The picture as PNG bytes (for downloads)."""
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


def data_uri(picture: Image.Image, quality: int = 88, lossless: bool = False) -> str:
    """The picture as a base64 ``data:`` URI (for a plotly Image trace, or an HTML page): JPEG
    of ``quality``, or PNG when ``lossless``."""
    buf = io.BytesIO()
    if lossless:
        picture.save(buf, format="PNG")
    else:
        picture.convert("RGB").save(buf, format="JPEG", quality=quality)
    return f"data:image/{'png' if lossless else 'jpeg'};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# -- figures ------------------------------------------------------------------------------
def _image_trace(picture: Image.Image, rows: int, cols: int) -> go.Image:
    """The picture stretched over x in [0, cols], y in [0, rows] (patch units, y down)."""
    dx, dy = cols / picture.width, rows / picture.height
    return go.Image(source=data_uri(picture), x0=dx / 2, y0=dy / 2, dx=dx, dy=dy, hoverinfo="skip")


def overlay_figure(picture: Image.Image, heat: np.ndarray, *, label: str = "weight",
                   height: int = 560) -> go.Figure:
    """A figure of an overlay (already drawn, e.g. by :func:`heat_overlay`) over the patch
    grid of ``heat[row, col]``: the picture as one JPEG plus an invisible point at every
    patch centre (x = col + 0.5, y = row + 0.5) whose hover shows (row, col) and the raw
    ``label`` value, and whose click selects that patch (customdata = [row, col])."""
    rows, cols = heat.shape
    r, c = np.divmod(np.arange(rows * cols), cols)
    fig = go.Figure(_image_trace(picture, rows, cols))
    fig.add_trace(go.Scatter(
        x=c + 0.5, y=r + 0.5, mode="markers", customdata=np.stack([r, c], axis=1),
        text=[f"{v:.4f}" for v in np.asarray(heat, dtype=np.float64).ravel()],
        marker=dict(size=max(4, min(40, 500 // max(rows, cols))), color="white", opacity=0.0),
        selected=dict(marker=dict(opacity=0.0)), unselected=dict(marker=dict(opacity=0.0)),
        hovertemplate=f"patch (row %{{customdata[0]}}, col %{{customdata[1]}})<br>{label} %{{text}}<extra></extra>",
        showlegend=False))
    fig.update_xaxes(visible=False, range=[0, cols], constrain="domain")
    fig.update_yaxes(visible=False, range=[rows, 0], scaleanchor="x", constrain="domain")
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=0, b=0), hoverdistance=-1,
                      clickmode="event+select", dragmode=False)
    return fig


def overlay_grid_figure(photo: Image.Image, heats: np.ndarray, titles: list[str],
                        style: OverlayStyle = OverlayStyle(), *, columns: int = 4,
                        highlight: int | None = None) -> go.Figure:
    """Small overlays of several maps ``heats[panel, row, col]`` on the same photo, side by
    side in ``columns`` columns, each scaled on its own and titled by ``titles``; the
    title of panel ``highlight`` is bold."""
    n = len(heats)
    columns = max(1, min(columns, n))
    n_rows = -(-n // columns)
    thumb = photo.convert("RGB").resize(fit_size(photo.size, THUMB_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    shown = [f"<b>{t}</b>" if i == highlight else t for i, t in enumerate(titles)]
    panel_h = GRID_WIDTH_PX / columns * photo.height / photo.width
    height = n_rows * (panel_h + TITLE_PX) + 10
    fig = make_subplots(rows=n_rows, cols=columns, subplot_titles=shown, horizontal_spacing=0.01,
                        vertical_spacing=TITLE_PX / height)
    grid_rows, grid_cols = heats.shape[1:]
    for i, heat in enumerate(heats):
        picture = heat_overlay(thumb, heat, style)
        fig.add_trace(_image_trace(picture, grid_rows, grid_cols), row=i // columns + 1, col=i % columns + 1)
    fig.update_xaxes(visible=False, range=[0, grid_cols], constrain="domain")
    fig.update_yaxes(visible=False, range=[grid_rows, 0], constrain="domain")
    for i in range(n):  # keep every panel's aspect ratio
        suffix = "" if i == 0 else str(i + 1)
        fig.layout[f"yaxis{suffix}"].scaleanchor = f"x{suffix}"
    fig.update_layout(height=int(height), margin=dict(l=0, r=0, t=TITLE_PX, b=0))
    fig.update_annotations(font_size=13)
    return fig


def layer_head_heatmap(values: np.ndarray, *, title: str, label: str) -> go.Figure:
    """A heat map of ``values[layer, head]`` (e.g. each head's sink mass), layers down."""
    n_layers, n_heads = values.shape
    fig = go.Figure(go.Heatmap(
        z=values, x=list(range(n_heads)), y=list(range(n_layers)), colorscale="Viridis",
        zmin=0.0, zmax=max(1e-6, float(np.nanmax(values))), colorbar=dict(title=label),
        hovertemplate=f"layer %{{y}}, head %{{x}}<br>{label} %{{z:.3f}}<extra></extra>"))
    fig.update_xaxes(title="head", dtick=1)
    fig.update_yaxes(title="layer", dtick=1, autorange="reversed")
    fig.update_layout(title=title, height=140 + 28 * n_layers, margin=dict(l=0, r=0, t=40, b=0))
    return fig
