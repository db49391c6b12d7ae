"""From attention over model tokens to attention over what is shown on screen.

An :class:`Axis` says how the tokens of one axis of ``attn[..., query, key]`` become the rows
(queries) or the columns (keys) on screen. Each row or column is a *unit*: one token, one
word (sub-word tokens merged), or one block of consecutive units (long texts). Special tokens
may be hidden. :func:`reduce` applies two axes to an attention array.

The rule, one for words and blocks alike, keeps every row a distribution over the keys:

- keys are **summed** within a unit: the weight a query puts on a word is the total it puts
  on the word's pieces;
- queries are **averaged** within a unit: a word's row is the mean of its pieces' rows;
- hidden keys are dropped and every row is **renormalised** to sum to 1 over the keys left
  (over all visible keys, also when only a window of them is shown); hidden queries are
  dropped. A row that put all its weight on hidden keys stays 0.

All functions are pure numpy. Arrays keep their leading axes (layers, heads): only the last
two, ``[query, key]``, are changed. The overview applies the same rule to a whole layer's rows
as they are computed, never holding them (attnviz.result.AttentionResult.layer_cells, with
each axis's units given per token by :attr:`Axis.token_units`).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Axis:
    """How original tokens become units along one axis.

    labels: one display label per unit.
    index: the original token indices used, in order; unit ``u`` is
        ``index[starts[u]:starts[u + 1]]`` (consecutive entries).
    starts: where each unit begins in ``index``.
    hidden: the original indices of hidden tokens; on a key axis, rows are renormalised over
        the other keys. None when nothing is hidden (no renormalisation).
    n_tokens: the number of original tokens on this axis.
    """

    labels: list[str]
    index: np.ndarray
    starts: np.ndarray
    hidden: np.ndarray | None
    n_tokens: int

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sizes(self) -> np.ndarray:
        """Tokens per unit."""
        return np.diff(np.append(self.starts, len(self.index)))

    @property
    def spans(self) -> list[tuple[int, int]]:
        """The original token range ``[first, last + 1)`` each unit covers."""
        return _unit_spans(self.index, self.starts)

    @property
    def token_units(self) -> np.ndarray:
        """int ``[n_tokens]``: the unit each original token belongs to, -1 for a token in none
        (hidden, or outside a window)."""
        units = np.full(self.n_tokens, -1, dtype=np.intp)
        units[self.index] = np.repeat(np.arange(len(self)), self.sizes)
        return units

    @property
    def is_identity(self) -> bool:
        """One unit per original token, none hidden."""
        return len(self) == self.n_tokens and self.hidden is None

    def window(self, start: int, stop: int) -> "Axis":
        """Units ``[start, stop)`` only (a zoom window); renormalisation still over all visible keys."""
        start, stop = max(0, start), min(len(self), stop)
        lo = int(self.starts[start])
        hi = int(self.starts[stop]) if stop < len(self) else len(self.index)
        return Axis(self.labels[start:stop], self.index[lo:hi], self.starts[start:stop] - lo,
                    self.hidden, self.n_tokens)

    def blocks(self, max_units: int) -> "Axis":
        """Group consecutive units into at most ``max_units`` blocks of equal size (the last may
        be shorter). Returns the axis itself when it is short enough. Block labels give the
        original token range, ``#first–last``."""
        if len(self) <= max_units:
            return self
        size = block_size(len(self), max_units)
        starts = self.starts[::size]
        labels = [f"#{a}–{b - 1}" for a, b in _unit_spans(self.index, starts)]
        return Axis(labels, self.index, starts, self.hidden, self.n_tokens)

    def unit_of(self, token: int) -> int:
        """The unit holding original token ``token`` (or the nearest unit after it when hidden)."""
        pos = int(np.searchsorted(self.index, token))
        return int(np.searchsorted(self.starts, min(pos, len(self.index) - 1), side="right") - 1)


def last_content_unit(axis: Axis, special: list[bool]) -> int:
    """The unit holding the last token that is not special (as a rule the end of the text)."""
    content = np.flatnonzero(~np.asarray(special, dtype=bool))
    return axis.unit_of(int(content[-1])) if len(content) else len(axis) - 1


def _unit_spans(index: np.ndarray, starts: np.ndarray) -> list[tuple[int, int]]:
    ends = np.append(starts[1:], len(index)) - 1
    return [(int(index[s]), int(index[e]) + 1) for s, e in zip(starts, ends)]


def block_size(n: int, max_units: int) -> int:
    """Units per block so that ``n`` units make at most ``max_units`` blocks."""
    return max(1, math.ceil(n / max_units))


def display_label(token: str) -> str:
    """A token as it reads on screen: outer spaces stripped, line breaks as ⏎, tabs as ⇥,
    a bare space as ␣."""
    text = token.replace("\r\n", "\n").replace("\n", "⏎").replace("\t", "⇥").strip()
    return text or "␣"


def word_label(pieces: list[str]) -> str:
    """The word made by sub-word pieces: WordPiece's ``##`` continuation marks removed."""
    return display_label(pieces[0] + "".join(p[2:] if p.startswith("##") else p for p in pieces[1:]))


