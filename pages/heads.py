"""Head atlas: which heads do what, which heads are alike, and how two models or texts differ."""
import streamlit as st

from attnviz.ui import heads as ui
from attnviz.ui import keys
from attnviz.ui.common import friendly_errors, in_app_frame
from attnviz.ui.inputs import stack_picker, text_capture
from attnviz.ui.views import Captured, show_views

in_app_frame()

st.title("Head atlas")
st.caption("Every head's role (previous token, induction, sink, delimiter…), heads clustered by how alike they "
           "attend, and two models, checkpoints or texts side by side.")

with friendly_errors():
    request, result = text_capture()
    for note in request.notes + tuple(result.warnings):
        st.info(note)
    captured = Captured("text", result, stack_picker(result), request)

show_views(ui.VIEWS, captured, key=keys.HEADS_VIEW, param=keys.HEADS_VIEW)
