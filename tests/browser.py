"""Fixtures for browser tests: a real `streamlit run app.py` server and a Playwright page
in Debian's chromium. conftest.py loads this module as a plugin, so every test can ask for
the ``streamlit_server`` and ``browser_page`` fixtures; import the helpers
(``wait_for_app``, ``screenshot``, ``stop_server``) with ``from browser import ...``.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200 and r.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"streamlit did not answer on {url}/_stcore/health within {timeout:.0f} s")


def _stat(pid: int) -> tuple[str, int] | None:
    """A process's state letter and parent id, from /proc/PID/stat (None once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, parent = stat[stat.rindex(")") + 2:].split()[:2]  # after "pid (command) "
    return state, int(parent)


def descendants(pid: int) -> set[int]:
    """The processes below ``pid`` now: its children, theirs, and so on (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))):
            children.setdefault(stat[1], []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def running(pids) -> list[int]:
    """Those of ``pids`` still running (a zombie, dead but not yet reaped, is not)."""
    return [pid for pid in pids if (stat := _stat(pid)) and stat[0] not in "ZX"]


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def stop_server(proc: subprocess.Popen, timeout: float = 20.0) -> list[str]:
    """Stop ``proc`` as a process manager would (SIGTERM) and wait for it and for every process
    that was below it. Returns the command lines of those still running ``timeout`` seconds
    later; they are killed then, so that no test leaves a server behind."""
    below = descendants(proc.pid)
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        below.add(proc.pid)
    deadline = time.monotonic() + timeout
    while running(below) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = running(below)
    survivors = [command_line(pid) for pid in left]
    for pid in left:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait()
    return survivors


def start_server(port: int, extra_env: dict | None = None) -> subprocess.Popen:
    """`streamlit run app.py` on 127.0.0.1:port, headless, usage stats off; output to a log."""
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / f"streamlit-{port}.log", "w")
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port),
           "--browser.gatherUsageStats", "false"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(extra_env or {})})


@contextmanager
def serving(extra_env: dict | None = None):
    """A fresh `streamlit run app.py` on a free port for the ``with`` block; yields its URL."""
    port = free_port()
    proc = start_server(port, extra_env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url)
        yield url
    finally:
        stop_server(proc)


@pytest.fixture(scope="session")
def streamlit_server():
    """Base URL of a streamlit server running app.py for the whole test session."""
    with serving() as url:
        yield url


@pytest.fixture(scope="session")
def _browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def browser_page(_browser):
    """A fresh page (own context) at 1400 x 1000; console errors are collected in page.errors."""
    context = _browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    yield page
    context.close()


SCRIPT_DONE = '[data-testid="stApp"][data-test-script-state="notRunning"]'  # a run has ended, none runs
NO_STATUS_WIDGET = "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"  # no 'Running...'


def wait_for_app(page, timeout_ms: int = 120_000) -> None:
    """Wait until the app has run its script to the end at least once and is not running now.

    Streamlit marks its root with ``data-test-script-state``: ``initial`` until a first run
    starts, then ``running`` / ``notRunning`` (and ``rerunRequested``). Waiting for the root
    alone, or for the 'Running...' widget to be absent, passes before the first run has drawn
    anything below the title (that raced in CI)."""
    page.wait_for_selector(SCRIPT_DONE, timeout=timeout_ms)
    page.wait_for_function(NO_STATUS_WIDGET, timeout=timeout_ms)


def open_page(page, server: str, path: str, timeout_ms: int = 120_000) -> None:
    """Open the app at ``server`` and wait for its first run (its own navigation registers the
    pages), then ``path`` (a page and its URL query, e.g. ``text?model=minilm-l6``) and wait for
    that page's run (``timeout_ms``: a page that captures a long input at once needs more)."""
    page.goto(server)
    wait_for_app(page)
    page.goto(f"{server}/{path}")
    wait_for_app(page, timeout_ms)


def click_until_shown(page, where, shown, tries: int = 4, timeout_ms: int = 20_000) -> None:
    """Click the point ``where()`` gives (page x, y) until the locator ``shown`` appears.

    Plotly may still be redrawing a figure when its first click lands (the click is then lost),
    so a click on a chart point is retried; ``where`` is called again each time because the
    chart may have moved."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(tries):
        x, y = where()
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.up()
        try:
            shown.wait_for(timeout=timeout_ms)
            return
        except PlaywrightTimeout:
            if attempt == tries - 1:
                raise


def centre(locator) -> tuple[float, float]:
    """The page coordinates of a locator's centre, scrolled into the viewport first (a mouse
    event outside the viewport lands nowhere)."""
    locator.wait_for()
    locator.scroll_into_view_if_needed()
    box = locator.bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
