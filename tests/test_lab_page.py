"""The mechanics lab, run through the app: every step's figure holds the numbers that
attnviz.analysis.mechanics computes from the inputs on screen, a sentence's weights are
minilm-l6's own, and the Cost chart's measured points come from a real run."""
from __future__ import annotations

import numpy as np
from apptest_tools import array, assert_clean, charts, open_page
from streamlit.testing.v1 import AppTest

import attnviz
from attnviz.analysis import mechanics as mech

PAGE = "pages/lab.py"


def open_lab() -> AppTest:
    at = open_page(PAGE)
    assert_clean(at)
    return at


def z(fig: dict) -> np.ndarray:
    (trace,) = [t for t in fig["data"] if t["type"] == "heatmap"]
    return array(trace["z"])


def texts(fig: dict) -> np.ndarray:
    (trace,) = [t for t in fig["data"] if t["type"] == "heatmap"]
    return np.array(trace["text"])


def default_inputs():
    """The default numbers: seed 0, 4 queries, 6 keys, width 4, as the tables show them."""
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(4, 4)), rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    return np.round(q, 2), np.round(k, 2), np.round(v, 2)


def test_default_steps_show_the_computed_numbers():
    at = open_lab()
    figs = charts(at)
    q, k, v = default_inputs()
    s = mech.attention(q, k, v, score="scaled")
    np.testing.assert_allclose(z(figs["lab_step_scores"]), s.scores, atol=1e-9)
    np.testing.assert_allclose(z(figs["lab_step_scaling"]), s.scores / 2.0, atol=1e-9)
    np.testing.assert_allclose(z(figs["lab_step_softmax"]), s.weights, atol=1e-9)
    np.testing.assert_allclose(z(figs["lab_step_weighted_sum"]), s.output, atol=1e-9)
    (bars,) = figs["lab_entropy"]["data"]
    np.testing.assert_allclose(array(bars["x"]), s.entropy, atol=1e-9)
    formulas = " ".join(e.value for e in at.latex)
    assert r"\sqrt{d_k}" in formulas and r"\sum_{j'} e^{S''_{ij'}}" in formulas
    # multi-head: 2 heads by default on width 4, each on its 2 columns
    grid = [array(t["z"]) for t in figs["lab_heads_grid"]["data"] if t["type"] == "heatmap"]
    mh = mech.multi_head(q, k, v, 2, np.eye(4), score="scaled")
    assert len(grid) == 2
    np.testing.assert_allclose(np.stack(grid), mh.weights, atol=1e-6)
    np.testing.assert_allclose(z(figs["lab_concat"]), mh.concat, atol=1e-9)


def test_variants_change_the_steps():
    at = open_lab()
    at.segmented_control(key="lab_score").set_value("dot")
    at.segmented_control(key="lab_span").set_value("local")
    at.segmented_control(key="lab_selection").set_value("top-k").run()
    assert_clean(at)
    at.slider(key="lab_window").set_value(1)
    at.slider(key="lab_top").set_value(2)
    at.select_slider(key="lab_temperature").set_value(0.5).run()
    assert_clean(at)
    figs = charts(at)
    q, k, v = default_inputs()
    s = mech.attention(q, k, v, score="dot", window=1, selection="top-k", top=2, temperature=0.5)
    masked = texts(figs["lab_step_mask"])
    assert masked[0, 3] == "-inf" and masked[0, 1] != "-inf"
    weights = z(figs["lab_step_selection"])
    np.testing.assert_allclose(weights, s.weights, atol=1e-9)
    assert ((weights > 0).sum(1) <= 2).all()
    (table,) = [d.value for d in at.dataframe if "variant" in d.value.columns]
    assert table["variant"].iloc[0] == "as chosen"
    assert "span: global" in set(table["variant"]) and "score: additive (Bahdanau)" in set(table["variant"])


def test_sentence_weights_are_minilms_own(minilm):
    at = open_lab()
    at.segmented_control(key="lab_source").set_value("A sentence (minilm-l6)").run()
    assert_clean(at)
    assert "minilm-l6's own" in at.success[0].value
    result = attnviz.capture(minilm, "The cat sat on the mat.")
    figs = charts(at)
    np.testing.assert_allclose(z(figs["lab_step_softmax"]), result.attn["encoder"][0, 0], atol=2e-3)
    at.number_input(key="lab_head").set_value(5).run()
    np.testing.assert_allclose(z(charts(at)["lab_step_softmax"]), result.attn["encoder"][0, 5], atol=2e-3)


def test_cost_measures_for_real():
    at = open_lab()
    at.select_slider(key="lab_cost_n").set_value(1024)
    at.button(key="lab_cost_run").click().run()
    assert_clean(at)
    fig = charts(at)["lab_cost_chart"]
    measured = [t for t in fig["data"] if t["mode"] == "lines+markers"]  # formulas are dashed lines
    assert sorted({t["legendgroup"] for t in measured}) == ["fused", "global", "local", "top-k"]
    (seconds,) = [t for t in measured if t["legendgroup"] == "global" and t["xaxis"] == "x"]
    (memory,) = [t for t in measured if t["legendgroup"] == "global" and t["xaxis"] == "x2"]
    assert array(seconds["x"]).tolist() == [128, 256, 512, 1024]
    time_s, peak = array(seconds["y"]), array(memory["y"])
    assert (time_s > 0).all() and time_s[-1] > time_s[0]  # 64 times the work
    assert (np.diff(peak) > 0).all()  # the n x n matrices grow
    assert peak[-1] >= 4 * 1024 * 1024  # at least one float32 1024 x 1024 matrix
