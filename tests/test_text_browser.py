"""The text explorer in chromium: type a sentence, the heatmap renders, a head switch redraws
it, and a click on a tile of the model overview opens that head. Screenshots go to
test-artifacts/."""
import pytest
from browser import centre, click_until_shown, open_page, screenshot, wait_for_app

SENTENCE = "The cat sat on the mat because it was warm."


HEATMAP = ".st-key-text_heatmap"  # streamlit marks a keyed element with the class st-key-<key>
OVERVIEW = ".st-key-text_overview"


def wait_for_title(page, text: str) -> None:
    page.wait_for_function(f"() => document.querySelector('{HEATMAP} .gtitle')?.textContent.includes('{text}')",
                           timeout=60_000)


@pytest.mark.browser
def test_type_a_sentence_switch_head_open_a_tile(streamlit_server, browser_page):
    page = browser_page
    open_page(page, streamlit_server, "text")
    box = page.get_by_label("Text", exact=True)
    box.fill(SENTENCE)
    box.press("Control+Enter")
    page.get_by_text("13 tokens").first.wait_for(timeout=120_000)  # [CLS], 10 words, ".", [SEP]
    wait_for_app(page)

    chart = page.locator(HEATMAP)
    chart.locator(".heatmaplayer image").wait_for(timeout=60_000)  # plotly drew the heatmap
    # the typed sentence's tokens on the key axis (the chart of the default text may still be
    # on screen for a moment, so wait for them rather than read once)
    page.wait_for_function(
        f"""() => {{
            const ticks = [...document.querySelectorAll('{HEATMAP} .xtick text')].map(t => t.textContent);
            return ['mat', 'warm', '[SEP]'].every(w => ticks.includes(w));
        }}""", timeout=60_000)
    wait_for_title(page, "layer 5 · head 0")

    page.get_by_role("combobox", name="Head", exact=True).click()
    page.get_by_role("option", name="head 3", exact=True).click()
    wait_for_title(page, "layer 5 · head 3")
    assert "head=3" in page.url
    screenshot(page, "text-heatmap-head3")

    page.get_by_role("tab", name="Model overview").click()
    wait_for_app(page)
    overview = page.locator(OVERVIEW)
    overview.locator(".imagelayer image").wait_for(timeout=60_000)  # every head in one picture
    screenshot(page, "text-overview")
    tile = overview.locator(".scatterlayer .point").nth(2 * 12 + 7)  # layer 2, head 7
    opened = page.locator(f"{HEATMAP} .gtitle", has_text="layer 2 · head 7")
    click_until_shown(page, lambda: centre(tile), opened)
    assert page.get_by_role("tab", name="Head heatmap").get_attribute("aria-selected") == "true"
    screenshot(page, "text-opened-tile")
    assert page.locator('[data-testid="stException"]').count() == 0
    assert not page.errors, page.errors
