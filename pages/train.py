"""Build your own: design a small attention model, train it on a toy task, look inside it."""
import streamlit as st

from attnviz.ui.common import friendly_errors, in_app_frame
from attnviz.ui.train import RUN_KEY, design_form, inspect, open_buttons, pick_model, save_block, training, upload_block

in_app_frame()

st.title("Build your own")
st.caption("Choose layers, heads, width and the kind of attention, train on a toy task on the CPU while the "
           "curve grows, then look at what each head learned to attend to. Save the model and it opens in "
           "the other pages like any pretrained one.")

with friendly_errors():
    st.subheader("Design and train")
    config, steps, seed = design_form()
    run = training(config, steps, seed)

    st.subheader("Save or upload")
    if run is not None and run.trainer.history:
        save_block(run)
    with st.expander("Upload a model (zip or files)"):
        upload_block()

    st.subheader("Inspect")
    picked = pick_model(st.session_state.get(RUN_KEY))
    if picked is not None:
        label, net = picked
        text = inspect(net, label or "trained")
        if label is not None:
            open_buttons(label, text)
        else:
            st.caption("Save it to open it in the other pages.")
