"""Head roles: what each head does, as one score per (layer, head), and a label per head.

Every score of a head is a mean over query rows of the weight that row ``i`` of its map
``a[query, key]`` (a softmax row, summing to 1) puts on a set of keys ``S_i``:

- ``previous_token``: S_i = {i - 1}, mean over the queries i >= 1;
- ``self``: S_i = {i}, mean over all queries;
- ``first_token``: S_i = {0}, mean over all queries (the "sink" of most decoders);
- ``special``: S_i = the special keys ([CLS], [SEP], BOS, </s>...), mean over all queries;
- ``delimiter``: S_i = the punctuation keys (see :func:`is_punctuation`), mean over all queries;
- ``induction`` (only on a repeated input, see :func:`repeated_sequence`): for a query in the
  second copy at position ``i = first + period + t``, S_i = {first + t + 1}, the token right after
  the same token's occurrence in the first copy; mean over the ``period`` queries of the second copy;
- ``duplicate_token``: the same queries, S_i = {first + t}, the earlier occurrence itself.

``local``, ``mean_distance`` and ``entropy`` are the statistics of attnviz.analysis.stats
(``local_share``, ``mean_distance``, ``entropy`` in nats), taken from :func:`head_stats`, not
recomputed here. The cross stack (target queries over source keys) shares no positions with
its keys: there ``previous_token``, ``self``, ``induction`` and ``duplicate_token`` are NaN.

Scores are sums over query rows, so a head's map is read in blocks of rows
(:data:`ROW_BLOCK`), one head at a time: a long input never needs a whole stack in float32.
All maps are reached through :func:`map_rows`.

A head's label is its strongest *specific* role (LABEL_ROLES, ties to the first listed) when
that score reaches the threshold; else ``"local"`` when its local share reaches it; else
``"none"``.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Callable

import numpy as np

from attnviz.analysis.stats import head_stats, head_stats_bytes
from attnviz.result import AttentionResult

ROW_BLOCK = 256  # query rows read at once per head
SHARE_ROLES = ("previous_token", "self", "first_token", "special", "delimiter")
REPEAT_ROLES = ("induction", "duplicate_token")
STAT_ROLES = {"local": "local_share", "mean_distance": "mean_distance", "entropy": "entropy"}  # role -> HeadStats field
ROLES = SHARE_ROLES + tuple(STAT_ROLES) + REPEAT_ROLES  # the order of every table and JSON
LABEL_ROLES = ("induction", "duplicate_token", "previous_token", "self", "first_token", "special", "delimiter")
DEFAULT_THRESHOLD = 0.3


def is_punctuation(token: str) -> bool:
    """A delimiter token: after stripping spaces (and the ``Ġ``/``▁``/``##`` marks of
    sub-word vocabularies) it is non-empty and every character is Unicode punctuation
    (categories Pc, Pd, Ps, Pe, Pi, Pf, Po: ``. , ; : ! ? - ( ) " '`` and the like)."""
    text = token.replace("Ġ", "").replace("▁", "").strip()
    if text.startswith("##"):
        text = text[2:]
    return bool(text) and all(unicodedata.category(c).startswith("P") for c in text)


@dataclass(frozen=True)
class Repeat:
    """Where the two copies of a repeated input lie: the first copy is tokens
    ``[first, first + period)``, the second ``[first + period, first + 2 * period)``."""

    first: int
    period: int

    def queries(self) -> np.ndarray:
        """Positions of the second copy's tokens (the induction queries)."""
        return np.arange(self.first + self.period, self.first + 2 * self.period)


@dataclass(frozen=True)
class Keys:
    """What the keys of one map are: boolean masks ``special[key]`` and ``delimiter[key]``,
    whether queries and keys share positions (``aligned``: every stack but cross), and the
    repeated layout when the input is one."""

    special: np.ndarray
    delimiter: np.ndarray
    aligned: bool = True
    repeat: Repeat | None = None


def row_sums(rows: np.ndarray, start: int, keys: Keys) -> dict[str, tuple[float, int]]:
    """The share roles of a block of query rows, as (sum over rows, number of rows) per role.

    ``rows[query, key]`` float32 holds queries ``start .. start + len(rows) - 1`` of one head's
    map. Adding the pairs of every block and dividing gives the scores (:func:`map_roles`).
    """
    n_rows, n_keys = rows.shape
    q = np.arange(start, start + n_rows)
    out = {
        "first_token": (float(rows[:, 0].sum(dtype=np.float64)), n_rows),
        "special": (float(rows[:, keys.special].sum(dtype=np.float64)), n_rows),
        "delimiter": (float(rows[:, keys.delimiter].sum(dtype=np.float64)), n_rows),
    }
    if keys.aligned:
        diag = q < n_keys
        out["self"] = (float(rows[diag, q[diag]].sum(dtype=np.float64)), n_rows)
        prev = (q >= 1) & (q - 1 < n_keys)
        out["previous_token"] = (float(rows[prev, q[prev] - 1].sum(dtype=np.float64)), int((q >= 1).sum()))
        if keys.repeat is not None:
            r = keys.repeat
            second = (q >= r.first + r.period) & (q < r.first + 2 * r.period)
            earlier = q[second] - r.period  # the same token in the first copy
            out["duplicate_token"] = (float(rows[second, earlier].sum(dtype=np.float64)), int(second.sum()))
            out["induction"] = (float(rows[second, earlier + 1].sum(dtype=np.float64)), int(second.sum()))
    return out


def map_roles(attn: np.ndarray, keys: Keys, block: int = ROW_BLOCK) -> dict[str, float]:
    """The share roles of one head's whole map ``attn[query, key]`` (NaN when a role has no
    queries or does not apply), read ``block`` rows at a time."""
    return _scores(row_sums(np.asarray(attn[s:s + block], np.float32), s, keys)
                   for s in range(0, attn.shape[0], block))


def _scores(blocks) -> dict[str, float]:
    total: dict[str, list] = {}
    for sums in blocks:
        for role, (s, n) in sums.items():
            acc = total.setdefault(role, [0.0, 0])
            acc[0] += s
            acc[1] += n
    return {role: total[role][0] / total[role][1] if role in total and total[role][1] else float("nan")
            for role in SHARE_ROLES + REPEAT_ROLES}


def map_rows(result: AttentionResult, stack: str, layer: int, head: int, rows: slice) -> np.ndarray:
    """Rows ``rows`` (a slice or an index array) of one head's map as the stack holds it (float16,
    a small recorded stack materialised once and kept), in float32 ``[queries, keys]``: where
    this module and attnviz.analysis.similarity read attention."""
    return result.attn[stack][layer, head, rows].astype(np.float32)


def stack_keys(result: AttentionResult, stack: str, repeat: Repeat | None = None) -> Keys:
    """The :class:`Keys` of ``result``'s stack ``stack``."""
    tokens = result.key_tokens(stack)
    special = np.asarray(result.key_special(stack), dtype=bool)
    delimiter = np.array([is_punctuation(t) for t in tokens], dtype=bool) & ~special
    return Keys(special=special, delimiter=delimiter, aligned=stack != "cross",
                repeat=repeat if stack != "cross" else None)


@dataclass
class HeadRoles:
    """Role scores of one stack: ``scores[role]`` is ``[layers, heads]`` (see the module
    docstring); ``repeat`` says whether induction and duplicate_token were measured."""

    stack: str
    scores: dict[str, np.ndarray]

    @property
    def shape(self) -> tuple[int, int]:
        return next(iter(self.scores.values())).shape

    def labels(self, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
        """``[layers, heads]`` strings: the strongest of LABEL_ROLES present when it reaches
        ``threshold`` (ties to the first listed), else "local" when the local share reaches
        it, else "none"."""
        names = [r for r in LABEL_ROLES if r in self.scores]
        values = np.nan_to_num(np.stack([self.scores[r] for r in names]), nan=-1.0)  # [roles, layers, heads]
        best = values.argmax(0)
        out = np.array(names, dtype=object)[best]
        out[values.max(0) < threshold] = "none"
        if "local" in self.scores:
            local = np.nan_to_num(self.scores["local"], nan=-1.0) >= threshold
            out[(out == "none") & local] = "local"
        return out

    def to_json(self) -> dict:
        """``{role: [[score per head] per layer]}``, NaN written as None."""
        return {role: [[None if np.isnan(v) else float(v) for v in row] for row in values]
                for role, values in self.scores.items()}


def share_roles(result: AttentionResult, stack: str, *, repeat: Repeat | None = None,
                block: int = ROW_BLOCK, progress: Callable[[float], None] | None = None) -> dict[str, np.ndarray]:
    """The roles measured here (SHARE_ROLES, and REPEAT_ROLES with ``repeat``), each
    ``[layers, heads]``, reading each head's map ``block`` query rows at a time;
    ``progress(fraction)`` after each layer."""
    if stack not in result.attn:
        raise ValueError(f"{result.model} has no {stack!r} stack; it has {result.stacks}")
    n_layers, n_heads, n_q, _ = result.shape(stack)
    keys = stack_keys(result, stack, repeat)
    names = SHARE_ROLES + (REPEAT_ROLES if repeat is not None else ())
    scores = {name: np.full((n_layers, n_heads), np.nan) for name in names}
    for layer in range(n_layers):
        for head in range(n_heads):
            blocks = (row_sums(map_rows(result, stack, layer, head, slice(s, s + block)), s, keys)
                      for s in range(0, n_q, block))
            for name, value in _scores(blocks).items():
                if name in scores:
                    scores[name][layer, head] = value
        if progress is not None:
            progress((layer + 1) / n_layers)
    return scores


def head_roles(result: AttentionResult, stack: str, *, repeat: Repeat | None = None,
               window: int = 2, block: int = ROW_BLOCK, progress: Callable[[float], None] | None = None) -> HeadRoles:
    """Every role score of every head of ``result``'s stack ``stack`` (see the module
    docstring); with ``repeat`` (the layout of a :func:`repeated_sequence` input) also
    induction and duplicate_token. ``window``: the local window of the ``local`` score.
    ``progress(fraction)``: after each layer of each of the two reads of the stack (the
    share roles, then the statistics)."""
    half = None if progress is None else (lambda start: lambda f: progress(start + f / 2))
    scores = share_roles(result, stack, repeat=repeat, block=block, progress=half and half(0.0))
    stats = head_stats(result, stack, window=window, progress=half and half(0.5))
    ordered = {name: scores[name] for name in SHARE_ROLES}
    ordered.update({role: getattr(stats, field) for role, field in STAT_ROLES.items()})
    ordered.update({name: scores[name] for name in REPEAT_ROLES if name in scores})
    return HeadRoles(stack=stack, scores=ordered)


def head_roles_bytes(n_queries: int, n_keys: int, block: int = ROW_BLOCK) -> int:
    """Working memory of :func:`head_roles` on a stack of ``n_queries`` x ``n_keys``, bytes:
    the larger of its two reads (a few float32 blocks of ``block`` rows; the statistics',
    attnviz.analysis.stats.head_stats_bytes). Reading the rows themselves is not counted."""
    return max(4 * 4 * min(block, n_queries) * n_keys, head_stats_bytes(n_queries, n_keys))


def all_roles(result: AttentionResult, *, repeat: Repeat | None = None, window: int = 2) -> dict[str, HeadRoles]:
    """:func:`head_roles` of every stack of ``result``, by stack name."""
    return {stack: head_roles(result, stack, repeat=repeat, window=window) for stack in result.stacks}


def repeated_sequence(vocab_size: int, exclude, period: int, *, prefix=(), suffix=(),
                      seed: int = 0) -> tuple[list[int], Repeat]:
    """The induction input: ``period`` distinct token ids drawn at random (numpy's default
    generator with ``seed``) from ``0 .. vocab_size - 1`` without the ids in ``exclude`` (the
    special tokens), written twice, between the ``prefix`` (BOS, [CLS]: what the tokenizer puts
    in front of a text) and the ``suffix`` ([SEP]) ids. Returns (ids, where the copies lie).

    Distinct ids make the earlier occurrence of every token of the second copy unique."""
    if period < 1:
        raise ValueError("the repeated sequence needs at least one token")
    allowed = np.setdiff1d(np.arange(vocab_size), np.asarray(list(exclude), dtype=np.int64))
    if period > len(allowed):
        raise ValueError(f"the vocabulary has only {len(allowed)} ordinary tokens; asked for {period} distinct ones")
    chosen = np.random.default_rng(seed).choice(allowed, size=period, replace=False).tolist()
    prefix, suffix = [int(i) for i in prefix], [int(i) for i in suffix]
    return prefix + chosen + chosen + suffix, Repeat(first=len(prefix), period=period)
