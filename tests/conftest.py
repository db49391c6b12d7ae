"""Shared fixtures: the repository root, the bundled models (fetched once), a real photo."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["browser"]  # streamlit_server and browser_page fixtures


def app_path(name: str = "app.py") -> str:
    """Absolute path of app.py (or a page) for AppTest.from_file."""
    return str(ROOT / name)


def bundled(name: str):
    """A session fixture: the bundled model ``name``, loaded once (fetched on first use)."""
    @pytest.fixture(scope="session")
    def load():
        import attnviz

        return attnviz.load_model(name)
    return load


minilm = bundled("minilm-l6")
smollm = bundled("smollm2-135m")
t5 = bundled("t5-small-titler")
dinov2 = bundled("dinov2-small")
clip = bundled("clip-vit-b16")


@pytest.fixture(scope="session")
def photo():
    """A real photograph: scikit-image's 'chelsea' (the cat), 451 x 300, RGB."""
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.chelsea())
