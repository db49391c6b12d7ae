"""attnviz as an installable package: its pins, its wheel's contents, its console script and
`attnviz app`. The install from scratch in a fresh virtual environment is tests/test_install.py."""
from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from at_once import at_once

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



def test_the_first_visitors_of_a_new_server_import_the_pages_at_once():
    """Four sessions' first runs at the same moment, each importing its page's modules (what
    app.py does, then the page's own imports), in a fresh process eight times over: none fails.
    Without attnviz.ui.import_all, a third to a half of such processes failed with "cannot import
    name 'euclidean' from partially initialized module 'scipy.spatial.distance'" (scipy's stats
    and spatial import each other), so eight pass by chance less than once in twenty."""
    pages = ["attnviz.ui.image", "attnviz.ui.explain", "attnviz.ui.flow", "attnviz.ui.heads"]
    for _ in range(8):
        assert at_once("import importlib, attnviz.ui", "attnviz.ui.import_all(); importlib.import_module(arg)",
                       pages) == []
