"""Head atlas: which heads do what, which heads are alike, and how two models or texts differ."""
import streamlit as st

from attnviz.ui import heads as ui
from attnviz.ui import keys
from attnviz.ui.common import friendly_errors, in_app_frame
from attnviz.ui.inputs import text_capture
from attnviz.ui.views import show_views

in_app_frame()

st.title("Head atlas")
st.caption("Every head's role (previous token, induction, sink, delimiter…), heads clustered by how alike they "
           "attend, and two models, checkpoints or texts side by side.")

with friendly_errors():
    captured = text_capture()

show_views(ui.VIEWS, captured, key=keys.HEADS_VIEW, param=keys.HEADS_VIEW)
