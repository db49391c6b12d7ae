"""The "Show" control of the text and image explorers (attnviz.ui.mixing): every view draws
attention x value norm or a per-layer mixing method instead of the weights, the URL keeps the
choice, and a method that does not apply says what does. The derived results
(attnviz.mixing.scaled_by_value_norms, Mixing.as_result) are checked against direct
computations; the pages on the tiny random models of tests/conftest.py (and minilm-l6 for the
values drawn)."""
from __future__ import annotations

import numpy as np
import pytest
from apptest_tools import MemoryTaken, assert_clean, charts, figures, open_page

import attnviz
import attnviz.jobs as jobs
from attnviz.inputs import open_image
from attnviz.lazy import ScaledStack
from attnviz.mixing import mixing, scaled_by_value_norms, value_norms
from attnviz.samples import sample_bytes
from attnviz.ui.mixing import MIXINGS, SHOWN

SENTENCE = "The animal didn't cross the street because it was too tired."
TEXT_VIEWS = ("Head heatmap", "Model overview", "Token lines", "Token focus")
IMAGE_VIEWS = ("CLS attention", "All heads", "All layers", "Patch query", "Rollout", "Prefix tokens")


def heatmap_weights(fig: dict) -> np.ndarray:
    from apptest_tools import array

    (trace,) = [t for t in fig["data"] if t["type"] == "heatmap"]
    return array(trace["customdata"]) if "customdata" in trace else array(trace["z"])


@pytest.fixture(scope="module")
def minilm_mixing(minilm):
    result = attnviz.capture(minilm, SENTENCE)
    return result, mixing(minilm, SENTENCE, methods=("alti", "attention_norm", "globenc"), result=result)


# -- the derived results ------------------------------------------------------------------
def test_value_norm_result_is_each_heads_attention_times_its_keys_value_norms(minilm, minilm_mixing):
    result, mixed = minilm_mixing
    norms = value_norms(minilm, SENTENCE)
    shown = scaled_by_value_norms(result, norms)
    stack = shown.attn["encoder"]
    assert isinstance(stack, ScaledStack) and result.is_lazy("encoder")
    assert shown.digest != result.digest
    for layer in range(6):
        for head in range(12):
            direct = result.attention(layer, head) * norms[layer, head][None, :]
            np.testing.assert_allclose(shown.attention(layer, head), direct, rtol=1e-6)
            np.testing.assert_allclose(shown.attention_columns(layer, head, keys=[0, 3]), direct[:, [0, 3]], rtol=1e-4,
                                       atol=1e-6)
    np.testing.assert_allclose(np.asarray(stack, np.float32)[2, 5], result.attention(2, 5) * norms[2, 5], rtol=2e-3)
    np.testing.assert_array_equal(norms, mixed.value_norms)


def test_value_norm_result_of_an_array_stack_and_wrong_norms_are_refused(minilm_mixing):
    result, mixed = minilm_mixing
    dense = attnviz.AttentionResult.from_maps(np.asarray(result.attn["encoder"]), result.tokens)
    shown = scaled_by_value_norms(dense, mixed.value_norms)
    np.testing.assert_allclose(shown.attention(4, 1), dense.attention(4, 1) * mixed.value_norms[4, 1], rtol=2e-3)
    with pytest.raises(attnviz.AttnvizError, match="value norms are"):
        scaled_by_value_norms(dense, mixed.value_norms[:, :, :-1])


def test_a_mixing_method_is_a_result_with_one_head_per_layer(minilm_mixing):
    result, mixed = minilm_mixing
    for method in ("alti", "attention_norm", "globenc", "attention"):
        shown = mixed.as_result(method, result)
        assert shown.attn["encoder"].shape == (6, 1, len(result.tokens), len(result.tokens))
        for layer in range(6):
            np.testing.assert_allclose(shown.attention(layer, 0), mixed.matrices[method][layer], atol=1e-3)
        assert shown.tokens == result.tokens and shown.digest != result.digest
    with pytest.raises(attnviz.AttnvizError, match="value_zeroing"):
        mixed.as_result("value_zeroing", result)


