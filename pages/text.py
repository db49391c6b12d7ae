"""Text explorer: type or upload text, pick a model, see what every head attends to."""
import streamlit as st

from attnviz.ui.common import friendly_errors, in_app_frame
from attnviz.ui.text import result_header, stack_picker, text_capture, view_options, views

in_app_frame()

st.title("Text explorer")
st.caption("Every head of every layer on your own text: one head as a heatmap, all heads at once, "
           "BertViz-style token lines, and one token through all layers.")

with friendly_errors():
    request, result = text_capture()
    result_header(result, request)
    stack = stack_picker(result)
    options = view_options()

views(result, stack, options)
