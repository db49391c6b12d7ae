"""Which picture to trust: for your model and your input, which input tokens matter for one
output by seven methods (raw attention, rollout, exact flow, attention x gradient, input x
gradient, integrated gradients, blank-out), and how far each agrees with blank-out.

Pick text or image, a model, an input (and the output to explain) -> explain (cached) -> the
maps (highlighted text, or one overlay per method) beside the scoreboard -> optionally the
scoreboard averaged over many inputs.
"""
import streamlit as st

from attnviz.ui import explain as ui
from attnviz.ui.common import friendly_errors, in_app_frame
from attnviz.ui.inputs import kind_picker

in_app_frame()

st.title("Which picture to trust")
st.markdown("Attention maps are not explanations by themselves. Here every picture of what the model uses is set "
            "against **blank-out**: take one token (or patch) away and measure what the output loses. The scoreboard "
            "says which picture follows it on your input (Abnar & Zuidema 2020 found rollout and flow near 0.7 on "
            "their model, raw attention anywhere from −0.1 to 0.7 depending on the layer).")

kind = kind_picker("explain_kind")
with friendly_errors():
    if kind == "text":
        name, model, text, target = ui.text_choice()
        explained = ui.run_explain(name, model, text, ui.text_digest(text), target=target, methods=ui.method_choice())
        photo = size = None
    else:
        name, model, photo, size = ui.image_choice()
        explained = ui.run_explain(name, model, photo.image, photo.sha, size=size, methods=ui.method_choice())
    ui.output_line(explained)
    maps, board = st.columns([3, 2], gap="large")
    with board:
        ui.scoreboard_block(explained)
    with maps:
        if kind == "text":
            ui.highlight_block(explained)
        else:
            ui.overlays_block(explained, photo)
    ui.many_block(kind, name, model, explained, size=size)
