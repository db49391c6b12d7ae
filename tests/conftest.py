"""Shared fixtures: the repository root, the bundled models (fetched once), a real photo."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["browser"]  # streamlit_server and browser_page fixtures


def app_path(name: str = "app.py") -> str:
    """Absolute path of app.py (or a page) for AppTest.from_file."""
    return str(ROOT / name)


@pytest.fixture(scope="session")
def minilm():
    import attnviz

    return attnviz.load_model("minilm-l6")


@pytest.fixture(scope="session")
def smollm():
    import attnviz

    return attnviz.load_model("smollm2-135m")


@pytest.fixture(scope="session")
def t5():
    import attnviz

    return attnviz.load_model("t5-small-titler")


@pytest.fixture(scope="session")
def dinov2():
    import attnviz

    return attnviz.load_model("dinov2-small")


@pytest.fixture(scope="session")
def clip():
    import attnviz

    return attnviz.load_model("clip-vit-b16")


@pytest.fixture(scope="session")
def photo():
    """A real photograph: scikit-image's 'chelsea' (the cat), 451 x 300, RGB."""
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.chelsea())
