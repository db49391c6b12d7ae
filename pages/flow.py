"""Local or global, and attention flow: which heads look near and which far, how that changes
with depth, and how the input reaches the output through all the layers.

Pick text or image, a model and an input -> capture (cached) -> per-head statistics -> one view:
distance versus depth, layers x heads heatmaps, statistics over many inputs, rollout and exact
flow from one output token, and (text) the layer-by-layer spread of that token.
"""
import streamlit as st

from attnviz.ui import flow as ui
from attnviz.ui import image as image_ui
from attnviz.ui import text as text_ui
from attnviz.ui.common import friendly_errors, in_app_frame

in_app_frame()

st.title("Local or global, and attention flow")
st.markdown("Which heads look **near** and which look **far**, how that changes with depth (the ViT paper's "
            "Fig. 7 for your own model and input), and how the input really reaches the output: raw attention, "
            "rollout and exact attention flow (Abnar & Zuidema 2020) side by side.")

kind = ui.kind_picker()
with friendly_errors():
    if kind == "text":
        request, result = text_ui.text_capture()
        for note in request.notes + tuple(result.warnings):
            st.info(note)
        captured = ui.Captured(kind, result.model, result, text_ui.stack_picker(result))
    else:
        photo, size, result = image_ui.photo_capture(families=("image",))
        captured = ui.Captured(kind, result.model, result, "encoder", photo, size)


@st.fragment
def explore(captured: ui.Captured) -> None:
    """The chosen view; only this part reruns when its controls change."""
    with friendly_errors():
        view = ui.view_picker()
        {"depth": ui.depth_view, "heatmaps": ui.heatmaps_view, "many": ui.many_view, "flow": ui.flow_view,
         "spread": ui.spread_view}[view](captured)


explore(captured)
