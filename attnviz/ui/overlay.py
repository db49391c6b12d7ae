"""Attention over a photo, shared by the image, flow and explain pages: the overlay style
controls and one overlay as a hoverable figure with its full-resolution PNG.

An overlay is computed at display size (at most ``viz.DISPLAY_SIDE`` px a side) and sent as one
JPEG inside a plotly figure; the full-resolution PNG is made only when its button is clicked.
"""
from __future__ import annotations

import numpy as np
import streamlit as st

from attnviz.ui.charts import show_chart
from attnviz.ui.common import remember
from attnviz.ui.views import Photo
from attnviz.viz import image as viz
from attnviz.viz.image import OverlayStyle as Style


def style_controls() -> Style:
    """Opacity, colour map and top percentile of the overlays (remembered for the session)."""
    style = remember("image_style", Style())
    opacity = st.slider("Opacity", 0.0, 1.0, style.opacity, 0.05, key="_image_opacity",
                        help="0 shows the photo only, 1 the attention colours only.")
    colormap = st.selectbox("Colour map", viz.COLORMAPS, index=viz.COLORMAPS.index(style.colormap),
                            key="_image_colormap")
    top = st.slider("Brightest at percentile", 90.0, 100.0, style.top * 100, 0.5, key="_image_top",
                    help="Patches above this percentile of a map get the brightest colour, so that one "
                         "patch that soaks up attention does not leave the rest dark. 100: the maximum.")
    st.session_state["image_style"] = Style(opacity, colormap, top / 100)
    return st.session_state["image_style"]


def show_overlay(photo: Photo, heat: np.ndarray, style: Style, *, key: str, file_name: str,
                 marker: tuple[int, int] | None = None, label: str = "weight", on_select=None,
                 width: int = 700) -> None:
    """An overlay of ``heat[row, col]`` as a hoverable figure about ``width`` px wide, with a
    download button for the PNG at the photo's full resolution. ``on_select`` makes its
    patches clickable."""
    picture = viz.heat_overlay(photo.display, heat, style, marker=marker)
    height = min(640, max(160, round(width * photo.image.height / photo.image.width)))
    fig = viz.overlay_figure(picture, heat, label=label, height=height)
    selecting = {} if on_select is None else dict(on_select=on_select, selection_mode="points")
    show_chart(fig, file_name.removesuffix(".png"), key=key, **selecting)

    def full_png() -> bytes:
        return viz.png_bytes(viz.heat_overlay(photo.image, heat, style, marker=marker))

    st.download_button(f"PNG, {photo.image.width} x {photo.image.height} px", full_png, file_name=file_name,
                       mime="image/png", key=f"{key}_png", on_click="ignore", icon=":material/download:")
