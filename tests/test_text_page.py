"""The text explorer page, run through the app on the real bundled models (the tests of URL
state, bad input and uploads on a tiny random BERT, tests/conftest.py's tiny_models).

Every view's plotly spec is decoded (float32 typed arrays, the overview's PNG) and compared
with a capture made here, outside the app, with attnviz.capture.
"""
from __future__ import annotations

import base64
import html
import io

import numpy as np
import pytest
from apptest_tools import array, assert_clean, charts
from apptest_tools import open_page as open_text_page
from PIL import Image
from streamlit.testing.v1 import AppTest

import attnviz
from attnviz.analysis.tokens import top_share
from attnviz.viz.heatmap import colour_lut
from attnviz.viz.text import HEATMAP_MAX, LINES_MAX, ZOOM
from attnviz.viz.tiles import PALETTE_COLOURS

PAGE = "pages/text.py"
SENTENCE = "The animal didn't cross the street because it was too tired."
ATOL = 2e-3  # float16 weights; the app and the test run the model separately


# -- helpers ------------------------------------------------------------------------------
def open_page(text: str | None = None, **params: str) -> AppTest:
    at = open_text_page(PAGE, **params)
    if text is not None:
        at.text_area(key="_text_box").set_value(text).run()
    return at


def show(at: AppTest, view: str) -> AppTest:
    at.session_state["view"] = view
    return at.run()






def heat(fig: dict) -> tuple[np.ndarray, np.ndarray]:
    """(colour values z, exact weights: customdata when present, else z) of a heatmap figure."""
    (trace,) = [t for t in fig["data"] if t["type"] == "heatmap"]
    z = array(trace["z"])
    return z, array(trace["customdata"]) if "customdata" in trace else z


def labels(fig: dict, axis: str) -> list[str]:
    (trace,) = [t for t in fig["data"] if t["type"] == "heatmap"]
    return [html.unescape(s).replace("\u200b", "") for s in trace[axis]]


def row_max(m: np.ndarray) -> np.ndarray:
    top = m.max(-1, keepdims=True)
    return m / np.where(top > 0, top, 1)


@pytest.fixture(scope="module")
def minilm_sentence(minilm):
    return attnviz.capture(minilm, SENTENCE)


@pytest.fixture
def tiny_bert(tiny_models):
    """The tiny random BERT the app lists as "test-bert", loaded here."""
    return attnviz.load_model(str(tiny_models["test-bert"]))


# -- minilm-l6: every view ----------------------------------------------------------------
def test_heatmap_is_the_captured_head_and_a_head_switch_changes_it(minilm_sentence):
    at = open_page()
    assert_clean(at)
    assert at.text_area(key="_text_box").value == SENTENCE  # a useful default, no typing
    fig = charts(at)["text_heatmap"]
    z, w = heat(fig)
    attn = minilm_sentence.attn["encoder"].astype(np.float32)
    n_layers = attn.shape[0]
    np.testing.assert_allclose(w, attn[n_layers - 1, 0], atol=ATOL)  # default: last layer, head 0
    np.testing.assert_allclose(z, row_max(w), atol=1e-6)  # colour: each row 0..its max
    assert labels(fig, "x") == minilm_sentence.tokens
    assert fig["config"]["toImageButtonOptions"]["filename"] == f"minilm-l6_encoder_L{n_layers - 1}_H0"
    assert at.query_params["model"] == ["minilm-l6"] or at.query_params["model"] == "minilm-l6"

    at.selectbox(key="text_lh_head").set_value(3).run()
    assert_clean(at)
    z3, w3 = heat(charts(at)["text_heatmap"])
    np.testing.assert_allclose(w3, attn[n_layers - 1, 3], atol=ATOL)
    assert not np.allclose(w3, w)
    at.slider(key="text_lh_layer").set_value(0).run()
    np.testing.assert_allclose(heat(charts(at)["text_heatmap"])[1], attn[0, 3], atol=ATOL)
    assert dict(at.query_params)["layer"] in ("0", ["0"]) and dict(at.query_params)["head"] in ("3", ["3"])

    at.selectbox(key="text_lh_head").set_value("mean").run()
    np.testing.assert_allclose(heat(charts(at)["text_heatmap"])[1], attn[0].mean(0), atol=ATOL)
    at.button_group(key="text_colour").set_value("0 … 1").run()
    z, w = heat(charts(at)["text_heatmap"])
    np.testing.assert_array_equal(z, w)  # raw weights, no customdata


