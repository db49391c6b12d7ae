"""The one view switcher (attnviz.ui.views.show_views), on a page of three stand-in views: the
URL opens a view by its key or its label and keeps the open one, a click on a tab wins over the
URL it left behind, a URL changed from outside wins over the tab, views that do not apply are
not offered, and a single view is drawn without tabs."""
from __future__ import annotations

from streamlit.testing.v1 import AppTest


def page() -> None:
    from types import SimpleNamespace

    import streamlit as st

    from attnviz.ui.views import Captured, View, show_views

    def draw(name):
        return lambda captured: st.markdown(f"drawn: {name}")

    only = st.session_state.get("only_b", False)
    views = (View("a", "Alpha", draw("a"), lambda c: not only), View("b", "Beta", draw("b")),
             View("c", "Gamma", draw("c"), lambda c: not only))
    show_views(views, Captured("text", SimpleNamespace(digest="0"), "encoder"), key="demo")


def drawn(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("drawn: ")]


def run(**params: str) -> AppTest:
    at = AppTest.from_function(page)
    at.query_params.update(params)
    return at.run()


def test_the_url_opens_a_view_by_key_or_label_and_keeps_the_open_one():
    at = run()
    assert not at.exception and drawn(at) == ["drawn: a"] and at.query_params["view"] == "a"
    assert [t.label for t in at.tabs] == ["Alpha", "Beta", "Gamma"]
    at = run(view="c")
    assert drawn(at) == ["drawn: c"] and at.query_params["view"] == "c"
    at = run(view="Beta")  # a link made when the URL held the tab's label
    assert drawn(at) == ["drawn: b"] and at.query_params["view"] == "b"
    at = run(view="nonsense")
    assert drawn(at) == ["drawn: a"] and at.query_params["view"] == "a"


def test_a_click_wins_over_the_url_and_a_url_changed_from_outside_over_the_tab():
    at = run(view="c")
    at.session_state["demo"] = "Beta"  # a click on the tab
    at.run()
    assert drawn(at) == ["drawn: b"] and at.query_params["view"] == "b"
    at.query_params["view"] = "a"  # the URL changed from outside
    at.run()
    assert drawn(at) == ["drawn: a"] and at.query_params["view"] == "a"


def test_only_the_views_that_apply_are_offered_and_one_is_drawn_alone():
    at = run(view="c")
    at.session_state["only_b"] = True
    at.run()
    assert not at.exception and drawn(at) == ["drawn: b"] and not at.tabs
