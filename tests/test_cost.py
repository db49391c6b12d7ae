"""Measuring attention's cost is bounded on a shared server: one measurement at a time per
process (a second is refused at once, and the lab says so calmly), and the lab offers no
length above the deployment's ATTNVIZ_MAX_TOKENS."""
from __future__ import annotations

import threading

import pytest
from conftest import app_path
from streamlit.testing.v1 import AppTest

from attnviz.lab import cost

PAGE = "pages/lab.py"


@pytest.fixture
def running():
    """A real measurement held open in another thread (its progress callback waits) until the test ends."""
    started, release = threading.Event(), threading.Event()

    def hold(fraction: float, message: str) -> None:
        started.set()
        release.wait(30)

    first = threading.Thread(target=cost.measure, args=([128],), kwargs={"methods": ("fused",), "progress": hold})
    first.start()
    assert started.wait(30)
    yield
    release.set()
    first.join()


def open_lab() -> AppTest:
    at = AppTest.from_file(app_path(), default_timeout=120).run()
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def test_a_second_measurement_is_refused_while_one_runs(running):
    with pytest.raises(cost.Busy, match="Another measurement is running"):
        cost.measure([128], methods=("fused",))


def test_the_lock_is_free_again_after_a_measurement():
    (point,) = cost.measure([128], methods=("fused",), repeats=1)
    (again,) = cost.measure([128], methods=("fused",), repeats=1)
    assert point.seconds > 0 and again.seconds > 0


def test_the_lab_says_busy_as_information(running):
    at = open_lab()
    at.button(key="lab_cost_run").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    assert any("Another measurement is running" in i.value for i in at.info)
    assert "lab_cost" not in at.session_state


def test_the_lab_offers_lengths_up_to_the_token_cap(monkeypatch):
    monkeypatch.setenv("ATTNVIZ_MAX_TOKENS", "1024")
    slider = open_lab().select_slider(key="lab_cost_n")
    assert [int(n.replace(",", "")) for n in slider.options] == [512, 1024]
    assert slider.value == 1024