def test_overview_is_one_image_of_every_head(minilm_sentence):
    at = show(open_page(), "Model overview")
    assert_clean(at)
    fig = charts(at)["text_overview"]
    kinds = [t["type"] for t in fig["data"]]
    assert kinds == ["image", "scatter"]  # one picture, one layer of click targets
    attn = minilm_sentence.attn["encoder"].astype(np.float32)
    n_layers, n_heads, n, _ = attn.shape
    targets = array(fig["data"][1]["customdata"]).reshape(-1, 2)
    assert targets.shape == (n_layers * n_heads, 2) and targets[-1].tolist() == [n_layers - 1, n_heads - 1]
    png = base64.b64decode(fig["data"][0]["source"].split(",", 1)[1])
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    # 16 tokens -> tiles of 16 x 16 cells enlarged 3x to 48 px, 2 px gaps
    f, gap = 3, 2
    assert image.shape[:2] == (n_layers * (n * f + gap) - gap, n_heads * (n * f + gap) - gap)
    lut = colour_lut(PALETTE_COLOURS).astype(int)
    layer, head = 2, 5
    y0, x0 = layer * (n * f + gap), head * (n * f + gap)
    tile = image[y0:y0 + n * f:f, x0:x0 + n * f:f].astype(int)  # one pixel per cell
    decoded = np.abs(tile[..., None, :] - lut[None, None]).sum(-1).argmin(-1) / (len(lut) - 1)
    np.testing.assert_allclose(decoded, row_max(attn[layer, head]), atol=0.01)


def test_token_lines_draw_the_strongest_lines_of_each_head(minilm_sentence):
    at = show(open_page(), "Token lines")
    assert_clean(at)
    attn = minilm_sentence.attn["encoder"].astype(np.float32)
    layer = attn.shape[0] - 1

    def drawn(fig) -> dict[int, set]:
        pairs: dict[int, set] = {}
        for t in fig["data"]:
            if t["type"] == "scatter" and t.get("mode") == "lines":
                y = array(t["y"]).reshape(-1, 3)
                pairs.setdefault(t["meta"]["head"], set()).update((int(-a), int(-b)) for a, b, _ in y)
        return pairs

    fig = charts(at)["text_lines"]
    lines = drawn(fig)
    assert sorted(lines) == list(range(attn.shape[1]))  # every head, its own colour
    colours = {t["line"]["color"] for t in fig["data"] if t.get("mode") == "lines"}
    assert len(colours) == attn.shape[1]
    for head in (0, 7):
        expected = {tuple(p) for p in np.argwhere(top_share(attn[layer, head], 0.7))}
        assert lines[head] == expected
    # one token, a stricter threshold, two heads
    at.multiselect(key="text_lines_heads").set_value([1, 4])
    at.slider(key="text_lines_share").set_value(0.5)
    at.selectbox(key="text_lines_token").set_value(8).run()
    assert_clean(at)
    lines = drawn(charts(at)["text_lines"])
    assert sorted(lines) == [1, 4]
    for head in (1, 4):
        keep = top_share(attn[layer, head], 0.5)
        assert lines[head] == {(8, int(k)) for k in np.flatnonzero(keep[8])}
    at.radio(key="text_lines_dir").set_value("in").run()
    lines = drawn(charts(at)["text_lines"])
    assert all(k == 8 for head in lines for _, k in lines[head]) and any(lines.values())


def test_token_focus_shows_a_token_through_every_layer(minilm_sentence):
    at = show(open_page(), "Token focus")
    assert_clean(at)
    figs = charts(at)
    attn = minilm_sentence.attn["encoder"].astype(np.float32)
    token = at.selectbox(key="text_focus_q").value
    assert minilm_sentence.tokens[token] == "."  # the last token that is not special
    np.testing.assert_allclose(heat(figs["text_focus_to"])[1], attn[:, 0, token, :], atol=ATOL)
    np.testing.assert_allclose(heat(figs["text_focus_by"])[1], attn[:, 0, :, token], atol=ATOL)
    at.selectbox(key="text_focus_q").set_value(8)
    at.selectbox(key="text_focus_head").set_value(2).run()
    figs = charts(at)
    np.testing.assert_allclose(heat(figs["text_focus_to"])[1], attn[:, 2, 8, :], atol=ATOL)
    np.testing.assert_allclose(heat(figs["text_focus_by"])[1], attn[:, 2, :, 8], atol=ATOL)


