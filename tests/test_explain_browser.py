"""The "Which picture to trust" page in chromium: the scoreboard's bars and the highlighted
text render for the default sentence, and typing another sentence redraws both. Screenshots
go to test-artifacts/."""
import pytest
from browser import screenshot, wait_for_app

BOARD = ".st-key-explain_board"  # streamlit marks a keyed element with the class st-key-<key>
SENTENCE = "A quiet river runs past the old mill."


def highlighted(page, word: str) -> None:
    """Wait until a highlighted paragraph holds ``word`` with a coloured background."""
    page.wait_for_function(
        f"""() => [...document.querySelectorAll('span[title]')]
                  .some(s => s.textContent.trim() === '{word}')""", timeout=120_000)


def open_explain(page, server: str, query: str) -> None:
    """The app's own navigation first, then the page with these query parameters."""
    page.goto(server)
    wait_for_app(page)
    page.goto(f"{server}/explain?{query}")
    wait_for_app(page, timeout_ms=300_000)


@pytest.mark.browser
def test_scoreboard_and_highlighting_render(streamlit_server, browser_page):
    page = browser_page
    open_explain(page, streamlit_server, "model=minilm-l6")
    page.locator(f"{BOARD} .barlayer .point").first.wait_for(timeout=120_000)  # plotly drew the bars
    assert page.locator(f"{BOARD} .barlayer .point").count() >= 5
    highlighted(page, "cabinet")
    screenshot(page, "explain-default")

    box = page.get_by_label("Text", exact=True)
    box.fill(SENTENCE)
    box.press("Control+Enter")
    highlighted(page, "river")
    wait_for_app(page, timeout_ms=240_000)
    page.locator(f"{BOARD} .barlayer .point").first.wait_for(timeout=60_000)
    screenshot(page, "explain-typed")
    assert page.locator('[data-testid="stException"]').count() == 0 and not page.errors, page.errors


@pytest.mark.browser
def test_image_overlays_render(streamlit_server, browser_page):
    page = browser_page
    open_explain(page, streamlit_server, "kind=image&model=dinov2-small&sample=coffee")
    overlays = page.locator(".st-key-explain_overlays")
    overlays.locator(".imagelayer image").first.wait_for(timeout=120_000)
    # one panel per method with scores: the seven, attention_norm, alti and ALTI's routes
    # (GlobEnc does not apply to a pre-norm ViT; value zeroing runs only when asked for)
    assert overlays.locator(".imagelayer image").count() == 10
    page.locator(f"{BOARD} .barlayer .point").first.wait_for(timeout=60_000)
    screenshot(page, "explain-image")
    assert page.locator('[data-testid="stException"]').count() == 0 and not page.errors, page.errors
