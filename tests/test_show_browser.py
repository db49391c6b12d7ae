"""The "Show" control in chromium: the text explorer's four views with ALTI per layer, the
switch to attention × value norm kept in the URL, and an 8,192-token text on smollm2-135m
shown as attention × value norm (lazy: the value norms are one number per key). Screenshots
go to test-artifacts/."""
import re

import pytest
from browser import open_page, screenshot, wait_for_app

HEATMAP = ".st-key-text_heatmap"
LONG = " ".join(f"Sentence {i} tells how the river met the old stone bridge near the hill." for i in range(470))


def shown_views(page, name: str) -> None:
    """Every view of the text explorer drawn without an error, a screenshot of each."""
    for tab, chart in (("Head heatmap", HEATMAP), ("Model overview", ".st-key-text_overview"),
                       ("Token lines", ".st-key-text_lines"), ("Token focus", ".st-key-text_focus_to")):
        page.get_by_role("tab", name=tab).click()
        page.locator(chart).locator(".main-svg").first.wait_for(timeout=300_000)
        wait_for_app(page, timeout_ms=300_000)
        page.locator(chart).scroll_into_view_if_needed()
        screenshot(page, f"show-{name}-{tab.lower().replace(' ', '-')}")
        assert page.locator('[data-testid="stException"]').count() == 0
        assert page.locator('[data-testid="stAlertContentError"]').count() == 0, tab


@pytest.mark.browser
def test_show_control_switches_every_text_view(streamlit_server, browser_page):
    page = browser_page
    page.set_default_timeout(300_000)
    open_page(page, streamlit_server, "text?model=minilm-l6&show=alti", timeout_ms=300_000)
    page.get_by_text("ALTI (per layer): one map per layer").wait_for()
    shown_views(page, "alti")
    page.locator(".st-key-show").click()
    page.get_by_role("option", name="Attention × value norm").click()
    wait_for_app(page, timeout_ms=300_000)
    page.wait_for_function("() => location.search.includes('show=value_norm')")
    shown_views(page, "value-norm")
    assert not page.errors, page.errors


@pytest.mark.browser
def test_an_8192_token_text_as_attention_times_value_norm(streamlit_server, browser_page):
    page = browser_page
    page.set_default_timeout(900_000)
    open_page(page, streamlit_server, "text?model=smollm2-135m&show=value_norm")
    box = page.get_by_label("Text", exact=True)
    box.fill(LONG)
    box.press("Control+Enter")
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid="stCaptionContainer"]')]
                 .some(c => /smollm2-135m · (\\d+) tokens/.test(c.textContent)
                            && +c.textContent.match(/· (\\d+) tokens/)[1] >= 8192)""", timeout=900_000)
    caption = page.get_by_text(re.compile(r"smollm2-135m · [\d,]+ tokens")).first
    n_tokens = int(re.search(r"· (\d+) tokens", caption.text_content()).group(1))
    wait_for_app(page, timeout_ms=900_000)
    chart = page.locator(HEATMAP)
    chart.locator(".heatmaplayer image").wait_for(timeout=900_000)
    assert f"{n_tokens} × {n_tokens} tokens shown as" in chart.text_content()  # block-aggregated
    assert "show=value_norm" in page.url
    chart.scroll_into_view_if_needed()
    screenshot(page, "show-value-norm-8192-tokens")
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    assert not page.errors, page.errors
