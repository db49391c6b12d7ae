"""The figures of the text explorer: head heatmap (with zoom), model overview, token lines and
token focus. Each builder takes an AttentionResult and what is selected, and returns the
figure for exactly what is on screen plus a function that writes the CSV of its numbers (a
:class:`Matrix`), called only when the CSV is downloaded.

Every view shares :class:`TextOptions`: merge sub-word tokens into words, hide special tokens
(rows renormalised over the rest), and the colour range (0..1, or each row 0..its maximum).
How tokens become rows and columns is attnviz.analysis.tokens; heads are fused (mean, max,
min) after that, so a fused row is fused from the heads' rows as shown.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

from attnviz.analysis.flow import fuse_stream
from attnviz.analysis.tokens import Axis, block_size, reduce, reduce_stream, scale_rows, token_axis, top_share, unique_labels
from attnviz.result import AttentionResult
from attnviz.viz.heatmap import heatmap, plotly_text, title_layout
from attnviz.viz.tiles import tile_px, tiles_figure

HEATMAP_MAX = 256  # units per axis above which the head heatmap is block-aggregated
ZOOM = 96  # units per axis of the full-resolution zoom window
FOCUS_MAX = 512  # token columns of the token focus heatmaps before block aggregation
LINES_MAX = 64  # tokens per column of the token lines view (a window of longer texts)
OPACITY_BINS = 6  # token lines are drawn in this many opacity steps per head
CSV_MAX_CELLS = 2 ** 22  # cells of a full-resolution CSV (2048 x 2048); above, the CSV has the shown blocks
HEAD_COLOURS = qualitative.D3 + qualitative.Dark24
Head = int | str  # a head index, or "mean" / "max" / "min" of all heads
Csv = Callable[[], str]  # writes a view's CSV when called (on a download click)


@dataclass(frozen=True)
class TextOptions:
    """merge: sub-word tokens merged into words (keys summed, queries averaged);
    hide_special: special tokens dropped, rows renormalised over the other keys;
    row_max: colour each row from 0 to its own maximum instead of 0 to 1."""

    merge: bool = False
    hide_special: bool = False
    row_max: bool = True


@dataclass
class Matrix:
    """The numbers a view shows, for CSV: ``values[row, col]``, each row named by one or more
    label cells (``row_header`` names them), each column by a label."""

    values: np.ndarray
    rows: list[tuple]
    cols: list[str]
    row_header: tuple[str, ...] = ("query",)

    def csv(self) -> str:
        """Comma-separated: a header (row_header + column labels), then one row per row."""
        out = io.StringIO()
        out.write(",".join(csv_cell(c) for c in [*self.row_header, *self.cols]) + "\n")
        for label, row in zip(self.rows, np.asarray(self.values, dtype=np.float32)):
            out.write(",".join([*(csv_cell(c) for c in label), *(f"{v:.6g}" for v in row)]) + "\n")
        return out.getvalue()


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads a text cell starting so as a formula


def csv_cell(value) -> str:
    """One CSV cell, as every CSV attnviz writes has it: a number as it is; a text (a token, a
    label) made inert for spreadsheets, a leading apostrophe before a first character of
    FORMULA_STARTS (so "=HYPERLINK(...)" typed into the text stays text), and quoted when it
    holds a comma, a quote or a line break. Zero-width spaces (the views' label padding) go."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return str(value)
    text = str(value).replace("\u200b", "")
    if text.startswith(FORMULA_STARTS):
        text = "'" + text
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n\r') else text


def _unit_rows(axis: Axis) -> list[tuple]:
    """CSV row labels of an axis: (first token index, label)."""
    return [(s, label) for (s, _), label in zip(axis.spans, axis.labels)]


def axes(result: AttentionResult, stack: str, options: TextOptions) -> tuple[Axis, Axis]:
    """The (query, key) axes of ``stack`` under ``options``."""
    q = token_axis(result.query_tokens(stack), result.query_special(stack), result.query_word_spans(stack),
                   merge=options.merge, hide_special=options.hide_special)
    k = token_axis(result.key_tokens(stack), result.key_special(stack), result.key_word_spans(stack),
                   merge=options.merge, hide_special=options.hide_special)
    return q, k


def head_values(result: AttentionResult, stack: str, layer: int, head: Head, queries: Axis, keys: Axis) -> np.ndarray:
    """``[Q, K]`` float32 attention of one head of ``layer`` over the units of ``queries`` and
    ``keys``; for ``head`` "mean", "max" or "min", every head is reduced the same way and
    the results fused (so hiding and merging apply to each head's own rows first). Each head
    is read a block of query rows at a time (attnviz.analysis.tokens.reduce_stream)."""
    def one(h: int) -> np.ndarray:
        return reduce_stream(lambda rows: result.attention(layer, h, stack, rows), queries, keys)

    if isinstance(head, (int, np.integer)):
        return one(int(head))
    n_heads = result.attn[stack].shape[1]
    return fuse_stream((one(h) for h in range(n_heads)), head).astype(np.float32)


def head_columns(result: AttentionResult, stack: str, layer: int, head: Head, queries: Axis, key: Axis) -> np.ndarray:
    """``[Q, 1]`` float32: the weight each query unit gives the one key unit of ``key`` (a
    window of one unit), as :func:`head_values` would give it, computed from the key's columns
    (and those of the hidden keys) without reading whole rows."""
    hidden = key.hidden if key.hidden is not None else np.zeros(0, dtype=np.intp)
    picked = np.concatenate([key.index, hidden])
    local = Axis(key.labels, np.arange(len(key.index)), key.starts,
                 np.arange(len(key.index), len(picked)) if key.hidden is not None else None, len(picked) + 1)

    def one(h: int) -> np.ndarray:
        cols = result.attention_columns(layer, h, stack, picked)  # [queries, picked]
        rest = np.maximum(1.0 - cols.sum(-1, keepdims=True), 0.0)  # every other key: rows sum to 1
        return reduce(np.concatenate([cols, rest], axis=-1), queries, local)

    if isinstance(head, (int, np.integer)):
        return one(int(head))
    return fuse_stream((one(h) for h in range(result.attn[stack].shape[1])), head).astype(np.float32)


def head_name(head: Head) -> str:
    """"head 3", or for a fusion of all heads "mean of all heads"."""
    return f"head {head}" if isinstance(head, (int, np.integer)) else f"{head} of all heads"


def colour(values: np.ndarray, options: TextOptions) -> tuple[np.ndarray, np.ndarray | None]:
    """(colour values, exact weights for the hover or None when they are the same)."""
    return (scale_rows(values), values) if options.row_max else (values, None)


def _aggregation_note(unit: str, *pairs: tuple[Axis, Axis]) -> str:
    """Says how (full axis, shown axis) pairs were block-aggregated; "" when none was."""
    if all(len(full) == len(shown) for full, shown in pairs):
        return ""
    sizes = " × ".join(str(len(full)) for full, _ in pairs)
    blocks = " × ".join(str(len(shown)) for _, shown in pairs)
    each = " × ".join(str(block_size(len(full), len(shown))) for full, shown in pairs)
    return f"{sizes} {unit} shown as {blocks} blocks of {each} (keys summed, queries averaged)"


def _title(result: AttentionResult, stack: str, what: str) -> str:
    stack_part = f" · {stack}" if len(result.stacks) > 1 else ""
    return f"{result.model}{stack_part} · {what}"


def unit_word(options: TextOptions) -> str:
    return "words" if options.merge else "tokens"


# -- 1. head heatmap -------------------------------------------------------------------------
def head_heatmap(result: AttentionResult, stack: str, layer: int, head: Head, options: TextOptions,
                 zoom: tuple[int, int] | None = None) -> tuple[go.Figure, Csv]:
    """The heatmap of one head (or fused heads): full resolution up to HEATMAP_MAX units per
    axis, block-aggregated above (said in the subtitle). With ``zoom = (first query unit,
    first key unit)`` it shows instead the ZOOM x ZOOM window from there at full resolution.

    The CSV is the whole matrix at full resolution, whatever is on screen, up to
    CSV_MAX_CELLS cells; above, it has the blocks of the (unzoomed) heatmap.
    """
    q, k = axes(result, stack, options)
    what = f"layer {layer} · {head_name(head)}"
    if zoom is None:
        q_shown, k_shown = q.blocks(HEATMAP_MAX), k.blocks(HEATMAP_MAX)
        note = _aggregation_note(unit_word(options), (q, q_shown), (k, k_shown))
        note += "; zoom in below for full resolution" if note else ""
    else:
        q_shown, k_shown = q.window(zoom[0], zoom[0] + ZOOM), k.window(zoom[1], zoom[1] + ZOOM)
        s_q, s_k = q_shown.spans, k_shown.spans
        note = (f"zoom, full resolution: query {unit_word(options)} {zoom[0]}–{zoom[0] + len(q_shown) - 1}, "
                f"key {unit_word(options)} {zoom[1]}–{zoom[1] + len(k_shown) - 1} "
                f"(tokens #{s_q[0][0]}–{s_q[-1][1] - 1} × #{s_k[0][0]}–{s_k[-1][1] - 1})")
    values, weights = colour(head_values(result, stack, layer, head, q_shown, k_shown), options)
    rows, cols = ("target", "source") if stack == "cross" else ("query", "key")
    fig = heatmap(values, unique_labels(q_shown.labels), unique_labels(k_shown.labels), weights=weights,
                  title=_title(result, stack, what), note=note, row_title=rows, col_title=cols,
                  colorbar_title="weight / row max" if options.row_max else "weight")
    if len(q) * len(k) > CSV_MAX_CELLS:
        q, k = q.blocks(HEATMAP_MAX), k.blocks(HEATMAP_MAX)
    return fig, lambda: Matrix(head_values(result, stack, layer, head, q, k), _unit_rows(q), k.labels,
                               row_header=("token #", rows)).csv()


# -- 2. model overview -----------------------------------------------------------------------
@dataclass
class Thumbnails:
    """Every head of a stack block-aggregated for the overview: ``values[layer, head, Q, K]``
    (weights, keys summed and queries averaged per block) over the block axes ``queries`` and
    ``keys``; ``note`` says how tokens were grouped."""

    values: np.ndarray
    queries: Axis
    keys: Axis
    note: str


def thumbnails(result: AttentionResult, stack: str, options: TextOptions,
               progress: Callable[[float], None] | None = None) -> Thumbnails:
    """The overview's data: each head downsampled to at most 64 x 64 blocks (fewer when there
    are many heads, see attnviz.viz.tiles.tile_px), as :func:`reduce` gives them. Reads the
    whole stack once, the heads of a layer together, each row block reduced to the blocks as
    it is computed (AttentionResult.layer_cells): the slow part of the overview on long
    texts; ``progress(fraction)`` is called after each layer."""
    n_layers, n_heads = result.attn[stack].shape[:2]
    q, k = axes(result, stack, options)
    side = tile_px(n_layers * n_heads, max(len(q), len(k)))
    q_b, k_b = q.blocks(side), k.blocks(side)
    values = np.zeros((n_layers, n_heads, len(q_b), len(k_b)), dtype=np.float32)
    query_units, key_units = q_b.token_units, k_b.token_units
    for layer in range(n_layers):
        values[layer] = result.layer_cells(layer, stack, query_units, key_units, k_b.hidden)
        if progress is not None:
            progress((layer + 1) / n_layers)
    return Thumbnails(values, q_b, k_b, _aggregation_note(unit_word(options), (q, q_b), (k, k_b)))


def overview(result: AttentionResult, stack: str, thumbs: Thumbnails, options: TextOptions,
             selected: tuple[int, int] | None = None) -> tuple[go.Figure, Csv]:
    """Every layer x head of ``stack`` as a thumbnail in one image (layers down, heads across),
    from :func:`thumbnails`; the ``selected`` (layer, head) is outlined. The CSV lists every
    thumbnail's values."""
    n_layers, n_heads = thumbs.values.shape[:2]
    shown = scale_rows(thumbs.values) if options.row_max else thumbs.values
    note = "; ".join([thumbs.note] * bool(thumbs.note) + ["click a tile to open it in the head heatmap"])
    fig = tiles_figure(shown, title=_title(result, stack, f"all {n_layers} layers × {n_heads} heads"),
                       note=note, selected=selected)
    rows = [(layer, head, label) for layer in range(n_layers) for head in range(n_heads)
            for label in thumbs.queries.labels]
    return fig, Matrix(thumbs.values.reshape(-1, len(thumbs.keys)), rows, thumbs.keys.labels,
                       row_header=("layer", "head", "query")).csv


# -- 3. token lines --------------------------------------------------------------------------
def token_lines(result: AttentionResult, stack: str, layer: int, heads: list[int], options: TextOptions, *,
                share: float = 0.7, token: int | None = None, direction: str = "out",
                starts: tuple[int, int] = (0, 0)) -> tuple[go.Figure, Csv]:
    """BertViz's head view: queries in a left column, keys in a right one, a line per
    (query, key) pair coloured by head, opacity by weight (or weight / row max).

    share: per row (query) only the strongest lines that together reach this share of the
        row's weight are drawn (exBERT's "top 70%").
    token: a query unit (``direction="out"``: what it attends to) or a key unit
        (``direction="in"``: what attends to it) whose lines alone are drawn; None for all.
    starts: the first (query, key) unit shown when an axis has more than LINES_MAX units;
        weights to keys outside the window are not drawn.
    The CSV lists the lines drawn: one row per line with head, query, key, weight.
    """
    q, k = axes(result, stack, options)
    q_w, k_w = q.window(starts[0], starts[0] + LINES_MAX), k.window(starts[1], starts[1] + LINES_MAX)
    weights = np.stack([head_values(result, stack, layer, h, q_w, k_w) for h in heads])  # [heads, Q, K]
    strength = scale_rows(weights) if options.row_max else weights
    keep = top_share(weights, share)
    if token is not None:
        pick = np.zeros_like(keep)
        if direction == "out" and starts[0] <= token < starts[0] + len(q_w):
            pick[:, token - starts[0], :] = True
        elif direction == "in" and starts[1] <= token < starts[1] + len(k_w):
            pick[:, :, token - starts[1]] = True
        keep &= pick
    fig = go.Figure()
    for hi, head in enumerate(heads):
        colour_ = HEAD_COLOURS[head % len(HEAD_COLOURS)]
        qi, ki = np.nonzero(keep[hi])
        level = np.minimum((strength[hi, qi, ki] * OPACITY_BINS).astype(int), OPACITY_BINS - 1)
        for b in range(OPACITY_BINS):
            sel = level == b
            x = np.tile(np.array([0.0, 1.0, np.nan], np.float32), int(sel.sum()))  # NaN breaks the line
            y = np.stack([-qi[sel], -ki[sel], np.full(int(sel.sum()), np.nan)], axis=1).ravel().astype(np.float32)
            fig.add_trace(go.Scatter(
                x=x, y=y, mode="lines", line=dict(color=colour_, width=2), opacity=(b + 1) / OPACITY_BINS,
                hoverinfo="skip", legendgroup=f"head{head}", name=f"head {head}", showlegend=b == OPACITY_BINS - 1,
                meta={"head": head, "bin": b}))
    for x, axis, start, anchor, side in ((0.0, q_w, starts[0], "middle left", "out"),
                                         (1.0, k_w, starts[1], "middle right", "in")):
        idx = np.arange(len(axis))
        spans = axis.spans
        highlight = token is not None and direction == side
        fig.add_trace(go.Scatter(
            x=np.full(len(axis), x), y=-idx, mode="markers+text", text=plotly_text(axis.labels),
            textposition=anchor,
            marker=dict(size=6, color=["#d62728" if highlight and start + i == token else "#555" for i in idx]),
            customdata=np.array([[start + i, s, e - 1] for i, (s, e) in enumerate(spans)]),
            hovertemplate="%{text} · unit %{customdata[0]} "
                          "(tokens #%{customdata[1]}–%{customdata[2]})<extra></extra>",
            showlegend=False))
    n = max(len(q_w), len(k_w))
    left, right = ("target", "source") if stack == "cross" else ("queries", "keys")
    window = ""
    if len(q_w) < len(q) or len(k_w) < len(k):
        window = (f"window: {left} {starts[0]}–{starts[0] + len(q_w) - 1} of {len(q)}, "
                  f"{right} {starts[1]}–{starts[1] + len(k_w) - 1} of {len(k)}; "
                  "lines leaving the window are not drawn · ")
    note = f"{window}strongest lines covering {share:.0%} of each row's weight"
    fig.update_layout(
        title=title_layout(_title(result, stack, f"layer {layer} · token lines"), note),
        height=int(max(320, 120 + 18 * n)), margin=dict(l=10, r=10, t=95, b=10), plot_bgcolor="white",
        xaxis=dict(range=[-0.9, 1.9], showgrid=False, zeroline=False, tickvals=[0, 1], ticktext=[left, right],
                   side="top", fixedrange=True),
        yaxis=dict(range=[-n + 0.5, 0.5], showgrid=False, zeroline=False, showticklabels=False),
        legend=dict(title="heads (click to toggle)", orientation="v"), dragmode="pan")
    hi, qi, ki = np.nonzero(keep)
    rows = [(heads[h], q_w.labels[i], k_w.labels[j]) for h, i, j in zip(hi, qi, ki)]
    return fig, Matrix(weights[hi, qi, ki][:, None], rows, ["weight"], row_header=("head", left, right)).csv


# -- 4. token focus --------------------------------------------------------------------------
def token_focus(result: AttentionResult, stack: str, head: Head, options: TextOptions, *, query: int, key: int,
                progress: Callable[[float], None] | None = None) -> tuple[go.Figure, go.Figure, Csv, Csv]:
    """What query unit ``query`` attends to in every layer (``[layers, keys]``), and what
    attends to key unit ``key`` in every layer (``[layers, queries]``), for one head or fused
    heads: two heatmaps and their CSVs. Above FOCUS_MAX units the token axis is
    block-aggregated. With ``options.row_max`` each layer's row is coloured 0..its maximum.
    ``progress(fraction)`` is called after each layer: the first look at a head of a long
    input reads every row of it once per layer (each row's normaliser, then kept)."""
    q, k = axes(result, stack, options)
    query, key = min(max(query, 0), len(q) - 1), min(max(key, 0), len(k) - 1)
    q_one, k_one = q.window(query, query + 1), k.window(key, key + 1)
    q_b, k_b = q.blocks(FOCUS_MAX), k.blocks(FOCUS_MAX)
    to, by = [], []
    for layer in range(result.attn[stack].shape[0]):
        to.append(head_values(result, stack, layer, head, q_one, k_b)[0])
        by.append(head_columns(result, stack, layer, head, q_b, k_one)[:, 0])
        if progress is not None:
            progress((layer + 1) / result.attn[stack].shape[0])
    layers = [f"L{layer}" for layer in range(len(to))]
    q_name, k_name = ("target", "source") if stack == "cross" else ("query", "key")
    out = []
    for values, axis, full, side, label, what in (
            (np.stack(to), k_b, k, k_name, q.labels[query], "attends to"),
            (np.stack(by), q_b, q, q_name, k.labels[key], "is attended by")):
        shown, weights = colour(values, options)
        fig = heatmap(shown, layers, unique_labels(axis.labels), weights=weights, row_title="layer", col_title=side,
                      title=_title(result, stack, f"{head_name(head)} · “{plotly_text([label])[0]}” {what}"),
                      note=_aggregation_note(f"{side} {unit_word(options)}", (full, axis)),
                      colorbar_title="weight / row max" if options.row_max else "weight")
        out.append((fig, Matrix(values, [(layer,) for layer in layers], axis.labels, row_header=("layer",)).csv))
    (fig_to, csv_to), (fig_by, csv_by) = out
    return fig_to, fig_by, csv_to, csv_by
