"""A new user's walk through every page, in chromium against a real server: each test starts a
fresh browser context on the home page, follows the page's link, does one real thing there
and checks what it shows; screenshots go to test-artifacts/walk-*.png.
"""
from __future__ import annotations

import pytest
from browser import screenshot, wait_for_app

from attnviz.ui.home import PAGES

TIMEOUT = 240_000  # ms: a model's first use on a busy 2-core machine


def title_of(path: str) -> str:
    """The title the app's navigation gives the page at ``path``."""
    (title,) = [title for page_path, title, _, _ in PAGES if page_path == path]
    return title


def open_from_home(page, base: str, path: str) -> None:
    """Home page, then the page's link, as a visitor would; wait for it to finish running."""
    title = title_of(path)
    page.goto(base)
    wait_for_app(page, TIMEOUT)
    page.get_by_role("link", name=title).first.click()
    wait_for_app(page, TIMEOUT)


def healthy(page) -> None:
    """No exception box, no error message, no script error in the browser."""
    assert page.locator('[data-testid="stException"]').count() == 0
    errors = page.locator('[data-testid="stAlertContentError"]')
    assert errors.count() == 0, errors.first.inner_text()
    assert not page.errors, page.errors


def settle(page) -> None:
    """Wait for the rerun a widget change started (it may already be done)."""
    page.wait_for_timeout(500)
    wait_for_app(page, TIMEOUT)


@pytest.mark.browser
def test_home(streamlit_server, browser_page):
    page = browser_page
    page.goto(streamlit_server)
    wait_for_app(page, TIMEOUT)
    page.get_by_role("heading", name="attnviz").first.wait_for(timeout=TIMEOUT)
    for _, title, _, _ in PAGES:
        page.get_by_role("link", name=title).first.wait_for(state="visible", timeout=TIMEOUT)
    healthy(page)
    screenshot(page, "walk-1-home")


@pytest.mark.browser
def test_text_page_heatmap_of_a_typed_sentence(streamlit_server, browser_page, minilm):
    sentence = "Seven purple giraffes visited the library on Tuesday."
    n_tokens = len(minilm.tokenizer(sentence)["input_ids"])  # the page's default model
    page = browser_page
    open_from_home(page, streamlit_server, "pages/text.py")
    box = page.locator('textarea[aria-label="Text"]')
    box.wait_for(timeout=TIMEOUT)
    box.fill(sentence)
    box.press("Control+Enter")
    page.get_by_text(f"minilm-l6 · {n_tokens} tokens ·").first.wait_for(timeout=TIMEOUT)
    settle(page)
    chart = page.locator('[data-testid="stPlotlyChart"]').first
    chart.wait_for(timeout=TIMEOUT)
    labels = " ".join(chart.locator(".xtick text, .ytick text").all_text_contents())
    assert "purple" in labels and "tuesday" in labels, labels  # minilm-l6 is uncased
    healthy(page)
    screenshot(page, "walk-2-text")


@pytest.mark.browser
def test_image_page_overlay_of_a_sample_photo(streamlit_server, browser_page):
    from attnviz.samples import DEFAULT_SAMPLE, SAMPLES

    page = browser_page
    open_from_home(page, streamlit_server, "pages/image.py")
    other = next(s for s in SAMPLES if s != DEFAULT_SAMPLE)
    pill = page.get_by_role("radio", name=other, exact=True).first  # st.pills: one radio button each
    pill.wait_for(timeout=TIMEOUT)
    pill.click()
    settle(page)
    page.get_by_text(f"{other}.png").first.wait_for(timeout=TIMEOUT)
    overlay = page.locator('[data-testid="stPlotlyChart"] image, [data-testid="stImage"] img').first
    overlay.wait_for(timeout=TIMEOUT)
    healthy(page)
    screenshot(page, "walk-3-image")


@pytest.mark.browser
def test_flow_page_opens_with_a_view(streamlit_server, browser_page):
    page = browser_page
    open_from_home(page, streamlit_server, "pages/flow.py")
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=TIMEOUT)
    healthy(page)
    screenshot(page, "walk-4-flow")


@pytest.mark.browser
def test_lab_page_one_step_with_new_numbers(streamlit_server, browser_page):
    page = browser_page
    open_from_home(page, streamlit_server, "pages/lab.py")
    page.get_by_text("1. Scores").first.wait_for(timeout=TIMEOUT)
    seed = page.locator('input[aria-label="Seed"]')
    seed.fill("7")
    seed.press("Enter")
    settle(page)
    page.get_by_text("4. Softmax").first.wait_for(timeout=TIMEOUT)
    healthy(page)
    screenshot(page, "walk-5-lab")


@pytest.mark.browser
def test_train_page_a_few_steps(streamlit_server, browser_page):
    page = browser_page
    open_from_home(page, streamlit_server, "pages/train.py")
    steps = page.locator('input[aria-label="Steps"]')
    steps.fill("20")
    steps.press("Enter")
    settle(page)
    page.get_by_role("button", name="Train").first.click()
    page.get_by_text("step 20 of 20").first.wait_for(timeout=TIMEOUT)
    settle(page)
    healthy(page)
    screenshot(page, "walk-6-train")
