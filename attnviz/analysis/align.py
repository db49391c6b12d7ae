"""Putting two tokenisations of one text on a common axis of words (pure numpy).

Two models with different tokenizers (or two inputs with the same number of words) share no
token positions, but they share the words of the text. A word is a run of non-space
characters. Each token belongs to the word holding its last character (a token's leading
space never decides); special tokens and tokens outside every word belong to none. With
attnviz.analysis.tokens' rule (keys summed, queries averaged within a word, tokens of no word
hidden and rows renormalised), every head's map becomes ``[words, words]``.
"""
from __future__ import annotations

import re

import numpy as np

from attnviz.analysis.tokens import Axis

WORD = re.compile(r"\S+")


def word_spans(text: str) -> list[tuple[int, int]]:
    """``[start, end)`` character ranges of the words of ``text``."""
    return [m.span() for m in WORD.finditer(text)]


def token_words(token_spans: list[tuple[int, int] | None], words: list[tuple[int, int]]) -> np.ndarray:
    """The word of each token (``-1`` for none): the word holding the token's last character.
    ``token_spans``: character ranges, None (or an empty range) for special tokens."""
    starts = np.array([s for s, _ in words], dtype=np.int64)
    ends = np.array([e for _, e in words], dtype=np.int64)
    out = np.full(len(token_spans), -1, dtype=np.int64)
    for i, span in enumerate(token_spans):
        if span is None or span[1] <= span[0]:
            continue
        last = span[1] - 1
        w = int(np.searchsorted(starts, last, side="right")) - 1
        if w >= 0 and last < ends[w]:
            out[i] = w
    return out


def word_axis(owner: np.ndarray, kept: list[int], labels: list[str]) -> Axis:
    """The axis whose units are the words ``kept`` (in order), each made of the tokens whose
    ``owner`` word it is; every other token is hidden. ``labels``: one per kept word."""
    index, starts = [], []
    for w in kept:
        tokens = np.flatnonzero(owner == w)
        if not len(tokens):
            raise ValueError(f"word {w} has no token")
        starts.append(len(index))
        index.extend(tokens.tolist())
    hidden = np.setdiff1d(np.arange(len(owner)), index)
    return Axis(list(labels), np.asarray(index, dtype=np.intp), np.asarray(starts, dtype=np.intp),
                hidden if len(hidden) else None, len(owner))
