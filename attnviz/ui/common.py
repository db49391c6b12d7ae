"""Small Streamlit helpers every page uses: remembered choices, URL state, error display."""
from __future__ import annotations

import functools
import logging
import re
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import streamlit as st
from PIL import Image

import attnviz.limits as limits
from attnviz.errors import AttnvizError

log = logging.getLogger("attnviz")


@functools.cache
def favicon() -> Image.Image:
    """The app's icon, 32 x 32 px: a causal 4 x 4 attention map (each row a query, its weights
    over the keys it sees, darker for more). Given to ``st.set_page_config`` as an image, the
    app serves it itself; a Material icon name would make every visitor's browser fetch it
    from a font host."""
    weights = np.tril(np.ones((4, 4)))
    weights /= weights.sum(axis=1, keepdims=True)
    icon = np.zeros((32, 32, 4), np.uint8)  # transparent, then a 7 px tile per (query, key) seen
    for (query, key), w in np.ndenumerate(weights):
        if w:
            icon[1 + 8 * query: 8 + 8 * query, 1 + 8 * key: 8 + 8 * key] = (int(220 - 200 * w), int(235 - 150 * w), 255, 255)
    return Image.fromarray(icon, "RGBA")


def remember(key: str, default):
    """The value stored under ``key`` in the session (set to ``default`` the first time).

    Plain session keys, unlike widget keys, survive a switch to another page and back.
    """
    if key not in st.session_state:
        st.session_state[key] = default
    return st.session_state[key]


def url_int(name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter, clamped to [low, high]; ``default`` when absent or bad."""
    try:
        value = int(st.query_params.get(name, default))
    except (TypeError, ValueError):
        value = default
    return min(max(value, low), high)


def url_choice(name: str, options: list[str], default: str) -> str:
    """A query parameter that must be one of ``options``."""
    value = st.query_params.get(name, default)
    return value if value in options else default


_SERVER_PATH = re.compile(r"(?<![\w:/.])/(?:[^\s/'\"():,;]+/)+[^\s/'\"():,;]*")  # /a/b..., not a URL's //


def for_visitor(message: str) -> str:
    """``message`` as a visitor may see it: on a hosted server (ATTNVIZ_HOSTED) any absolute
    path in it, such as one a library put in its own error, becomes "…". The backend names
    models by their labels already; this is the net under it."""
    return _SERVER_PATH.sub("…", message) if limits.hosted() else message


PROGRESS_AFTER_S = 1.0  # work that may be quick shows its bar once it has run this long


@contextmanager
def progress_bar(text: str, *, after: float = 0.0) -> Iterator[Callable[..., None]]:
    """The one progress bar of the app, for the ``with`` block, gone when the block ends (on
    an error too). Yields ``update(fraction, message=None)``: the share of the work done
    (clamped to [0, 1]); the bar reads ``message``, or ``text`` and the percentage. The
    callbacks of the backend (a capture's, a model fetch's, a head loop's) take it as it is.
    With ``after`` (seconds) the bar appears only once the block has run that long, so quick
    work shows none (PROGRESS_AFTER_S for what is usually quick)."""
    slot = st.empty()
    started = time.perf_counter()
    shown = False

    def update(fraction: float, message: str | None = None) -> None:
        nonlocal shown
        if not shown and time.perf_counter() - started < after:
            return
        shown = True
        fraction = min(max(float(fraction), 0.0), 1.0)
        slot.progress(fraction, text=message or f"{text} {fraction:.0%}")

    if after <= 0:
        update(0.0, text)
    try:
        yield update
    finally:
        slot.empty()


@contextmanager
def friendly_errors():
    """Show bad input as a clear message and any other failure as a short note, never a
    traceback; the page below the block keeps working. AttnvizError is the user's to fix;
    anything else is logged with its traceback on the server."""
    try:
        yield
    except AttnvizError as e:
        st.error(for_visitor(str(e)))
        st.stop()
    except MemoryError:
        st.error("That input needs more memory than this server has: try a shorter text or a smaller image.")
        st.stop()
    except Exception as e:  # a bug: log it in full, show one line
        log.exception("unexpected error")
        st.error(f"Something went wrong ({type(e).__name__}). The details are in the server log.")
        st.stop()


def in_app_frame() -> None:
    """Make sure the page runs inside app.py's navigation; call it first on every page.

    Streamlit (1.67) serves a server's first request in its legacy ``pages/`` mode until some
    session has run ``st.navigation``: a deep link such as ``/image`` opened first then runs
    the page file alone, without app.py (no page config, legacy sidebar titles). This leaves
    that mode and reruns, so that app.py routes to the same page. A server meets that mode
    once; AppTest re-enters it on every run, and there the flag is only cleared (a rerun
    would drop the clicks the test just made).
    """
    from streamlit.runtime.pages_manager import PagesManager

    global _left_legacy_mode
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        if not _left_legacy_mode:
            _left_legacy_mode = True
            st.rerun()


_left_legacy_mode = False  # whether this process has already rerun out of the legacy mode
