"""Blocks of the home page: the bundled models with their status, and the page links."""
from __future__ import annotations

import streamlit as st

from attnviz.models import store
from attnviz.models.bundled import BUNDLED
from attnviz.ui.common import friendly_errors, progress_bar

# (page file, title, icon, what it shows): app.py declares these pages, the home page links them.
PAGES = [
    ("pages/text.py", "Text explorer", ":material/article:", "heatmaps, every head, token lines, long texts"),
    ("pages/image.py", "Image explorer", ":material/image:", "where the model looks in your photo"),
    ("pages/flow.py", "Local vs global, flow", ":material/hub:", "how far each head looks; rollout and exact flow"),
    ("pages/explain.py", "Which picture to trust", ":material/fact_check:",
     "each method against blank-out, on your input"),
    ("pages/lab.py", "Mechanics lab", ":material/school:", "how attention is computed, and what it costs"),
    ("pages/train.py", "Build your own", ":material/model_training:", "train a small attention model and inspect it"),
    ("pages/heads.py", "Head atlas", ":material/grid_view:", "head roles, similar heads, compare models"),
]
STATUS_LABEL = {"ready": ":green[:material/check_circle: ready]", "missing": ":material/download: not fetched yet",
                "damaged": ":orange[:material/warning: damaged, fetch again]"}


def page_links() -> None:
    """A link and a line for every page of the app."""
    for col, (path, title, icon, blurb) in zip(st.columns(max(len(PAGES), 1)), PAGES):
        with col:
            st.page_link(path, label=title, icon=icon)
            st.caption(blurb)


def model_table() -> None:
    """A row per bundled model: name, family, size, license, status, and a fetch button."""
    for name, m in BUNDLED.items():
        state = store.status(name)
        c1, c2, c3, c4 = st.columns([2, 4, 2, 1.3])
        c1.markdown(f"**{name}**  \n{m.family} · {m.layers_heads} heads")
        c2.markdown(f"{m.description}  \n`{m.requirement}` · {m.license}")
        c3.markdown(STATUS_LABEL[state])
        if state != "ready" and c4.button("Fetch now", key=f"fetch_{name}"):
            with friendly_errors(), progress_bar(f"Fetching {name}…") as update:
                store.ensure(name, progress=update)
            st.rerun()