def test_merge_and_hide_options_apply_the_documented_rule(minilm):
    text = "Unbelievably, tokenizers split words."
    result = attnviz.capture(minilm, text)
    at = open_page(text)
    at.toggle(key="text_merge").set_value(True)
    at.toggle(key="text_hide").set_value(True).run()
    assert_clean(at)
    fig = charts(at)["text_heatmap"]
    assert labels(fig, "y") == ["unbelievably", ",", "tokenizers", "split", "words", "."]
    a = result.attn["encoder"][-1, 0].astype(np.float32)[1:-1, 1:-1]  # without [CLS] and [SEP]
    a /= a.sum(-1, keepdims=True)  # renormalised
    spans = [(s - 1, e - 1) for s, e in result.word_spans[1:-1]]
    expected = np.array([[a[qs:qe, ks:ke].sum(-1).mean() for ks, ke in spans] for qs, qe in spans])
    np.testing.assert_allclose(heat(fig)[1], expected, atol=ATOL)
    np.testing.assert_allclose(heat(fig)[1].sum(-1), 1.0, atol=1e-3)


# -- long texts ---------------------------------------------------------------------------
def test_long_text_is_block_aggregated_with_a_full_resolution_zoom(minilm):
    text = " ".join(f"word{i % 50} is here." for i in range(400))  # far more than 512 tokens
    result = attnviz.capture(minilm, text)
    at = open_page(text)
    assert_clean(at)
    assert any("512" in w.value for w in at.warning)  # the capture's truncation warning
    figs = charts(at)
    main, zoom = figs["text_heatmap"], figs["text_zoom"]
    assert "512 × 512 tokens shown as 256 × 256 blocks of 2 × 2" in main["layout"]["title"]["subtitle"]["text"]
    z, w = heat(main)
    assert w.shape == (HEATMAP_MAX, HEATMAP_MAX)
    a = result.attn["encoder"][-1, 0].astype(np.float32)
    np.testing.assert_allclose(w[10, 20], a[20:22, 40:42].sum(-1).mean(), atol=ATOL)
    assert heat(zoom)[1].shape == (ZOOM, ZOOM)
    at.slider(key="text_zoom_q").set_value(300)
    at.slider(key="text_zoom_k").set_value(100).run()
    np.testing.assert_allclose(heat(charts(at)["text_zoom"])[1], a[300:300 + ZOOM, 100:100 + ZOOM], atol=ATOL)
    show(at, "Token lines")
    assert_clean(at)
    assert "window" in charts(at)["text_lines"]["layout"]["title"]["subtitle"]["text"]
    assert at.slider(key="text_lines_q0").max == len(result.tokens) - LINES_MAX


# -- the other families -------------------------------------------------------------------
def test_smollm2_decoder_views(smollm):
    text = "Attention is all you need, said the paper."
    result = attnviz.capture(smollm, text)
    at = open_page(text, model="smollm2-135m")
    assert_clean(at)
    assert at.number_input(key="text_generate").value == 0
    attn = result.attn["decoder"].astype(np.float32)
    z, w = heat(charts(at)["text_heatmap"])
    np.testing.assert_allclose(w, attn[-1, 0], atol=ATOL)
    assert np.all(np.triu(w, 1) == 0)  # causal
    at.selectbox(key="text_lh_head").set_value(4).run()
    np.testing.assert_allclose(heat(charts(at)["text_heatmap"])[1], attn[-1, 4], atol=ATOL)
    for view in ("Model overview", "Token lines", "Token focus"):
        show(at, view)
        assert_clean(at)
        assert charts(at)
    figs = charts(at)
    token = at.selectbox(key="text_focus_q").value
    assert token == len(result.tokens) - 1
    np.testing.assert_allclose(heat(figs["text_focus_to"])[1], attn[:, 4, token, :], atol=ATOL)


