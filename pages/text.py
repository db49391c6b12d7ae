"""Text explorer: type or upload text, pick a model, see what every head attends to."""
import streamlit as st

from attnviz.models.bundled import DEFAULT_TEXT_MODEL
from attnviz.ui.common import friendly_errors, in_app_frame
from attnviz.ui.models import get_model, model_picker, run_capture
from attnviz.ui.text import TEXT_FAMILIES, result_header, stack_picker, text_input, view_options, views

in_app_frame()

st.title("Text explorer")
st.caption("Every head of every layer on your own text: one head as a heatmap, all heads at once, "
           "BertViz-style token lines, and one token through all layers.")

with friendly_errors():
    left, right = st.columns([1, 2])
    with left:
        name = model_picker(TEXT_FAMILIES, DEFAULT_TEXT_MODEL)
        model = get_model(name)
    with right:
        request = text_input(model)
    result = run_capture(name, request.text, pair=request.pair, target=request.target, generate=request.generate)
    result_header(result, request)
    stack = stack_picker(result)
    options = view_options()

views(result, stack, options)
