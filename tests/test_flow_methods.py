"""The flow page's "Rollout and flow" and "Layer by layer" views carry any context-mixing
method (attnviz.mixing) as well as the attention, and the URL keeps the choice (?method=).
The bars and the Sankey are read back from their plotly JSON and compared with the rollout
and flow of the Mixing matrices computed here (attnviz.analysis.mixing, a separate code path
from the page's streamed rollout)."""
from __future__ import annotations

import numpy as np
import pytest
from apptest_tools import array, assert_clean, figures, open_page

import attnviz
from attnviz.mixing import mixing
from attnviz.ui import flow as flow_ui
from attnviz.ui.inputs import DEFAULT_TEXT

PAGE = "pages/flow.py"


@pytest.fixture(scope="module")
def mixed(minilm):
    result = attnviz.capture(minilm, DEFAULT_TEXT)
    return mixing(minilm, DEFAULT_TEXT, methods=("alti", "attention_norm", "globenc"), result=result)


def show(at, view: str):
    at.session_state["flow_view"] = next(v.label for v in flow_ui.VIEWS if v.key == view)
    at.run()
    assert_clean(at)
    return at


def bars(at) -> dict[str, np.ndarray]:
    (fig,) = figures(at)
    return {t["name"]: array(t["y"]) for t in fig["data"]}


def test_rollout_and_flow_carry_the_chosen_method(mixed):
    at = open_page(PAGE, kind="text", model="minilm-l6", method="alti", view="flow")
    assert_clean(at)
    assert at.query_params["method"] == "alti"
    drawn = bars(at)
    np.testing.assert_allclose(drawn["rollout"], mixed.rollout("alti")[0], atol=1e-5)
    np.testing.assert_allclose(drawn["flow"], mixed.flow("alti", 0), atol=1e-5)
    np.testing.assert_allclose(drawn["last layer's alti"], mixed.matrices["alti"][-1, 0], atol=1e-6)
    at.selectbox(key="flow_method").set_value("attention_norm").run()
    assert_clean(at)
    assert at.query_params["method"] == "attention_norm"
    np.testing.assert_allclose(bars(at)["rollout"], mixed.rollout("attention_norm")[0], atol=1e-5)
    at.selectbox(key="flow_method").set_value("attention").run()
    assert "raw attention" in bars(at)


def test_layer_by_layer_carries_the_chosen_method(mixed):
    at = open_page(PAGE, kind="text", model="minilm-l6", method="globenc", view="spread")
    assert_clean(at)
    at.slider(key="flow_top_k").set_value(3).run()
    (fig,) = figures(at)
    drawn = array(fig["data"][0]["link"]["value"])
    m = mixed.matrices["globenc"].astype(np.float64)
    r, expected = np.eye(m.shape[-1])[0], []
    for layer in reversed(range(m.shape[0])):  # the source's share passing each layer, strongest 3 edges
        share = r[:, None] * m[layer]
        expected += sorted(share.ravel(), reverse=True)[:3]
        r = r @ m[layer]
    np.testing.assert_allclose(drawn, expected, atol=1e-6)


def test_a_method_that_does_not_apply_says_what_does(tiny_models):
    at = open_page(PAGE, kind="text", model="test-gpt2", method="globenc", view="flow")
    assert_clean(at)
    assert any("GlobEnc decomposes" in i.value and "What applies here" in i.value for i in at.info)
    assert "raw attention" in bars(at)
