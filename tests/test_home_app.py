"""The app starts on its home page, which lists every bundled model with its status."""
from conftest import app_path
from streamlit.testing.v1 import AppTest

from attnviz.models.bundled import BUNDLED


def test_home_page_lists_bundled_models():
    at = AppTest.from_file(app_path(), default_timeout=60).run()
    assert not at.exception, at.exception
    assert at.title[0].value == "attnviz"
    text = " ".join(m.value for m in at.markdown)
    for name in BUNDLED:
        assert name in text
