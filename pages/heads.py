"""Head atlas: which heads do what, which heads are alike, and how two models or texts differ."""
import streamlit as st

from attnviz.ui import heads as ui
from attnviz.ui.common import friendly_errors, in_app_frame
from attnviz.ui.text import stack_picker, text_capture

in_app_frame()

st.title("Head atlas")
st.caption("Every head's role (previous token, induction, sink, delimiter…), heads clustered by how alike they "
           "attend, and two models, checkpoints or texts side by side.")

with friendly_errors():
    request, result = text_capture()
    for note in request.notes + tuple(result.warnings):
        st.info(note)
    stack = stack_picker(result)

ui.views(result, stack, request)
