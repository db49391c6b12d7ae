"""attnviz: the Streamlit entry point. Declares the pages; each page is a thin story."""
import logging

import streamlit as st

import attnviz.ui

attnviz.ui.import_all()  # every page's modules, one session at a time (concurrent first imports fail)

from attnviz.ui.common import favicon  # noqa: E402
from attnviz.ui.home import PAGES  # noqa: E402

st.set_page_config(page_title="attnviz", page_icon=favicon(), layout="wide")  # served here, not by a font host
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

home = st.Page("pages/home.py", title="Home", icon=":material/home:", default=True)
st.navigation([home] + [st.Page(path, title=title, icon=icon) for path, title, icon, _ in PAGES]).run()
