"""attnviz: the Streamlit entry point. Declares the pages; each page is a thin story."""
import logging

import streamlit as st

from attnviz.ui.common import favicon
from attnviz.ui.home import PAGES

st.set_page_config(page_title="attnviz", page_icon=favicon(), layout="wide")  # served here, not by a font host
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

home = st.Page("pages/home.py", title="Home", icon=":material/home:", default=True)
st.navigation([home] + [st.Page(path, title=title, icon=icon) for path, title, icon, _ in PAGES]).run()
