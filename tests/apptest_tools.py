"""Reading what an AppTest run put on the page: plotly figures decoded from their specs."""
from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
from conftest import app_path
from PIL import Image
from streamlit.testing.v1 import AppTest

import attnviz.jobs as jobs
from attnviz import limits


def open_page(page: str, timeout: float = 300, **params: str) -> AppTest:
    """An AppTest of app.py, with these query parameters, switched to ``page`` (e.g.
    "pages/text.py") and run: the page as a visitor reaches it, inside the app's navigation."""
    at = AppTest.from_file(app_path(), default_timeout=timeout)
    at.query_params.update(params)
    at.run()
    return at.switch_page(page).run()


def assert_clean(at: AppTest) -> None:
    """No exception and no error message on the page."""
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def figures(at: AppTest) -> list[dict]:
    """The plotly figures on the page, in page order, decoded from their JSON specs."""
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def charts(at: AppTest) -> dict[str, dict]:
    """The plotly figures on the page by widget key, each with its ``config``."""
    out = {}
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        spec["config"] = json.loads(chart.proto.config)
        out[chart.key] = spec
    return out


def array(value) -> np.ndarray:
    """A figure's array: plotly's typed-array form {dtype, bdata, shape}, or a plain list
    (numbers as floats, None as NaN; a list of strings stays strings)."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        return flat.reshape([int(n) for n in str(shape).split(",")] if shape else -1)
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return np.asarray(value)


def pictures(fig: dict) -> list[Image.Image]:
    """The images of a figure's Image traces, decoded from their data URIs."""
    out = []
    for trace in fig["data"]:
        if trace["type"] == "image":
            _, b64 = trace["source"].split(",", 1)
            out.append(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))
    return out


class MemoryTaken:
    """All of the scheduler's memory held by another visitor's job while the block runs (and
    until :meth:`release`): any job admitted meanwhile waits in line. ``seen``: the jobs that
    waited, with their status, as (what, state, place, has a waiting message)."""

    def __init__(self, release_when_waiting: str | None = None) -> None:
        self.release_when_waiting = release_when_waiting  # a waiting job whose name starts so releases it
        self.seen: list[tuple[str, str, int, bool]] = []
        self.held, self.released = threading.Event(), threading.Event()
        self.threads = [threading.Thread(target=self._hold), threading.Thread(target=self._watch)]

    def _hold(self) -> None:
        with jobs.SCHEDULER.job("another visitor", "another visitor's work", limits.job_bytes()):
            self.held.set()
            self.released.wait(30)  # at the latest: a job that never waits fails the test, not the run

    def _watch(self) -> None:
        while not self.released.is_set():
            for job, status in jobs.SCHEDULER.jobs():
                if job.what != "another visitor's work" and status.state == jobs.QUEUED:
                    self.seen.append((job.what, status.state, status.place, job.on_wait is not None))
                    if self.release_when_waiting and job.what.startswith(self.release_when_waiting):
                        self.released.set()
            time.sleep(0.02)

    def release(self) -> None:
        self.released.set()

    def __enter__(self) -> "MemoryTaken":
        self.threads[0].start()
        assert self.held.wait(60)
        self.threads[1].start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        for t in self.threads:
            t.join(60)
