"""Bad model names typed into the app's model picker get a clear message, not a traceback,
and the page works again once a bundled model is chosen."""
from __future__ import annotations

import pytest
from apptest_tools import open_page
from streamlit.testing.v1 import AppTest

from attnviz.ui.models import OWN_MODEL


def text_page() -> AppTest:
    at = open_page("pages/text.py")
    assert not at.exception and not at.error
    return at


def own_model(at: AppTest, name: str) -> AppTest:
    at.selectbox(key="_model_box").set_value(OWN_MODEL).run()
    at.text_input(key="_model_own").set_value(name).run()
    return at


def pickle_folder(tmp_path) -> str:
    (tmp_path / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04never unpickled")
    return str(tmp_path)


@pytest.mark.parametrize("name, words", [
    ("no-such-model", "Unknown model"),
    ("some-org/some-model", "hub"),
    ("PICKLE", "pickle"),
])
def test_bad_model_names_get_a_message(minilm, tmp_path, name, words):
    at = own_model(text_page(), pickle_folder(tmp_path) if name == "PICKLE" else name)
    assert not at.exception, at.exception
    assert [e.value for e in at.error] and words in at.error[0].value, [e.value for e in at.error]
    at.selectbox(key="_model_box").set_value("minilm-l6").run()
    assert not at.exception and not at.error, "the page works again with a bundled model"
    assert any(" tokens · " in c.value for c in at.caption)


def test_empty_and_too_long_texts(minilm):
    at = text_page()
    at.text_area(key="_text_box").set_value("   \n ").run()
    assert not at.exception and "empty" in at.error[0].value
    at.text_area(key="_text_box").set_value("word " * 3000).run()
    assert not at.exception and not at.error
    shown = " ".join(m.value for m in [*at.warning, *at.info])
    assert "512" in shown, shown  # cut to the model's limit, and the page says so
