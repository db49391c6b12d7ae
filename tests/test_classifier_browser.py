"""Build your own's classifiers in chromium: a text classifier and the digits ViT train for a few
steps, show their held-out results, are saved, and open in the text and image explorers. The
server gets its own ATTNVIZ_HOME. Screenshots go to test-artifacts/."""
import pytest
from browser import screenshot, serving, wait_for_app

from attnviz.ui.train import KINDS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving({"ATTNVIZ_HOME": str(tmp_path_factory.mktemp("home"))}) as url:
        yield url


def train(page, url: str, kind: str, steps: int) -> None:
    page.goto(url)
    wait_for_app(page)
    page.goto(f"{url}/train")
    wait_for_app(page)
    page.get_by_text(kind, exact=True).click()
    wait_for_app(page)
    key = next(k for k, label in KINDS.items() if label == kind)
    field = page.locator(f".st-key-train_{key}_steps input")  # this form's, not the one it replaces
    field.fill(str(steps))
    field.press("Enter")
    wait_for_app(page)
    page.locator(".st-key-train_cls_start button").click()
    page.locator(".st-key-train_confusion .heatmaplayer").wait_for(timeout=180_000)
    wait_for_app(page)
    page.get_by_text("Held-out accuracy").first.wait_for(timeout=60_000)


def save_and_open(page, button: str) -> None:
    page.locator(".st-key-train_cls_save button").click()
    page.get_by_text("Saved as").wait_for(timeout=120_000)
    wait_for_app(page)
    page.get_by_role("button", name=button).click()
    wait_for_app(page)


@pytest.mark.browser
def test_text_classifier_trains_and_opens_in_the_text_explorer(server, browser_page):
    page = browser_page
    train(page, server, "a text classifier", 30)
    page.get_by_text("Attention on the rationale").wait_for(timeout=60_000)
    assert page.locator("span[title]").count() > 50  # held-out words, shaded by their weight
    screenshot(page, "train-text-classifier")
    save_and_open(page, "Open in the text explorer")
    page.wait_for_url(lambda url: "/text" in url, timeout=120_000)
    chart = page.locator(".st-key-text_heatmap")
    chart.locator(".heatmaplayer image").wait_for(timeout=120_000)
    ticks = [t.replace("\u200b", "") for t in chart.locator(".xtick text").all_text_contents()]
    assert ticks[0] == "[POOL]" and len(ticks) > 8, ticks
    screenshot(page, "text-classifier-in-text-explorer")
    assert page.locator('[data-testid="stException"]').count() == 0
    assert not page.errors, page.errors


@pytest.mark.browser
def test_digits_vit_trains_and_opens_in_the_image_explorer(server, browser_page):
    page = browser_page
    train(page, server, "an image classifier", 20)
    page.get_by_text("rollout").first.wait_for(timeout=60_000)
    screenshot(page, "train-digits-vit")
    save_and_open(page, "Open in the image explorer")
    page.wait_for_url(lambda url: "/image" in url, timeout=120_000)
    page.get_by_text("saw 32 x 32 px: 4 x 4 patches of 8 px").wait_for(timeout=120_000)
    wait_for_app(page)
    screenshot(page, "digits-vit-in-image-explorer")
    assert page.locator('[data-testid="stException"]').count() == 0
    assert not page.errors, page.errors