# -- the text explorer --------------------------------------------------------------------
def test_show_switches_every_text_view_and_the_url_keeps_it(minilm_mixing):
    result, mixed = minilm_mixing
    at = open_page("pages/text.py", show="alti", layer="3")
    assert_clean(at)
    assert at.selectbox(key="show").value == "alti" and at.query_params["show"] == "alti"
    drawn = heatmap_weights(charts(at)["text_heatmap"])
    np.testing.assert_allclose(drawn, mixed.matrices["alti"][3], atol=1e-3)
    for view in TEXT_VIEWS[1:]:
        at.session_state["view"] = view
        at.run()
        assert_clean(at)
        assert charts(at), view
    at.selectbox(key="show").set_value("value_norm").run()
    assert_clean(at)
    assert at.query_params["show"] == "value_norm"
    at.session_state["view"] = TEXT_VIEWS[0]
    at.run()
    drawn = heatmap_weights(charts(at)["text_heatmap"])
    np.testing.assert_allclose(drawn, result.attention(3, 0) * mixed.value_norms[3, 0], rtol=3e-3, atol=1e-3)
    at.selectbox(key="show").set_value("attention").run()
    np.testing.assert_allclose(heatmap_weights(charts(at)["text_heatmap"]), result.attention(3, 0), atol=2e-3)


def test_show_computes_its_mixing_as_a_job_that_waits_in_line_and_is_shared(minilm_mixing):
    """The mixing behind a Show choice runs through ui.common.cached_job: while the server's
    memory is taken, it waits in line as the visitor's job named by what it computes, with a
    waiting message (its place in line on the page), and goes on when the memory is free; a
    second session then shows the same from the cache, with no job, while the memory is taken.
    Attention x value norm's norms are a job likewise."""
    result, mixed = minilm_mixing
    MIXINGS.clear()
    SHOWN.clear()
    at = open_page("pages/text.py", layer="3")  # the capture (cached for every session)
    assert_clean(at)
    with MemoryTaken(release_when_waiting="Context mixing") as taken:
        at.selectbox(key="show").set_value("alti").run()
    assert_clean(at)
    assert ("Context mixing (attention, attention_norm, alti, globenc) on minilm-l6", jobs.QUEUED, 1, True) in taken.seen
    np.testing.assert_allclose(heatmap_weights(charts(at)["text_heatmap"]), mixed.matrices["alti"][3], atol=1e-3)
    with MemoryTaken() as taken:
        other = open_page("pages/text.py", timeout=60, layer="3", show="alti")
    assert_clean(other)
    assert taken.seen == []
    np.testing.assert_allclose(heatmap_weights(charts(other)["text_heatmap"]), mixed.matrices["alti"][3], atol=1e-3)
    with MemoryTaken(release_when_waiting="Attention × value norm") as taken:  # the value norms' job likewise
        at.selectbox(key="show").set_value("value_norm").run()
    assert_clean(at)
    assert ("Attention × value norm on minilm-l6", jobs.QUEUED, 1, True) in taken.seen
    np.testing.assert_allclose(heatmap_weights(charts(at)["text_heatmap"]), result.attention(3, 0) * mixed.value_norms[3, 0],
                               rtol=3e-3, atol=1e-3)


@pytest.mark.parametrize("model,show,expected", [
    ("test-gpt2", "globenc", "GlobEnc decomposes the two LayerNorms"),
    ("test-bert", "value_zeroing", None),
])
def test_each_show_choice_on_tiny_models_draws_or_says_what_applies(tiny_models, model, show, expected):
    at = open_page("pages/text.py", model=model, show=show)
    assert_clean(at)
    if expected:
        assert any(expected in i.value and "What applies here" in i.value for i in at.info), [i.value for i in at.info]
    else:
        assert any("layer passes" in c.value for c in at.caption)
    assert "text_heatmap" in charts(at)


# -- the image explorer -------------------------------------------------------------------
@pytest.mark.parametrize("show", ["value_norm", "alti", "value_zeroing"])
def test_show_switches_every_image_view(tiny_models, show):
    at = open_page("pages/image.py", model="test-vit", size="112", sample="cat", show=show)
    assert_clean(at)
    assert at.query_params["show"] == show
    for view in IMAGE_VIEWS:
        at.session_state["image_view"] = view
        at.run()
        assert_clean(at)
        assert charts(at) or at.get("imgs"), view


def test_the_cls_overlay_shows_the_layers_alti_row(tiny_models):
    """ALTI on the photo: the CLS view's per-patch values are row 0 (CLS) of the layer's ALTI
    matrix, computed here from the same sample photo."""
    model = attnviz.load_model(str(tiny_models["test-vit"]))
    photo = open_image(sample_bytes("cat"), "cat.png")
    expected = mixing(model, photo, methods=("alti",), size=112).matrices["alti"]
    at = open_page("pages/image.py", model="test-vit", size="112", sample="cat", show="alti", view="cls", layer="1",
                   head="0")
    assert_clean(at)
    (fig,) = [f for f in figures(at) if any(t["type"] == "scatter" for t in f["data"])]
    (points,) = [t for t in fig["data"] if t["type"] == "scatter"]
    np.testing.assert_allclose([float(v) for v in points["text"]], expected[1, 0, 1:], atol=2e-3)
