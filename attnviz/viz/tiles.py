"""Every layer x head as a thumbnail, all in ONE image figure (never one trace per head).

:func:`tiles_figure` takes ``tiles[layer, head, rows, cols]`` with values in 0..1 (each tile
already downsampled by the caller: see :func:`tile_px` for a size), colours them with the
heatmap colour scale, lays them out on a grid (layers down, heads across) with a thin gap,
and sends the grid as one palette PNG (one byte a pixel). An invisible marker sits on each tile's centre, so hovering
names the tile and clicking it selects ``customdata = [layer, head]`` (with
``st.plotly_chart(on_select=...)``).
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from attnviz.viz.heatmap import colour_lut, title_layout
from attnviz.viz.image import data_uri

GAP_PX = 2
MIN_TILE_PX = 48  # small tiles are enlarged (nearest neighbour) to at least this many pixels
IMAGE_BUDGET_PX = 1_000_000  # pixels of the whole grid before enlargement
PALETTE_COLOURS = 255  # colours of the scale in the PNG's palette; entry 255 is the white gap


def tile_px(n_tiles: int, n_units: int, largest: int = 64, smallest: int = 16) -> int:
    """Side of one downsampled tile: at most ``n_units`` (no upsampling of data), at most
    ``largest``, and small enough that ``n_tiles`` tiles fit IMAGE_BUDGET_PX."""
    fit = int(math.sqrt(IMAGE_BUDGET_PX / max(n_tiles, 1)))
    return max(1, min(n_units, largest, max(smallest, fit)))


def tiles_image(tiles: np.ndarray) -> tuple[Image.Image, int]:
    """``tiles[rows, cols, h, w]`` in 0..1 -> (palette image of the grid, enlargement factor).

    Each pixel is an index into PALETTE_COLOURS colours of the colour scale (value 0..1 ->
    index round(value * (PALETTE_COLOURS - 1))), one byte a pixel;
    tile (r, c) starts at pixel ``(r * (h * f + GAP_PX), c * (w * f + GAP_PX))``; gaps are white.
    """
    tiles = np.nan_to_num(np.clip(np.asarray(tiles, dtype=np.float32), 0.0, 1.0))
    n_rows, n_cols, h, w = tiles.shape
    f = max(1, math.ceil(MIN_TILE_PX / max(h, w)))
    lut = colour_lut(PALETTE_COLOURS)
    index = np.round(tiles * (PALETTE_COLOURS - 1)).astype(np.uint8)
    if f > 1:
        index = index.repeat(f, axis=2).repeat(f, axis=3)
    th, tw = h * f, w * f
    white = PALETTE_COLOURS  # the last palette entry, for the gaps
    grid = np.full((n_rows * (th + GAP_PX) - GAP_PX, n_cols * (tw + GAP_PX) - GAP_PX), white, np.uint8)
    for r in range(n_rows):
        for c in range(n_cols):
            y, x = r * (th + GAP_PX), c * (tw + GAP_PX)
            grid[y:y + th, x:x + tw] = index[r, c]
    image = Image.fromarray(grid, mode="P")
    image.putpalette(np.vstack([lut, [[255, 255, 255]]]).ravel().tolist())
    return image, f


def tiles_figure(tiles: np.ndarray, *, title: str = "", note: str = "", row_name: str = "layer",
                 col_name: str = "head", selected: tuple[int, int] | None = None) -> go.Figure:
    """The grid of ``tiles[row, col, h, w]`` (values 0..1) as one image, with a hover and a
    click target per tile (point ``r * n_cols + c``, customdata ``[r, c]``) and the ``selected`` tile outlined."""
    n_rows, n_cols, h, w = np.shape(tiles)
    image, f = tiles_image(tiles)
    th, tw = h * f + GAP_PX, w * f + GAP_PX
    rows, cols = np.divmod(np.arange(n_rows * n_cols), n_cols)
    fig = go.Figure(go.Image(source=data_uri(image, lossless=True), hoverinfo="skip"))
    fig.add_trace(go.Scatter(
        x=cols * tw + (tw - GAP_PX) / 2, y=rows * th + (th - GAP_PX) / 2, mode="markers",
        marker=dict(size=max(8, min(th, tw) - 4), symbol="square", color="rgba(0,0,0,0)"),
        customdata=np.stack([rows, cols], axis=1).tolist(),
        hovertemplate=f"{row_name} %{{customdata[0]}}, {col_name} %{{customdata[1]}}<extra></extra>",
        showlegend=False))
    if selected is not None:
        r, c = selected
        fig.add_shape(type="rect", x0=c * tw - 1.5, x1=c * tw + tw - GAP_PX + 0.5, y0=r * th - 1.5,
                      y1=r * th + th - GAP_PX + 0.5, line=dict(color="#d62728", width=2))
    width, height = image.size
    fig.update_layout(
        title=title_layout(title, note),
        height=int(min(1400, max(300, height + 140))), margin=dict(l=10, r=10, t=120, b=10),
        xaxis=dict(title=col_name, side="top", tickvals=np.arange(n_cols) * tw + (tw - GAP_PX) / 2,
                   ticktext=[str(c) for c in range(n_cols)], range=[-0.5, width - 0.5], showgrid=False,
                   zeroline=False),
        yaxis=dict(title=row_name, tickvals=np.arange(n_rows) * th + (th - GAP_PX) / 2,
                   ticktext=[str(r) for r in range(n_rows)], range=[height - 0.5, -0.5], showgrid=False,
                   zeroline=False, scaleanchor="x"),
        plot_bgcolor="white", clickmode="event+select", dragmode=False)
    return fig
