"""The lab and "Build your own" in chromium: the lab draws its steps with formulas; a model trains
for a few steps (live curve), stops on Stop, is saved, and opens in the text explorer, whose
heatmap shows its attention. The server gets its own ATTNVIZ_HOME, so saved models stay out of
the real cache. Screenshots go to test-artifacts/."""
import time
import zipfile

import pytest
from browser import screenshot, serving, wait_for_app


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A streamlit server whose models are saved under a temporary ATTNVIZ_HOME."""
    with serving({"ATTNVIZ_HOME": str(tmp_path_factory.mktemp("home"))}) as url:
        yield url


def open_page(page, url: str, path: str) -> None:
    page.goto(url)  # the app's own navigation first, then the page by its URL
    wait_for_app(page)
    page.goto(f"{url}/{path}")
    wait_for_app(page)


def status_text(page) -> str:
    return page.get_by_text("global attention, 2 × 4 heads").first.text_content()


@pytest.mark.browser
def test_lab_draws_the_steps(server, browser_page):
    page = browser_page
    open_page(page, server, "lab")
    page.locator(".st-key-lab_step_softmax .heatmaplayer").wait_for(timeout=120_000)
    assert page.locator(".katex").count() >= 5  # a formula beside each step
    page.get_by_text("local window", exact=True).click()
    wait_for_app(page)
    page.get_by_text("Each query keeps the keys at most 1 positions away").wait_for(timeout=120_000)
    screenshot(page, "lab-steps")
    assert page.locator('[data-testid="stException"]').count() == 0
    assert not page.errors, page.errors


@pytest.mark.browser
def test_train_stop_save_and_open_in_the_text_explorer(server, browser_page):
    page = browser_page
    open_page(page, server, "train")
    steps = page.locator(".st-key-train_steps input")
    steps.fill("5000")
    steps.press("Enter")
    wait_for_app(page)
    page.locator(".st-key-train_start button").click()
    page.locator('[class*="st-key-train_chart_"] .scatterlayer').first.wait_for(timeout=120_000)  # live curve
    time.sleep(1.5)
    page.locator(".st-key-train_stop button").click()  # not the header's Stop
    page.get_by_text("held-out accuracy").first.wait_for(timeout=120_000)
    wait_for_app(page)
    stopped = status_text(page)
    assert "of 5000" not in stopped, stopped  # Stop lowered the target to the steps done
    time.sleep(1.0)
    assert status_text(page) == stopped  # and nothing trains any more
    screenshot(page, "train-stopped")

    page.locator(".st-key-train_save button").click()
    page.get_by_text("Saved as").wait_for(timeout=120_000)
    wait_for_app(page)
    page.locator(".st-key-train_grid .heatmaplayer").first.wait_for(timeout=120_000)
    screenshot(page, "train-saved")
    page.get_by_role("button", name="Open in the text explorer").click()
    page.wait_for_url(lambda url: "/text" in url, timeout=120_000)
    wait_for_app(page)
    chart = page.locator(".st-key-text_heatmap")
    chart.locator(".heatmaplayer image").wait_for(timeout=120_000)
    ticks = chart.locator(".xtick text").all_text_contents()
    digits = [t.replace("\u200b", "") for t in ticks]  # repeated labels carry zero-width spaces
    assert len(digits) == 12 and all(d in "0123456789" and d for d in digits), ticks
    assert "model=saved%3Areverse-global-2x4" in page.url  # the saved model, by its label (never its path)
    screenshot(page, "train-in-text-explorer")
    assert page.locator('[data-testid="stException"]').count() == 0
    assert not page.errors, page.errors


@pytest.mark.browser
def test_upload_a_model_zip(server, browser_page, tmp_path):
    from attnviz.lab.custom import CustomConfig, CustomNet, save

    folder = save(CustomNet(CustomConfig(task="sort", length=6, d_model=16, n_heads=2, n_layers=1)), tmp_path / "tiny")
    good, bad = tmp_path / "tiny.zip", tmp_path / "pickled.zip"
    with zipfile.ZipFile(good, "w") as z:
        for f in folder.iterdir():
            z.write(f, f"tiny/{f.name}")
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("pytorch_model.bin", b"\x80\x04 a pickle")
    page = browser_page
    for upload in (bad, good):  # a fresh session for each: the uploader keeps what it was given
        open_page(page, server, "train")
        page.get_by_text("Upload a model (zip or files)").click()
        page.locator('.st-key-train_upload input[type="file"]').set_input_files(str(upload))
        if upload == bad:
            page.get_by_text("pickle weights are refused").wait_for(timeout=120_000)
            screenshot(page, "train-upload-refused")
    page.get_by_text("Unpacked a custom model").wait_for(timeout=120_000)
    wait_for_app(page)
    page.locator(".st-key-train_grid .heatmaplayer").first.wait_for(timeout=120_000)  # inspected at once
    screenshot(page, "train-upload")
    assert page.locator('[data-testid="stException"]').count() == 0
    assert not page.errors, page.errors
