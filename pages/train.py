"""Build your own: design a small attention model, train it on the CPU, look inside it."""
import streamlit as st

from attnviz.ui.common import friendly_errors, in_app_frame
from attnviz.ui.train import (
    CLASSIFIER_RUN_KEY,
    RUN_KEY,
    classifier_form,
    classifier_results,
    classifier_save,
    classifier_training,
    design_form,
    inspect,
    kind_picker,
    open_buttons,
    pick_model,
    save_block,
    training,
    upload_block,
)

in_app_frame()

st.title("Build your own")
st.caption("Train a small attention model on the CPU while the curve grows, then look at where it attends: "
           "a transformer on a toy task, an attention classifier of reviews or your own texts (an LSTM pooled "
           "by attention, attention before an LSTM, a transformer), or a small ViT on handwritten digits or "
           "your own images. Save the model and it opens in the other pages like any pretrained one.")

with friendly_errors():
    kind = kind_picker()
    st.subheader("Design and train")
    if kind == "toy":
        config, steps, seed = design_form()
        run = training(config, steps, seed)
    else:
        data, arch, steps, seed = classifier_form(kind)
        run = classifier_training(data, arch, steps, seed) if data is not None else None
        if run is not None and run.evaluation is not None:
            st.subheader("Held out")
            classifier_results(run)
            st.subheader("Save")
            classifier_save(run)

    st.subheader("Save or upload" if kind == "toy" else "Upload")
    if kind == "toy" and run is not None and run.trainer.history:
        save_block(run)
    with st.expander("Upload a model (zip or files)"):
        upload_block()

    if kind == "toy":
        st.subheader("Inspect")
        picked = pick_model(st.session_state.get(RUN_KEY))
        if picked is not None:
            label, net = picked
            text = inspect(net, label or "trained")
            if label is not None:
                open_buttons(label, text)
            else:
                st.caption("Save it to open it in the other pages.")
    elif st.session_state.get(CLASSIFIER_RUN_KEY) is None:
        st.caption("Press Train to see the held-out accuracy, the confusion matrix and where the model attends.")
