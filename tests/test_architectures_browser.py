"""In chromium: a tiny vision-language checkpoint (Idefics3-style, tiled) and a tiny Swin, each
opened in the image explorer through the model picker's folder option, with a screenshot."""
import sys
from pathlib import Path

import pytest
from browser import screenshot, wait_for_app

sys.path.insert(0, str(Path(__file__).parent))
import arch_zoo  # noqa: E402


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return arch_zoo.page_folders(tmp_path_factory.mktemp("browser-zoo"), "idefics3")


def open_own_model(page, server: str, folder: Path) -> None:
    """The image explorer, the model picker's "your own model…", the folder typed in."""
    page.set_viewport_size({"width": 1400, "height": 1500})
    page.goto(f"{server}/image")
    wait_for_app(page)
    page.get_by_role("combobox", name="Model", exact=True).click()
    page.get_by_role("option", name="your own model…").click()
    box = page.get_by_role("textbox", name="Folder or hub id")
    box.fill(str(folder))
    box.press("Enter")
    wait_for_app(page)


def finish(page, shot: str) -> None:
    """No exception and no error on the page, then the screenshot."""
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    screenshot(page, shot)
    assert not page.errors, page.errors


@pytest.mark.browser
def test_a_vision_language_folder_shows_text_tokens_over_the_photo(streamlit_server, browser_page, folders):
    page = browser_page
    open_own_model(page, streamlit_server, folders["idefics3"])
    page.get_by_text("as 20 image tokens (tiles 4 x 4 + global 2 x 2)").wait_for(timeout=180_000)
    page.locator(".st-key-image_vlm_overlay .nsewdrag").wait_for(timeout=60_000)
    page.locator(".st-key-image_vlm_text .heatmaplayer").wait_for(timeout=60_000)
    prompt = page.get_by_role("textbox", name="Prompt")
    prompt.fill("Where is the cat?")
    prompt.press("Enter")
    wait_for_app(page)
    page.get_by_text("Attention of").first.wait_for(timeout=60_000)
    assert "tiny-idefics3" in page.url
    finish(page, "image-vision-language")


@pytest.mark.browser
def test_a_swin_folder_shows_each_stage_on_the_photo(streamlit_server, browser_page, folders):
    page = browser_page
    open_own_model(page, streamlit_server, folders["swin"])
    page.get_by_text("tiny-swin stage1 saw").wait_for(timeout=180_000)
    page.get_by_text("no prefix token").first.wait_for()
    page.locator(".st-key-image_patch .nsewdrag").wait_for(timeout=60_000)
    page.get_by_text("stage2 · 28 x 36").click()  # 4 px patches of 224 x 288 px, merged 2 x 2
    page.get_by_text("tiny-swin stage2 saw").wait_for(timeout=60_000)
    wait_for_app(page)
    finish(page, "image-swin-stage2")
