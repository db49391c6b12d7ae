"""Local or global, and attention flow: which heads look near and which far, how that changes
with depth, and how the input reaches the output through all the layers.

Pick text or image, a model and an input -> capture (cached) -> per-head statistics -> one view:
distance versus depth, layers x heads heatmaps, statistics over many inputs, rollout and exact
flow from one output token, and (text) the layer-by-layer spread of that token.
"""
import streamlit as st

from attnviz.ui import flow as ui
from attnviz.ui import keys
from attnviz.ui.common import friendly_errors, in_app_frame
from attnviz.ui.inputs import kind_picker, photo_capture, text_capture
from attnviz.ui.views import show_views

in_app_frame()

st.title("Local or global, and attention flow")
st.markdown("Which heads look **near** and which look **far**, how that changes with depth (the ViT paper's "
            "Fig. 7 for your own model and input), and how the input really reaches the output: raw attention, "
            "rollout and exact attention flow (Abnar & Zuidema 2020) side by side.")

kind = kind_picker(keys.FLOW_KIND)
with friendly_errors():
    captured = text_capture() if kind == "text" else photo_capture(reads=("image",))

show_views(ui.VIEWS, captured, key="flow_view")
