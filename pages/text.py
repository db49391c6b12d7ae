"""Text explorer: type or upload text, pick a model, see what every head attends to."""
import streamlit as st

from attnviz.ui import keys
from attnviz.ui import text as ui
from attnviz.ui.common import friendly_errors, in_app_frame
from attnviz.ui.inputs import text_capture
from attnviz.ui.mixing import show_picker
from attnviz.ui.views import show_views

in_app_frame()

st.title("Text explorer")
st.caption("Every head of every layer on your own text: one head as a heatmap, all heads at once, "
           "BertViz-style token lines, and one token through all layers.")

with friendly_errors():
    captured = text_capture()
    ui.result_header(captured.result)
    captured = show_picker(captured.with_options(ui.view_options()))

show_views(ui.VIEWS, captured, key=keys.VIEW)
