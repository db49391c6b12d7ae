"""The local/global and flow page, run with AppTest on real models (minilm-l6, dinov2-small).

Each figure's numbers are read back from its plotly JSON and compared with the same analysis
run here on a capture made outside the app.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from apptest_tools import MemoryTaken, array, assert_clean, figures, open_page
from browser import centre, click_until_shown, screenshot, wait_for_app
from streamlit.testing.v1 import AppTest

import attnviz
import attnviz.jobs as jobs
from attnviz.analysis.flow import attention_flow, last_layer_attention, rollout, rollout_spread
from attnviz.analysis.stats import average_stats, head_stats
from attnviz.inputs import open_image
from attnviz.samples import SAMPLES, sample_bytes
from attnviz.ui import flow as flow_ui
from attnviz.ui.inputs import DEFAULT_TEXT
from attnviz.ui.measures import STATS

PAGE = "pages/flow.py"
ATOL = 1e-9  # the page and the test run the same float16 capture through the same code


def show(at: AppTest, view: str) -> AppTest:
    """Open the view named ``view`` in the URL (its tab, as a click on it does)."""
    at.session_state["flow_view"] = next(v.label for v in flow_ui.VIEWS if v.key == view)
    at.run()
    assert_clean(at)
    return at


def dots(fig: dict) -> dict:
    """The distance-vs-depth trace: one dot per head."""
    return fig["data"][0]


# -- text -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_page() -> AppTest:
    at = open_page(PAGE, kind="text", model="minilm-l6")
    assert_clean(at)
    return at


@pytest.fixture(scope="module")
def text_result(minilm):
    return attnviz.capture(minilm, DEFAULT_TEXT)


def test_text_distance_depth_shows_every_heads_statistics(text_page, text_result):
    at = show(text_page, "depth")
    stats = head_stats(text_result)
    trace = dots(figures(at)[0])
    np.testing.assert_allclose(array(trace["y"]), stats.mean_distance.ravel(), atol=ATOL)
    np.testing.assert_allclose(array(trace["marker"]["color"]), stats.entropy_norm.ravel(), atol=ATOL)
    np.testing.assert_array_equal(np.round(array(trace["x"])), np.repeat(np.arange(6), 12))  # dot layer * 12 + head
    assert figures(at)[0]["layout"]["yaxis"]["title"]["text"] == "mean attention distance (tokens)"
    assert list(trace["marker"]["symbol"]) == [{"local": "circle", "mixed": "diamond", "global": "square"}[c]
                                               for c in stats.classes().ravel()]
    at.slider(key="flow_local_min").set_value(0.0).run()  # every head keeps >= 0 in its window
    assert set(dots(figures(at)[0])["marker"]["symbol"]) == {"circle"}
    at.slider(key="flow_local_min").set_value(0.5).run()
    at.slider(key="flow_window").set_value(4).run()
    wider = head_stats(text_result, window=4)
    assert_clean(at)
    assert "**" in at.markdown[-1].value  # the class counts
    assert sum(int(n) for n in re.findall(r"\*\*(\d+)\*\*", at.markdown[-1].value)) == 72
    np.testing.assert_allclose(array(dots(figures(at)[0])["y"]), wider.mean_distance.ravel(), atol=ATOL)
    at.slider(key="flow_window").set_value(2).run()



def test_the_statistics_of_every_head_are_a_job_that_waits_in_line(text_page, text_result):
    """Per-head statistics read every head (on a long text as long as the overview): a job of
    the visitor, waiting in line with its place on the page while the server's memory is
    taken, computed once per result and shared."""
    at = show(text_page, "depth")
    STATS.clear()
    with MemoryTaken(release_when_waiting="Statistics of every head") as taken:
        at.run()
    assert_clean(at)
    assert ("Statistics of every head of minilm-l6", jobs.QUEUED, 1, True) in taken.seen
    np.testing.assert_allclose(array(dots(figures(at)[0])["y"]), head_stats(text_result).mean_distance.ravel(), atol=ATOL)

def test_text_heatmaps_show_each_statistic(text_page, text_result):
    at = show(text_page, "heatmaps")
    stats = head_stats(text_result)
    for name in ("sink_mass", "entropy", "local_share", "mean_distance"):
        at.radio(key="flow_statistic").set_value(name).run()
        (fig,) = figures(at)
        np.testing.assert_allclose(array(fig["data"][0]["z"]), getattr(stats, name), atol=ATOL)


def test_text_rollout_and_flow_bars_equal_the_analysis(text_page, text_result):
    at = show(text_page, "flow")
    attn = text_result.attn["encoder"]
    (fig,) = figures(at)
    bars = {t["name"]: array(t["y"]) for t in fig["data"]}
    np.testing.assert_allclose(bars["raw attention"], last_layer_attention(attn, 0), atol=1e-6)
    np.testing.assert_allclose(bars["rollout"], rollout(attn, source=0), atol=1e-6)
    np.testing.assert_allclose(bars["flow"], attention_flow(attn, 0), atol=1e-6)
    assert list(array(fig["data"][0]["customdata"])) == text_result.tokens

    source = len(text_result.tokens) - 3
    at.selectbox(key="flow_source_encoder").set_value(source).run()
    at.toggle(key="flow_hide").set_value(True).run()
    assert_clean(at)
    (fig,) = figures(at)
    bars = {t["name"]: array(t["y"]) for t in fig["data"]}
    content = ~np.array(text_result.special)
    expected = attention_flow(attn, source)[content]
    np.testing.assert_allclose(bars["flow"], expected / expected.sum(), atol=1e-6)
    assert "[CLS]" not in list(array(fig["data"][0]["customdata"]))
    at.toggle(key="flow_hide").set_value(False).run()
    at.selectbox(key="flow_source_encoder").set_value(0).run()


def test_text_layer_by_layer_sankey_carries_the_rollout_shares(text_page, text_result):
    at = show(text_page, "spread")
    at.slider(key="flow_top_k").set_value(3).run()
    (fig,) = figures(at)
    link = fig["data"][0]["link"]
    expected = rollout_spread(text_result.attn["encoder"], 0, "mean", 3)
    assert len(array(link["value"])) == 3 * 6
    np.testing.assert_allclose(array(link["value"]), expected[:, 3], atol=ATOL)


def test_text_statistics_over_many_inputs_are_the_mean_over_captures(text_page, minilm):
    at = show(text_page, "many")
    texts = [t for t in at.text_area(key="flow_many_typed").value.splitlines() if t.strip()]
    assert len(texts) >= 5
    spread = average_stats([head_stats(attnviz.capture(minilm, t)) for t in texts])
    trace = dots(figures(at)[0])
    np.testing.assert_allclose(array(trace["y"]), spread.mean.mean_distance.ravel(), atol=ATOL)
    np.testing.assert_allclose(array(trace["error_y"]["array"]), spread.std.mean_distance.ravel(), atol=ATOL)


# -- image ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_page() -> AppTest:
    at = open_page(PAGE, kind="image", model="dinov2-small", sample="coffee", size="224")
    assert_clean(at)
    return at


@pytest.fixture(scope="module")
def image_result(dinov2):
    return attnviz.capture(dinov2, open_image(sample_bytes("coffee"), "coffee"), size=224)


def test_image_distance_depth_is_in_pixels(image_page, image_result):
    at = show(image_page, "depth")
    stats = head_stats(image_result)
    (fig,) = figures(at)
    np.testing.assert_allclose(array(dots(fig)["y"]), stats.mean_distance.ravel(), atol=ATOL)
    assert fig["layout"]["yaxis"]["title"]["text"] == "mean attention distance (px)"


def test_image_rollout_and_flow_overlays(image_page, image_result):
    at = show(image_page, "flow")
    (fig,) = figures(at)
    images = [t for t in fig["data"] if t["type"] == "image"]
    assert len(images) == 3
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    attn = image_result.attn["encoder"]
    expected = {"raw attention": last_layer_attention(attn, 0)[0], "rollout": rollout(attn, source=0)[0],
                "flow": attention_flow(attn, 0)[0]}
    for title, (name, cls_share) in zip(titles, expected.items()):
        assert title == f"{name} (prefix {cls_share:.0%})"


def test_image_statistics_over_the_sample_photos(image_page, dinov2):
    at = show(image_page, "many")
    photos = [open_image(sample_bytes(n), n) for n in SAMPLES]
    spread = average_stats([head_stats(attnviz.capture(dinov2, p, size=224)) for p in photos])
    (depth, heatmap) = figures(at)
    assert f"mean over {len(SAMPLES)} sample photos" in depth["layout"]["title"]["text"]
    np.testing.assert_allclose(array(dots(depth)["y"]), spread.mean.mean_distance.ravel(), atol=ATOL)
    # the finding of docs/flow.md: local heads early, none late; distance grows with depth
    distance = spread.mean.mean_distance
    assert distance[1:5].min() < 50 < distance[8:].min()
    assert distance[8:].mean() > distance[1:5].mean()


# -- in chromium ----------------------------------------------------------------------------
@pytest.mark.browser
def test_click_a_head_in_the_distance_plot_opens_its_pattern(streamlit_server, browser_page):
    page = browser_page
    page.set_viewport_size({"width": 1400, "height": 1400})
    page.goto(f"{streamlit_server}/flow?kind=text&model=minilm-l6&view=depth")
    wait_for_app(page)
    dot = page.locator('[data-testid="stPlotlyChart"] .scatterlayer .trace').first.locator("path.point").nth(13)
    dot.wait_for(timeout=180_000)  # the 14th dot: layer 1, head 1 of minilm-l6's 12 heads
    # plotly's drag layer lies over the dots: click where the dot is
    click_until_shown(page, lambda: centre(dot), page.get_by_text("layer 1 · head 1").first)
    wait_for_app(page)
    assert page.locator('[data-testid="stPlotlyChart"]').count() == 2  # the plot and the head
    assert page.locator('[data-testid="stException"]').count() == 0
    screenshot(page, "flow-text-click-head")
    assert not page.errors, page.errors


@pytest.mark.browser
def test_rollout_and_flow_on_a_photo(streamlit_server, browser_page):
    page = browser_page
    page.set_viewport_size({"width": 1400, "height": 1200})
    page.goto(f"{streamlit_server}/flow?kind=image&model=dinov2-small&view=flow&sample=cat")
    wait_for_app(page)
    for name in ("raw attention", "rollout", "flow"):
        page.get_by_text(f"{name} (prefix").first.wait_for(timeout=180_000)
    wait_for_app(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    screenshot(page, "flow-image-methods")
    assert not page.errors, page.errors
