"""`streamlit run app.py` answers on /_stcore/health and the home page renders in chromium."""
import pytest

from browser import screenshot, wait_for_app


@pytest.mark.browser
def test_home_page_renders_in_chromium(streamlit_server, browser_page):
    browser_page.goto(streamlit_server)
    wait_for_app(browser_page)
    browser_page.get_by_role("heading", name="attnviz").first.wait_for(timeout=60_000)
    assert browser_page.get_by_text("minilm-l6").first.is_visible()
    assert browser_page.locator('[data-testid="stException"]').count() == 0
    screenshot(browser_page, "home")
    assert not browser_page.errors, browser_page.errors
