"""Shared fixtures: the repository root, the bundled models (fetched once), a real photo, and
tiny random checkpoints that the app lists like any model (for UI tests that need no real weights)."""
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


# label -> architecture of tests/arch_zoo.py: a BERT encoder, a GPT-2 decoder and a ViT, each
# 2 layers x 4 heads, hidden size 32, random weights (tokenizers: the bundled models'). The app
# caches a capture by the model's label, so no other test may give another checkpoint these labels.
TINY_MODELS = {"test-bert": "bert", "test-gpt2": "gpt2", "test-vit": "vit"}


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory) -> dict[str, Path]:
    """The tiny checkpoints saved as model folders (config, safetensors, tokenizer or image
    processor), built once per test session: {label: folder}."""
    import arch_zoo

    root = tmp_path_factory.mktemp("tiny-models")
    tokenizers: dict = {}
    return {label: arch_zoo.save(arch_zoo.BY_NAME[arch], root / label, tokenizers)
            for label, arch in TINY_MODELS.items()}


@pytest.fixture
def tiny_models(tiny_folders, monkeypatch) -> dict[str, Path]:
    """The tiny checkpoints offered by the app as the operator's models (ATTNVIZ_MODELS), so
    that an AppTest selects them by label (``model="test-bert"``) like any other model."""
    from attnviz import limits

    monkeypatch.setenv(limits.OPERATOR_MODELS_ENV, ",".join(f"{label}={folder}" for label, folder in tiny_folders.items()))
    return tiny_folders
