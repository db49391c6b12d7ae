"""Image explorer: where a vision transformer looks in your photo.

Pick a model and a photo (upload or sample) -> capture every attention map once (cached) ->
show one view at a time: the CLS token's attention, all heads, all layers, one patch's
attention (click the photo), attention rollout, and the prefix tokens' share; or, for a
vision-language model, a text token's attention over the photo.
"""
import streamlit as st

from attnviz.ui import image as ui
from attnviz.ui.common import friendly_errors, in_app_frame
from attnviz.ui.inputs import photo_capture
from attnviz.ui.mixing import show_picker
from attnviz.ui.views import show_views

in_app_frame()

st.title("Image explorer")
st.markdown("Upload a photo and see where the model looks: the **CLS** token's attention "
            "outlines objects (DINOv2 does this best), and any patch's attention shows what it "
            "groups with.")

with friendly_errors():
    captured = photo_capture()
    ui.downloads(captured)
    captured = show_picker(captured)

show_views(ui.VIEWS, captured, key="image_view")
