"""attnviz installed from the clone with pip into a fresh virtual environment (torch pinned
first, as the README says), then used from a folder outside the clone: the console script
with every subcommand, a model fetch into an empty store, capture, plot (SVG, PDF), report,
and `attnviz app` serving the dashboard from the installed package.

Slow (a few minutes: pip's cache keeps the downloads); `-m "not install"` leaves it out.
"""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
from browser import free_port, stop_server, wait_for_app, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.install
TEXT = "The animal didn't cross the street because it was too tired."


class Installed:
    def __init__(self, venv: Path, work: Path, env: dict):
        self.venv, self.work, self.env = venv, work, env

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        done = subprocess.run([str(self.venv / "bin" / args[0]), *args[1:]], cwd=self.work, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    base = tmp_path_factory.mktemp("install")
    venv, work = base / "venv", base / "elsewhere"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", ATTNVIZ_HOME=str(base / "store"),
               OMP_NUM_THREADS="1")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    for what in (["torch==2.13.0"], [str(ROOT)]):  # torch first and pinned, then attnviz from the clone
        done = subprocess.run(pip + what, cwd=work, env=env, capture_output=True, text=True, timeout=1800)
        assert done.returncode == 0, done.stderr[-3000:]
    return Installed(venv, work, env)


def test_the_installed_package_works_outside_the_clone(installed):
    from attnviz.cli import _parser

    where = installed.run("python", "-c", "import attnviz; print(attnviz.__file__); print(attnviz.__version__)")
    path, version = where.stdout.split()
    assert Path(path).is_relative_to(installed.venv) and version == "0.1.0"

    help_text = installed.run("attnviz", "--help").stdout
    commands = _parser()._subparsers._group_actions[0].choices
    assert all(name in help_text for name in commands), help_text  # every subcommand of python -m attnviz

    fetched = installed.run("attnviz", "models", "fetch", "minilm-l6")
    assert (Path(installed.env["ATTNVIZ_HOME"]) / "models" / "minilm-l6").is_dir(), fetched.stderr
    installed.run("attnviz", "capture", "--model", "minilm-l6", "--text", TEXT, "--out", "r.npz")

    for suffix in ("svg", "pdf"):
        installed.run("attnviz", "plot", "r.npz", "--view", "heatmap", "--layer", "1", "--head", "3",
                      "--out", f"f.{suffix}")
    svg = ET.parse(installed.work / "f.svg").getroot()
    words = " ".join(t for el in svg.iter() for t in [el.text] if t)
    assert "minilm-l6 · layer 1 · head 3" in words and "animal" in words
    assert (installed.work / "f.pdf").read_bytes().startswith(b"%PDF")

    installed.run("attnviz", "report", "r.npz", "--out", "report.html")
    page = (installed.work / "report.html").read_text(encoding="utf-8")
    links = []
    parser = HTMLParser()
    parser.handle_starttag = lambda tag, attrs: links.extend(v for k, v in attrs if k in ("src", "href") and v)
    parser.feed(page)
    assert not [link for link in links if link.lower().startswith(("http:", "https:", "//"))]
    assert "<td class=\"k\">0.1.0</td>" in page  # the installed version in the provenance


@pytest.mark.browser
def test_attnviz_app_serves_the_dashboard_from_the_package(installed, browser_page):
    port = free_port()
    log = open(installed.work / "app.log", "w")
    proc = subprocess.Popen([str(installed.venv / "bin" / "attnviz"), "app", "--port", str(port),
                             "--address", "127.0.0.1"], cwd=installed.work, env=installed.env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url)
        browser_page.goto(url)
        wait_for_app(browser_page)
        browser_page.get_by_text("Bundled models").wait_for(timeout=60_000)
        assert not browser_page.errors, browser_page.errors
    finally:
        left = stop_server(proc)
        log.close()
    served = (installed.work / "app.log").read_text()
    assert "site-packages/attnviz/_app/app.py" in served, served
    assert not left, f"still running after SIGTERM to `attnviz app`: {left}"