def unique_labels(labels: list[str]) -> list[str]:
    """Labels made distinct (plotly merges equal category names) by appending zero-width
    spaces to repeats; they read the same."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        k = seen.get(label, 0)
        seen[label] = k + 1
        out.append(label + "\u200b" * k)
    return out


def token_axis(tokens: list[str], special: list[bool], word_spans: list[tuple[int, int]] | None,
               *, merge: bool = False, hide_special: bool = False) -> Axis:
    """The axis for ``tokens``: one unit per token, or per word when ``merge`` (using
    ``word_spans``, ``[start, end)`` token ranges), without the special tokens when
    ``hide_special``. Falls back to one unit per token when no word spans are known."""
    n = len(tokens)
    special = np.asarray(special, dtype=bool)
    visible = np.flatnonzero(~special) if hide_special else np.arange(n)
    if hide_special and len(visible) == 0:  # nothing but special tokens: keep them all
        visible = np.arange(n)
    spans = list(word_spans) if merge and word_spans else [(i, i + 1) for i in range(n)]
    is_visible = np.zeros(n, dtype=bool)
    is_visible[visible] = True
    shown = is_visible.tolist()  # Python bools: read per token below, faster than numpy scalars
    labels, index, starts = [], [], []
    for s, e in spans:
        kept = [i for i in range(s, e) if shown[i]]
        if kept:
            starts.append(len(index))
            index.extend(kept)
            labels.append(word_label([tokens[i] for i in kept]))
    hidden = np.flatnonzero(~is_visible) if len(visible) < n else None
    return Axis(labels, np.asarray(index, dtype=np.intp), np.asarray(starts, dtype=np.intp), hidden, n)


def reduce(attn: np.ndarray, queries: Axis, keys: Axis) -> np.ndarray:
    """``attn[..., query, key]`` over original tokens -> float32 ``[..., Q, K]`` over units.

    Hidden keys are dropped and rows renormalised over the other keys; keys are summed and
    queries averaged within each unit (see the module docstring). Sums run in float32 straight
    from the float16 input, without a float32 copy of it.
    """
    a = np.asarray(attn)[..., _take(queries.index), :]
    m = np.add.reduceat(a[..., _take(keys.index)], keys.starts, axis=-1, dtype=np.float32)
    if keys.hidden is not None:
        mass = kept_mass(a, keys.hidden)
        m /= np.where(mass > 0, mass, 1.0)[..., None]
    if len(queries.starts) != len(queries.index):
        m = np.add.reduceat(m, queries.starts, axis=-2) / queries.sizes[:, None].astype(np.float32)
    return m


def kept_mass(attn: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """float32 ``[...]``: each row's weight on the keys not ``hidden``, summed over those keys
    (the runs of keys between hidden ones, read in place), not as the row's total less the
    hidden keys' weight: a row with almost all its weight on hidden keys keeps its digits."""
    n = attn.shape[-1]
    edges = np.unique(np.concatenate([[0], hidden, np.asarray(hidden) + 1]))
    edges = edges[edges < n]  # every hidden key is a run of its own
    runs = np.add.reduceat(attn, edges, axis=-1, dtype=np.float32)
    return runs[..., ~np.isin(edges, hidden)].sum(axis=-1)


Rows = Callable[[np.ndarray], np.ndarray]  # token indices -> float32 [..., len(indices), keys]
STREAM_TOKENS = 1024  # query tokens read at once by reduce_stream


def reduce_stream(rows: Rows, queries: Axis, keys: Axis, block_tokens: int = STREAM_TOKENS) -> np.ndarray:
    """:func:`reduce` of an attention array that is read a block of query units at a time:
    ``rows(token_indices)`` returns the full rows ``[..., len(indices), keys]`` of those query
    tokens (from attnviz.result.AttentionResult.attention, say). Never holds more than about
    ``block_tokens`` rows; the result is the same as reducing the whole array."""
    ends = np.append(queries.starts[1:], len(queries.index))
    first_unit = 0
    out = []
    while first_unit < len(queries):
        last = int(np.searchsorted(ends, queries.starts[first_unit] + block_tokens, side="right"))
        last = max(last, first_unit + 1)
        part = queries.window(first_unit, last)
        local = Axis(part.labels, np.arange(len(part.index)), part.starts, None, len(part.index))
        out.append(reduce(rows(part.index), local, keys))
        first_unit = last
    return np.concatenate(out, axis=-2)


def _take(index: np.ndarray) -> slice | np.ndarray:
    """A slice (a view, no copy) when ``index`` is a run of consecutive integers."""
    if len(index) and int(index[-1]) - int(index[0]) + 1 == len(index):
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def scale_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its own maximum (the colour range "0..row max"); zero rows stay 0."""
    top = matrix.max(axis=-1, keepdims=True)
    return matrix / np.where(top > 0, top, 1.0)


def top_share(weights: np.ndarray, share: float) -> np.ndarray:
    """Boolean mask of the strongest entries of each row whose weights, taken in decreasing
    order, first reach ``share`` of the row's total (exBERT's "top 70%"). ``share >= 1`` keeps
    every non-zero entry. ``weights[..., k]``; the mask has the same shape."""
    order = np.argsort(-weights, axis=-1, kind="stable")
    ranked = np.take_along_axis(weights, order, axis=-1)
    total = ranked.sum(axis=-1, keepdims=True)
    before = np.cumsum(ranked, axis=-1) - ranked  # mass of the stronger entries
    keep_ranked = (before < share * total) & (ranked > 0)
    mask = np.zeros_like(keep_ranked)
    np.put_along_axis(mask, order, keep_ranked, axis=-1)
    return mask
