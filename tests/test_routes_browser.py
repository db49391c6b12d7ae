"""The Routes view of the flow page in chromium (docs/routes.md): a 12-token sentence on
minilm-l6, a prompt of about 100 tokens on smollm2-135m and a photo at 112 px on dinov2-small
draw their routes; moving the threshold redraws the graph with other edges; clicking a node
opens its layer's heatmap and writes it to the URL. Screenshots go to test-artifacts/."""
import re

import pytest
from browser import centre, click_until_shown, screenshot, wait_for_app

CHART = ".st-key-flow_routes"  # streamlit marks a keyed element with the class st-key-<key>
SENTENCE = "The cat sat on the mat near the door."  # [CLS] + 10 + [SEP]: 12 tokens
PROMPT = ("The old lighthouse keeper climbed the spiral stairs every evening to light the great lamp. "
          "Ships passing the rocky coast relied on its beam to find the safe channel into the harbour. "
          "One stormy night the lamp failed, and the keeper had to decide whether to wait for the ships to pass "
          "in the dark or to row out himself with a lantern to guide them past the rocks that had already sunk "
          "three boats that winter. He chose the lantern, and")


def open_routes(page, server: str, query: str) -> None:
    page.set_viewport_size({"width": 1500, "height": 1400})
    page.goto(server)
    wait_for_app(page)
    page.goto(f"{server}/flow?view=routes&{query}")
    wait_for_app(page, timeout_ms=300_000)


def type_text(page, text: str) -> None:
    box = page.get_by_label("Text", exact=True)
    box.fill(text)
    box.press("Control+Enter")
    wait_for_app(page, timeout_ms=300_000)


def note(page) -> str:
    """The figure's subtitle: method, threshold, edges kept, tokens shown."""
    title = page.locator(f"{CHART} .gtitle").first
    title.wait_for(timeout=300_000)
    return title.text_content()


def graph(page) -> dict:
    """{trace name: number of points} of the routes figure, from the plotly div."""
    return page.evaluate(f"""() => Object.fromEntries(document.querySelector('{CHART} .js-plotly-plot')._fullData
                             .map(t => [t.name || 'lines', t.x ? t.x.length : 0]))""")


def tokens_shown(text: str) -> tuple[int, int]:
    shown, total = re.search(r"(\d+) of (\d+) tokens shown", text).groups()
    return int(shown), int(total)


def move_threshold(page, presses: int) -> str:
    """Move the threshold slider ``presses`` steps right; returns the new subtitle."""
    before = note(page)
    thumb = page.locator('[data-testid="stSlider"]').filter(has_text="Threshold").get_by_role("slider")
    thumb.focus()
    for _ in range(presses):
        thumb.press("ArrowRight")
    page.wait_for_function(f"""() => {{ const t = document.querySelector('{CHART} .gtitle');
                                       return t && t.textContent !== {before!r}; }}""", timeout=120_000)
    wait_for_app(page)
    return note(page)


def clean(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0 and not page.errors, page.errors


def edges_kept(text: str) -> int:
    return int(re.search(r"([\d,]+) edges kept", text).group(1).replace(",", ""))


@pytest.mark.browser
def test_routes_of_a_sentence_on_minilm_move_with_the_threshold_and_open_a_node(streamlit_server, browser_page):
    page = browser_page
    open_routes(page, streamlit_server, "kind=text&model=minilm-l6")
    type_text(page, SENTENCE)
    page.wait_for_function(f"""() => {{ const t = document.querySelector('{CHART} .gtitle');
                                       return t && t.textContent.includes('of 12 tokens shown'); }}""", timeout=300_000)
    first = note(page)
    assert "alti" in first and tokens_shown(first)[1] == 12
    assert graph(page)["edges"] == edges_kept(first) > 0
    screenshot(page, "routes-minilm-sentence")
    moved = move_threshold(page, 80)  # 0.08 higher: fewer edges
    assert edges_kept(moved) < edges_kept(first) and graph(page)["edges"] == edges_kept(moved)
    screenshot(page, "routes-minilm-sentence-threshold")

    names = page.evaluate(f"() => document.querySelector('{CHART} .js-plotly-plot').data.map(t => t.name)")
    node = page.locator(f"{CHART} .scatterlayer .trace").nth(names.index("nodes")).locator("path.point").nth(3)
    click_until_shown(page, lambda: centre(node), page.get_by_text("mean of all heads").first)
    wait_for_app(page)
    assert "token=" in page.url and "layer=" in page.url
    screenshot(page, "routes-minilm-node-opened")
    clean(page)


@pytest.mark.browser
def test_routes_of_a_hundred_token_prompt_on_smollm(streamlit_server, browser_page):
    page = browser_page
    open_routes(page, streamlit_server, "kind=text&model=smollm2-135m")
    type_text(page, PROMPT)
    page.wait_for_function(f"""() => {{ const t = document.querySelector('{CHART} .gtitle');
                                       const m = t && t.textContent.match(/of (\\d+) tokens shown/);
                                       return m && Number(m[1]) > 80; }}""", timeout=400_000)
    first = note(page)
    assert 85 <= tokens_shown(first)[1] <= 115, first  # about 100 tokens; the output is the last one
    assert graph(page)["edges"] == edges_kept(first) > 0
    screenshot(page, "routes-smollm-prompt")
    moved = move_threshold(page, 20)
    assert edges_kept(moved) < edges_kept(first)
    screenshot(page, "routes-smollm-prompt-threshold")
    clean(page)


@pytest.mark.browser
def test_routes_of_a_photo_on_dinov2_at_112_px(streamlit_server, browser_page):
    page = browser_page
    open_routes(page, streamlit_server, "kind=image&model=dinov2-small&sample=cat&size=112")
    first = note(page)
    patches = tokens_shown(first)[1] - 1  # after CLS: the shorter side's 112 px are 8 rows of 14 px patches
    assert "routes to token 0" in first and patches >= 64 and patches % 8 == 0, first
    assert page.locator(f"{CHART} .layer-above image").count() == 1  # the photo's thumbnail under the input row
    screenshot(page, "routes-dinov2-photo")
    moved = move_threshold(page, 20)
    assert edges_kept(moved) < edges_kept(first)
    screenshot(page, "routes-dinov2-photo-threshold")
    clean(page)
