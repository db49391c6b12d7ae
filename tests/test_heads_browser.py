"""The head atlas in chromium: the atlas renders, a click on a head opens its map, the
similar-heads and compare tabs draw. Screenshots go to test-artifacts/."""
import pytest
from browser import centre, click_until_shown, open_page, screenshot, wait_for_app

ATLAS = ".st-key-heads_atlas"
OPENED = ".st-key-heads_opened"


@pytest.mark.browser
def test_atlas_click_opens_a_head_then_similar_and_compare(streamlit_server, browser_page):
    page = browser_page
    open_page(page, streamlit_server, "heads?model=minilm-l6")
    atlas = page.locator(ATLAS)
    atlas.locator(".heatmaplayer").wait_for(timeout=120_000)
    page.get_by_text("Click a head to open it.").wait_for(timeout=60_000)
    screenshot(page, "heads-atlas")
    marker = atlas.locator(".scatterlayer .trace").first.locator(".point").nth(3 * 12 + 4)  # layer 3, head 4
    opened = page.locator(f"{OPENED} .gtitle", has_text="layer 3 · head 4")
    click_until_shown(page, lambda: centre(marker), opened)
    page.get_by_text("Layer 3, head 4").first.wait_for()
    screenshot(page, "heads-opened")

    page.get_by_role("tab", name="Similar heads").click()
    wait_for_app(page)
    page.locator(".st-key-heads_clustered .heatmaplayer").wait_for(timeout=120_000)
    screenshot(page, "heads-similar")

    page.get_by_role("tab", name="Compare").click()
    wait_for_app(page)
    page.locator(".st-key-compare_maps .heatmaplayer").first.wait_for(timeout=180_000)
    page.locator(".st-key-compare_per_head .heatmaplayer").wait_for(timeout=60_000)
    screenshot(page, "heads-compare")
    assert page.locator('[data-testid="stException"]').count() == 0
    assert not page.errors, page.errors
