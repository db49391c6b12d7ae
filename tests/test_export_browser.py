"""In chromium: the offline report renders with the network blocked, and the text page's
figure and report downloads give real files."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from browser import open_page, screenshot

from attnviz.cli import main

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def reports(minilm, dinov2, photo, tmp_path_factory) -> list[Path]:
    import attnviz

    folder = tmp_path_factory.mktemp("reports")
    out = []
    for name, result in (("text", attnviz.capture(minilm, "The cat sat on the mat because it was tired.")),
                         ("image", attnviz.capture(dinov2, photo))):
        result.save(folder / f"{name}.npz")
        assert main(["report", str(folder / f"{name}.npz"), "--out", str(folder / f"{name}.html")]) == 0
        out.append(folder / f"{name}.html")
    return out


def test_report_renders_with_the_network_blocked(_browser, reports):
    context = _browser.new_context(viewport={"width": 1200, "height": 900})
    blocked: list[str] = []

    def only_files(route):
        url = route.request.url
        if url.startswith(("file:", "data:", "blob:")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    context.route("**/*", only_files)
    try:
        for path in reports:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
            page.goto(path.as_uri())
            expected = path.read_text(encoding="utf-8").count('class="plotly-graph-div"')
            drawn = ("() => [...document.querySelectorAll('.plotly-graph-div')]"
                     ".filter(p => p._fullLayout && p.querySelector('.main-svg')).length")
            page.wait_for_function(f"() => ({drawn})() === {expected}", timeout=60_000)
            assert expected >= 3, (path.name, expected)
            images = page.evaluate("() => [...document.querySelectorAll('img')].map(i => i.complete && i.naturalWidth)")
            assert all(images), images
            assert page.get_by_text("input digest (SHA-256)").count() == 1
            screenshot(page, f"report-{path.stem}")
            assert not errors, errors
            page.close()
    finally:
        context.close()
    assert not blocked, blocked


def test_text_page_downloads_svg_and_the_report(streamlit_server, browser_page):
    page = browser_page
    open_page(page, streamlit_server, "text")
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=180_000)
    page.get_by_role("button", name="Save figure").first.click()
    with page.expect_download(timeout=60_000) as info:
        page.get_by_role("button", name="SVG (vector)").click()
    download = info.value
    assert re.fullmatch(r"minilm-l6_encoder_L\d+_H\w+\.svg", download.suggested_filename), download.suggested_filename
    svg = ET.parse(download.path()).getroot()
    words = " ".join(t for el in svg.iter() for t in [el.text] if t)
    assert "minilm-l6 · layer" in words and "animal" in words
    page.keyboard.press("Escape")
    with page.expect_download(timeout=60_000) as info:
        page.get_by_role("button", name="Report .html").click()
    report = Path(info.value.path()).read_text(encoding="utf-8")
    assert info.value.suggested_filename == "minilm-l6_report.html"
    assert "Per-head statistics (encoder)" in report and 'src="http' not in report
    assert not page.errors, page.errors
