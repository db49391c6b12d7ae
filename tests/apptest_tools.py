"""Reading what an AppTest run put on the page: plotly figures decoded from their specs."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
from conftest import app_path
from PIL import Image
from streamlit.testing.v1 import AppTest


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
