"""attnviz as an installable package: its pins, its wheel's contents, its console script and
`attnviz app`. The install from scratch in a fresh virtual environment is tests/test_install.py."""
from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_package_pins_match_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["dependencies"] == _requirements()
    assert project["project"]["scripts"] == {"attnviz": "attnviz.cli:main"}
    assert all("==" in r for r in project["build-system"]["requires"])  # the backend is pinned


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
                    str(ROOT), "-w", str(out)], check=True, timeout=600)
    (path,) = out.glob("attnviz-*.whl")
    return path


def test_wheel_ships_the_app_and_the_console_script(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {"attnviz/_app/app.py", "attnviz/_app/.streamlit/config.toml", "attnviz/figures.py"} <= names
    pages = {p.name for p in (ROOT / "pages").glob("*.py")}
    assert {f"attnviz/_app/pages/{p}" for p in pages} <= names
    assert not [n for n in names if n.startswith(("tests/", "bench/")) or "__pycache__" in n]
    assert "attnviz = attnviz.cli:main" in entry_points


def test_app_script_of_a_clone_is_its_app_py():
    from attnviz.cli import app_script

    assert app_script() == ROOT / "app.py"


FIRST_RUNS = """
import importlib, sys, threading
import attnviz.ui
pages = sys.argv[1:]
start, errors = threading.Barrier(len(pages)), []
def first_run(page):  # what app.py does in a session's first run, then the page's own imports
    start.wait()
    try:
        attnviz.ui.import_all()
        importlib.import_module(page)
    except Exception as e:
        errors.append(f"{page}: {type(e).__name__}: {e}")
threads = [threading.Thread(target=first_run, args=(p,)) for p in pages]
[t.start() for t in threads]
[t.join() for t in threads]
print(errors)
sys.exit(1 if errors else 0)
"""


def test_the_first_visitors_of_a_new_server_import_the_pages_at_once():
    """Four sessions' first runs at the same moment, each importing its page's modules, in a
    fresh process four times over: none fails. Without attnviz.ui.import_all, most such
    processes failed with "cannot import name 'euclidean' from partially initialized module
    'scipy.spatial.distance'" (scipy's stats and spatial import each other)."""
    pages = ["attnviz.ui.image", "attnviz.ui.explain", "attnviz.ui.flow", "attnviz.ui.heads"]
    for _ in range(4):
        run = subprocess.run([sys.executable, "-c", FIRST_RUNS, *pages], capture_output=True, text=True, timeout=300,
                             env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
        assert run.returncode == 0, run.stdout + run.stderr[-2000:]
