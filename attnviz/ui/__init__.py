"""Streamlit building blocks that the pages compose. The only package below pages/ that
imports Streamlit."""
from __future__ import annotations

import importlib
import pkgutil
import threading

LAZY_IMPORTS = ("captum.attr", "pyarrow.parquet", "pyarrow.compute")  # imported inside functions the pages call
_importing = threading.Lock()


def import_all() -> None:
    """Import every module of this package (so every page's backend: torch, transformers,
    scipy, plotly) and LAZY_IMPORTS, one thread at a time; app.py calls it before anything else.

    Streamlit starts each session's first run in a thread of its own, so the first visitors of
    a new server import the pages' modules at the same moment; Python's per-module import locks
    then hand a thread a module another thread is still making when their imports cross (scipy's
    stats and spatial import each other): "ImportError: cannot import name 'euclidean' from
    partially initialized module 'scipy.spatial.distance'", and both pages failed. Here the
    first run imports, and the others wait for it."""
    with _importing:
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")
        for name in LAZY_IMPORTS:
            importlib.import_module(name)
