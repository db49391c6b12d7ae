"""Image explorer: where a vision transformer looks in your photo.

Pick a model and a photo (upload or sample) -> capture every attention map once (cached) ->
show one view at a time: the CLS token's attention, all heads, all layers, one patch's
attention (click the photo), attention rollout, and the prefix tokens' share.
"""
import streamlit as st

from attnviz.ui import image as ui
from attnviz.ui.charts import report_button, result_download
from attnviz.ui.common import friendly_errors, in_app_frame
from attnviz.ui.selectors import layer_head

in_app_frame()

st.title("Image explorer")
st.markdown("Upload a photo and see where the model looks: the **CLS** token's attention "
            "outlines objects (DINOv2 does this best), and any patch's attention shows what it "
            "groups with.")

with friendly_errors():
    photo, size, result = ui.photo_capture()
    result_download(result, "Attention maps (.npz)", f"{photo.name.rsplit('.', 1)[0]}-attention",
                    help="Every layer's and head's attention as float16 [layers, heads, queries, keys], "
                         "with the picture the model saw; load it with attnviz.AttentionResult.load.")
    report_button(result, key="image_report")


@st.fragment
def explore() -> None:
    """The views: only this part reruns when a view, layer, head or style changes."""
    with friendly_errors():
        view = ui.view_picker(result)
        controls, shown = st.columns([1, 3], gap="medium")
        with controls:
            layer, head = layer_head(result, "encoder", key="image_lh")
            style = ui.style_controls()
            if view == "patch":
                patch = ui.patch_picker(result)
            if view == "rollout":
                fusion, discard = ui.rollout_controls()
        with shown:
            if view == "cls":
                ui.cls_view(result, photo, layer, head, style)
            elif view == "heads":
                ui.heads_view(result, photo, layer, head, style)
            elif view == "layers":
                ui.layers_view(result, photo, layer, head, style)
            elif view == "patch":
                ui.patch_view(result, photo, layer, head, style, patch)
            elif view == "rollout":
                ui.rollout_view(result, photo, layer, head, style, fusion, discard)
            else:
                ui.prefix_view(result, photo, layer, style)


if result.image_tokens:  # a vision-language model: text tokens over the photo
    with friendly_errors():
        ui.vision_language_view(result)
else:
    explore()
