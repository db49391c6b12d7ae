"""`make run` serves the app: /_stcore/health answers and the home page renders in chromium."""
import os
import signal
import subprocess

import pytest
from browser import ARTIFACTS, ROOT, free_port, screenshot, serving, wait_for_app, wait_healthy


@pytest.fixture(scope="module")
def make_run_server():
    """The README's `make run`, on a free port (the set-up steps are already done by `make test`)."""
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "make-run.log", "w")
    proc = subprocess.Popen(["make", "run", f"PORT={port}"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


@pytest.mark.browser
def test_make_run_serves_the_home_page(make_run_server, browser_page):
    browser_page.goto(make_run_server)
    wait_for_app(browser_page)
    browser_page.get_by_role("heading", name="attnviz").first.wait_for(timeout=60_000)
    browser_page.get_by_text("minilm-l6", exact=True).first.wait_for(state="visible", timeout=60_000)
    assert browser_page.locator('[data-testid="stException"]').count() == 0
    screenshot(browser_page, "home")
    assert not browser_page.errors, browser_page.errors


@pytest.mark.browser
def test_a_deep_link_on_a_fresh_server_runs_inside_the_app(browser_page):
    """The first request a server gets is a shareable link to a page: it must still run
    inside app.py's navigation (page titles, wide layout), not Streamlit's legacy pages/ mode."""
    with serving() as url:
        browser_page.goto(f"{url}/lab")
        wait_for_app(browser_page)
        browser_page.get_by_role("heading", name="Mechanics lab").first.wait_for(timeout=60_000)
        nav = browser_page.locator('[data-testid="stSidebarNav"]')
        nav.get_by_text("Text explorer").wait_for(timeout=30_000)
        assert nav.get_by_text("train", exact=True).count() == 0, "legacy pages/ titles shown"
        screenshot(browser_page, "deep-link-lab")


@pytest.mark.browser
def test_no_page_makes_the_browser_ask_another_host(streamlit_server, browser_page):
    """Every page, loaded to the end of its first run: no request leaves for a host other than
    the app's server, and the favicon (which Chromium fetches outside Playwright's sight) is
    served by the app itself too."""
    from urllib.parse import urlsplit

    from attnviz.ui.home import PAGES

    local = urlsplit(streamlit_server).netloc
    outside = []
    browser_page.on("request", lambda r: outside.append(r.url) if urlsplit(r.url).scheme in ("http", "https", "ws", "wss")
                    and urlsplit(r.url).netloc != local else None)
    for path in ["pages/home.py"] + [p for p, *_ in PAGES]:
        slug = "" if path == "pages/home.py" else path.split("/")[-1].removesuffix(".py")
        browser_page.goto(f"{streamlit_server}/{slug}")
        wait_for_app(browser_page)
        icon = browser_page.locator("link[rel='shortcut icon']").get_attribute("href")
        where = urlsplit(browser_page.evaluate("h => new URL(h, document.baseURI).href", icon))
        assert where.scheme == "data" or where.netloc == local, (slug, icon)
        assert not outside, (slug, outside)
    assert browser_page.locator('[data-testid="stException"]').count() == 0
