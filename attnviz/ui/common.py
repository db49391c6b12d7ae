"""Small Streamlit helpers every page uses: remembered choices, URL state, error display, the
progress bar, and the one way a page runs a heavy computation (:func:`job`)."""
from __future__ import annotations

import functools
import hashlib
import logging
import re
import time
from contextlib import contextmanager
from typing import Callable, Hashable, Iterator, TypeVar

import numpy as np
import streamlit as st
from PIL import Image

import attnviz.jobs as jobs
import attnviz.limits as limits
from attnviz.cache import ByteCache
from attnviz.errors import AttnvizError
from attnviz.ui.visitor import visitor

log = logging.getLogger("attnviz")
V = TypeVar("V")


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


CANCELLED = "_jobs_cancelled"  # session state: the keys of the requests this session cancelled


def _tag(key: Hashable) -> str:
    """A request's key as a short string for widget keys."""
    return hashlib.sha256(repr(key).encode("utf-8", "surrogatepass")).hexdigest()[:20]


def take_cancelled(key: Hashable) -> bool:
    """Whether this session cancelled the request ``key`` (see :func:`job`), forgetting it: for
    a caller that handles Cancel itself (training stops as with its Stop button)."""
    cancelled = st.session_state.setdefault(CANCELLED, set())
    tag = _tag(key)
    found = tag in cancelled
    cancelled.discard(tag)
    return found


@contextmanager
def job(what: str, nbytes: int, *, key: Hashable) -> Iterator[Callable[..., None]]:
    """Run the block as a job of this session's visitor (attnviz.jobs; ``nbytes``: what it
    will need), and yield the progress bar's
    ``update`` for the backend's ``progress`` callback. While the job waits, its place in line
    and an estimate are shown; while it runs, a spinner (for work that reports no progress,
    such as generation) and the progress bar; once it has waited or run for PROGRESS_AFTER_S,
    a Cancel button.
    ``key`` names the request (its cache key): a cancelled request shows "cancelled" and a
    "Run again" button on the page's next runs instead of running again. The job is also
    ended when the page reruns while it waits or runs (Streamlit stops the run at its next
    message), as a capture always was. The progress callback is a checkpoint of the job
    (attnviz.jobs): the backend calls it between steps, where it holds nothing shared but the
    model's gate. Inside another job, the block is part of that one."""
    if jobs.current() is not None:  # inside another job (its declared bytes cover this): part of it
        yield lambda fraction, text=None: jobs.checkpoint()
        return
    key = _tag(key)
    cancelled = st.session_state.setdefault(CANCELLED, set())
    if key in cancelled:
        st.info(f"{what}: cancelled.")
        if st.button("Run again", key=f"_again_{key}"):
            cancelled.discard(key)
            st.rerun()
        st.stop()
    outer = st.empty()
    box = outer.container()
    message = box.empty()
    started = time.perf_counter()
    button: list = []

    def offer_cancel() -> None:
        if not button and time.perf_counter() - started >= PROGRESS_AFTER_S:
            button.append(box.button("Cancel", key=f"_cancel_{key}", on_click=cancelled.add, args=(key,),
                                     help="Stop this computation; the page keeps what it showed before."))

    def on_wait(status: jobs.Status) -> None:
        message.info(status.text(), icon="⏳")
        offer_cancel()

    try:
        with jobs.SCHEDULER.job(visitor(), what, nbytes, on_wait=on_wait):
            message.empty()
            with box, st.spinner(f"{what}…"), progress_bar(f"{what}…", after=PROGRESS_AFTER_S) as update:
                def progress(fraction: float, text: str | None = None) -> None:
                    message.empty()  # a pause between steps is over
                    update(fraction, text)
                    offer_cancel()
                    jobs.checkpoint(fraction)

                yield progress
    finally:
        outer.empty()


def cached_job(cache: ByteCache[V], key: Hashable, what: str, nbytes: int,
               compute: Callable[[Callable[..., None]], V]) -> V:
    """``cache``'s value of ``key``; when missing, ``compute(progress)`` run as a job of this
    visitor (:func:`job`, admitted for ``nbytes``) and kept. A session asking for a value that
    another session is computing waits for that one, and says so: the job runs inside the
    cache's computation, never the other way round, so no job waits for another's value while
    it holds a worker."""
    def run() -> V:
        with job(what, nbytes, key=key) as progress:
            return compute(progress)

    notice = st.empty()
    try:
        return cache.get(key, run, waiting=lambda: notice.info(
            f"{what}: the same is being computed for another tab or visitor; it shows here when done.", icon="⏳"))
    finally:
        notice.empty()


def for_this_visitor(make: Callable[[], V]) -> Callable[[], V]:
    """``make`` for a download built when clicked: Streamlit calls it on a thread of its own,
    outside the page, where it runs as this session's visitor (its jobs take the visitor's
    turns and quota; the browser shows the download waiting, the page cannot)."""
    who = visitor()

    def run() -> V:
        with jobs.acting_for(who):
            return make()
    return run


@contextmanager
def friendly_errors():
    """Show bad input as a clear message and any other failure as a short note, never a
    traceback; the page below the block keeps working. AttnvizError is the user's to fix;
    anything else is logged with its traceback on the server. Jobs the backend starts within
    the block (attnviz.jobs.within) are this session's visitor's."""
    try:
        with jobs.acting_for(visitor()):
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
