"""Figures to files for papers: SVG and PDF (vector; pictures inside stay raster) and
high-resolution PNG, rendered by kaleido in a headless Chrome or Chromium.

kaleido drives the browser at ``$BROWSER_PATH`` when set, else Debian's ``/usr/bin/chromium``
when present, else whatever Chrome it finds itself. It loads plotly.js from the plotly
package and never MathJax, so rendering needs no network. Each render is a job
(attnviz.jobs) admitted for RENDER_BYTES: it starts a browser, about a second and a few
hundred MB.
"""
from __future__ import annotations

import os
from pathlib import Path

import plotly.graph_objects as go
from PIL import Image

import attnviz.jobs as jobs
from attnviz.errors import AttnvizError

FORMATS = ("png", "svg", "pdf")
MIME = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}
CHROMIUM = "/usr/bin/chromium"
PNG_SCALE = 3  # a PNG has 3 pixels per CSS pixel of the figure: 3000 px across at the default width
DEFAULT_WIDTH = 1000  # px, for figures that take their width from the page
DEFAULT_HEIGHT = 600
RENDER_BYTES = 500 * 10**6  # a render's headless browser and the picture, generous


def browser_path() -> str | None:
    """The browser kaleido drives: $BROWSER_PATH, /usr/bin/chromium, or None (kaleido looks)."""
    return os.environ.get("BROWSER_PATH") or (CHROMIUM if Path(CHROMIUM).exists() else None)


def can_render() -> bool:
    """Whether there is a browser to render with (that one, or a Chrome kaleido finds)."""
    if browser_path():
        return True
    try:
        from choreographer.browsers.chromium import Chromium

        return Chromium.find_browser(skip_local=False) is not None
    except Exception:  # no kaleido, or its browser search failed
        return False


def figure_bytes(fig: go.Figure | Image.Image, fmt: str, *, width: int | None = None,
                 height: int | None = None) -> bytes:
    """``fig`` rendered as ``fmt`` ("png", "svg" or "pdf"), at the figure's own height and
    ``width`` (default: the figure's, or DEFAULT_WIDTH); PNGs at PNG_SCALE times that. A PIL
    image becomes a figure of its own size first."""
    if fmt not in FORMATS:
        raise AttnvizError(f"cannot write {fmt!r} figures: use one of {', '.join(FORMATS)}")
    if isinstance(fig, Image.Image):
        fig = picture_figure(fig)
    opts = dict(format=fmt, width=int(width or fig.layout.width or DEFAULT_WIDTH),
                height=int(height or fig.layout.height or DEFAULT_HEIGHT), scale=PNG_SCALE if fmt == "png" else 1)
    kopts: dict = {"mathjax": False}
    if path := browser_path():
        kopts["path"] = path
    try:
        import kaleido

        with jobs.within(f"A figure as {fmt.upper()}", RENDER_BYTES):
            return kaleido.calc_fig_sync(fig, opts=opts, kopts=kopts)
    except Exception as e:  # no browser, a browser that died, a render timeout
        raise AttnvizError(f"could not render the figure as {fmt.upper()} in a headless browser "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no details'}); "
                           "install chromium or set BROWSER_PATH to a Chrome or Chromium") from None


def write(fig: go.Figure | Image.Image, path: str | Path, **size) -> Path:
    """Write ``fig`` to ``path`` in the format its suffix names (.png, .svg or .pdf)."""
    path = Path(path)
    data = figure_bytes(fig, path.suffix.lower().lstrip("."), **size)
    try:
        path.write_bytes(data)
    except OSError as e:
        raise AttnvizError(f"cannot write {path}: {e.strerror}") from None
    return path


def picture_figure(picture: Image.Image) -> go.Figure:
    """A PIL image as a figure of its own size, without axes or margins."""
    from attnviz.viz.image import data_uri

    fig = go.Figure(go.Image(source=data_uri(picture), hoverinfo="skip"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(width=picture.width, height=picture.height, margin=dict(l=0, r=0, t=0, b=0))
    return fig