def test_t5_stacks_encoder_decoder_cross(t5):
    text = "The quick brown fox jumps over the lazy dog near the river bank."
    result = attnviz.capture(t5, text)  # the target is generated, greedily: the same here and there
    at = open_page(text, model="t5-small-titler")
    assert_clean(at)
    assert at.text_input(key="text_target").value == ""
    assert at.button_group(key="text_stack").value == "encoder"
    np.testing.assert_allclose(heat(charts(at)["text_heatmap"])[1], result.attn["encoder"][-1, 0].astype(np.float32),
                               atol=ATOL)
    at.button_group(key="text_stack").set_value("cross").run()
    assert_clean(at)
    fig = charts(at)["text_heatmap"]
    cross = result.attn["cross"].astype(np.float32)
    assert heat(fig)[1].shape == cross.shape[2:]  # target x source
    assert labels(fig, "x")[-1] == "</s>" and fig["data"][0]["x"][-1] == "&lt;/s&gt;"  # escaped for plotly
    np.testing.assert_allclose(heat(fig)[1], cross[-1, 0], atol=ATOL)
    at.selectbox(key="text_lh_head").set_value(5).run()
    np.testing.assert_allclose(heat(charts(at)["text_heatmap"])[1], cross[-1, 5], atol=ATOL)
    assert dict(at.query_params)["stack"] in ("cross", ["cross"])
    for view in ("Model overview", "Token lines", "Token focus"):
        show(at, view)
        assert_clean(at)
        assert charts(at)
    figs = charts(at)
    np.testing.assert_allclose(heat(figs["text_focus_by"])[1],
                               cross[:, 5, :, at.selectbox(key="text_focus_k").value], atol=ATOL)


def test_shared_link_opens_view_layer_and_head(tiny_bert):
    at = open_page(model="test-bert", view="Head heatmap", layer="1", head="3")
    assert_clean(at)
    np.testing.assert_allclose(heat(charts(at)["text_heatmap"])[1],
                               attnviz.capture(tiny_bert, SENTENCE).attn["encoder"][1, 3].astype(np.float32), atol=ATOL)
    at = open_page(model="test-bert", view="Token focus", head="max")
    assert_clean(at)
    assert "max of all heads" in charts(at)["text_focus_to"]["layout"]["title"]["text"]


# -- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "   \n\t  "])
def test_empty_text_gives_a_clear_message(text, tiny_models):
    at = open_page(text, model="test-bert")
    assert not at.exception
    assert [e.value for e in at.error] == ["The text is empty: type or upload some words first."]


def test_binary_and_huge_uploads_are_refused_clearly(tiny_models):
    at = open_page(model="test-bert")
    png_header = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
    at.file_uploader(key="text_upload").set_value(("photo.txt", png_header, "text/plain")).run()
    assert not at.exception
    assert "photo.txt looks binary" in at.error[0].value
    at.file_uploader(key="text_upload").set_value(("big.txt", b"word " * 1_000_000, "text/plain")).run()
    assert not at.exception
    assert "big.txt is 5.0 MB" in at.error[0].value


def test_upload_replaces_the_text_box(tiny_bert):
    at = open_page(model="test-bert")
    at.file_uploader(key="text_upload").set_value(("notes.md", "# Title\n\nCats purr.".encode(), "text/markdown")).run()
    assert_clean(at)
    assert labels(charts(at)["text_heatmap"], "x") == attnviz.capture(tiny_bert, "# Title\n\nCats purr.").tokens
    assert any("notes.md" in i.value for i in at.info)


def test_five_megabytes_of_typed_text_are_cut_with_a_note():
    at = open_page("lorem ipsum " * 440_000)  # 5.3 MB
    assert_clean(at)
    assert any("only the first" in w.value for w in at.warning)  # cut by the capture, before tokenising
    assert any("cut to the first 512" in w.value for w in at.warning)


@pytest.mark.parametrize("text", ["猫坐在垫子上。", "القطة تجلس على السجادة", "I ❤️ 🐈 and 🍕!"])
def test_other_scripts_and_emoji(minilm, text):
    at = open_page(text)
    assert_clean(at)
    result = attnviz.capture(minilm, text)
    fig = charts(at)["text_heatmap"]
    assert len(labels(fig, "x")) == len(result.tokens)
    np.testing.assert_allclose(heat(fig)[1], result.attn["encoder"][-1, 0].astype(np.float32), atol=ATOL)
