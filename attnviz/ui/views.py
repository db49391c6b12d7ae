"""The shape of a page: what it captured (:class:`Captured`, with its input: a
:class:`TextRequest` or a :class:`Photo`), the views it offers
(:class:`View`, one ``draw(captured)`` each, listed in a ``VIEWS`` tuple of its ui module), and
the one view switcher every page uses (:func:`show_views`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Callable

import streamlit as st
from PIL import Image

from attnviz.result import AttentionResult
from attnviz.ui import keys
from attnviz.ui.common import friendly_errors
from attnviz.viz import image as image_viz
from attnviz.viz.text import TextOptions


@dataclass(frozen=True)
class TextRequest:
    """What to run the model on: ``text`` (the source for encoder-decoders), an optional second
    segment ``pair`` (encoders), ``target`` (encoder-decoders; generated when None) and the
    number of tokens to ``generate`` (decoders). ``notes``: what was done to the input."""

    text: str
    pair: str | None = None
    target: str | None = None
    generate: int = 0
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Photo:
    """An opened photo: ``image`` upright RGB (at most MAX_IMAGE_SIDE px a side), ``display``
    the same at most viz.image.DISPLAY_SIDE px a side, ``data`` the bytes it came from, ``notes``
    what was done to it (downscaled, first frame of an animation...)."""

    name: str
    data: bytes
    image: Image.Image
    display: Image.Image
    sha: str
    notes: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, name: str, data: bytes, image: Image.Image, notes: list[str] | None = None) -> Photo:
        """The photo ``image`` (opened from ``data``), with its display copy and digest."""
        display = image.resize(image_viz.fit_size(image.size, image_viz.DISPLAY_SIDE), Image.Resampling.LANCZOS)
        return cls(name, data, image, display, hashlib.sha256(data).hexdigest(), notes or [])


@dataclass(frozen=True)
class Captured:
    """What a page captured, as its views read it.

    ``kind``: "text" or "image". ``result``: the AttentionResult (its ``model`` is the name the
    model was picked by, so views can load it again). ``stack``: the attention stack shown
    ("encoder", "decoder", "cross"; a windowed model's stage is already picked into "encoder").
    Text: ``request``, what the model ran on, and ``options``, the text page's view options
    (merge sub-words, hide special tokens, colour range; the defaults elsewhere). Images:
    ``photo`` as uploaded or chosen, ``size`` the shorter side it was captured at (px, 0 for a
    vision-language model) and ``stage`` of a windowed model (None otherwise). ``key`` (set from
    the result's content digest) names the result in the views' caches.
    """

    kind: str
    result: AttentionResult
    stack: str
    request: TextRequest | None = None
    options: TextOptions = TextOptions()
    photo: Photo | None = None
    size: int | None = None
    stage: str | None = None
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", self.result.digest)

    def with_options(self, options: TextOptions) -> Captured:
        """The same capture with the text page's view ``options``."""
        return replace(self, options=options)

    @property
    def notes(self) -> tuple[str, ...]:
        """What was done to the input (the text's or the photo's notes)."""
        return tuple(self.request.notes if self.request else ()) + tuple(self.photo.notes if self.photo else ())


def show_notes(captured: Captured) -> None:
    """The one way a page shows what its capture says: the input's notes (what was done to the
    text or the photo) as information, then the result's warnings (what the model or the
    capture could not do as asked) as warnings."""
    for note in captured.notes:
        st.info(note)
    for warning in captured.result.warnings:
        st.warning(warning)


@dataclass(frozen=True)
class View:
    """One view of a page: ``key`` its name in the URL (``?view=key``), ``label`` its tab,
    ``draw`` draws it from a capture (its own controls included), and ``applies`` says whether
    it can show this capture (e.g. the CLS views of an image model without a CLS token)."""

    key: str
    label: str
    draw: Callable[[Captured], None]
    applies: Callable[[Captured], bool] = lambda captured: True


def show_views(views: tuple[View, ...], captured: Captured, *, key: str, param: str = keys.VIEW) -> None:
    """The views that apply to ``captured`` as tabs (widget ``key``); only the open one runs,
    as a fragment, so that moving its controls reruns the view alone, never the capture. A
    single view is drawn without tabs.

    The open view is written to the URL as ``?{param}={view.key}``; a URL naming a view by its
    key or its label opens it (links made when the URL held the label keep working), and so
    does a URL changed from outside while the page is open. Without one, the view shown last
    on this page opens again.
    """
    shown = [v for v in views if v.applies(captured)]
    if len(shown) == 1:
        _draw(shown[0], captured)
        return
    named = {v.key: v for v in shown} | {v.label: v for v in shown}
    labels = [v.label for v in shown]
    last = f"_{key}_url"  # the value this switcher last wrote to the URL
    asked = st.query_params.get(param)
    if asked in named and asked != st.session_state.get(last):  # a link, or the URL changed from outside
        st.session_state[key] = named[asked].label
    elif st.session_state.get(key) not in labels:
        st.session_state[key] = named.get(st.session_state.get(last), shown[0]).label
    for tab, view in zip(st.tabs(labels, key=key, on_change="rerun"), shown):
        if tab.open:
            st.query_params[param] = st.session_state[last] = view.key
            with tab:
                _draw(view, captured)


@st.fragment
def _draw(view: View, captured: Captured) -> None:
    with friendly_errors():
        view.draw(captured)
