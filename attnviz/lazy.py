"""Attention maps computed on demand from what the model's attention function was given.

A fast attention kernel never writes its probabilities down. attnviz records, per attention
call, what defines them (:class:`Call`): the queries and keys exactly as the kernel received
them (after rotary embeddings; under grouped-query attention the keys once per key/value
head), the scale, the causal flag, and whatever the model adds to the scores (a boolean or
additive mask, held once per distinct mask and, when it is a plain causal or sliding-window
pattern, only described by a flag and a width). From these, any head's probabilities are

    p[i, :] = softmax(cap(q[i] . k[j] * scale) + bias[i, j] over the keys j)

where ``cap(s) = softcap * tanh(s / softcap)`` when the model soft-caps its logits and bias is
0 or -inf (masks) or the model's additive bias (relative positions, ALiBi). A row with every
key masked is all zero.

:class:`LazyStack` holds one stack's calls (one per layer) and behaves like the float16 array
``[layers, heads, queries, keys]`` it stands for: ``shape``, indexing and ``np.asarray`` work.
A stack of at most SMALL_ELEMENTS weights is materialised once on first use (float16, as a
captured stack always was); a larger one computes only the rows asked for, in row blocks,
and refuses a selection of more than SLICE_ELEMENTS weights. :meth:`LazyStack.rows` is the
streaming access: float32 ``[queries, keys]`` of one head; :meth:`LazyStack.layer_rows` gives
every head of a layer, computed together (one batched product per key/value head), and
:meth:`LazyStack.layer_cells` every head of a layer reduced to a grid of cells (the overview's
thumbnails), each row block reduced as it is computed (:class:`CellSums`, which also reduces a
layer held as an array).

:class:`ScaledStack` is a stack whose every head has its key columns scaled by one number per
key (attention x value norm, attnviz.mixing): it reads the rows of the stack it wraps and
multiplies them, so it stays as lazy as that stack.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from attnviz.device import cpu_threads
from attnviz.errors import AttnvizError

SMALL_ELEMENTS = 2 ** 26  # weights of a stack kept materialised (128 MB in float16)
SLICE_ELEMENTS = 2 ** 28  # most weights one whole-array selection may materialise (512 MB in float16)
ROW_BLOCK_ELEMENTS = 2 ** 22  # scores computed at once: rows per block = this / keys (16 MB float32)
# scores computed at once for every head of a layer (8 MB float32: a block stays in the cache
# through its product, mask, softmax and reduction; 64 MB blocks took 1.4 times as long)
LAYER_BLOCK_ELEMENTS = 2 ** 21
CACHE_BYTES = 64 * 2 ** 20  # rows kept by LazyStack.rows' cache, per stack
READ_BYTES = 4 * ROW_BLOCK_ELEMENTS * 4  # working memory of one reader of a head (a block of scores, its softmax, rows), generous


@dataclass
class Call:
    """One recorded attention call of batch item 0.

    q: float32 ``[heads, queries, dim]``; k: float32 ``[kv_heads, keys, dim]``, head h reading
    kv head ``h // (heads // kv_heads)``; scale: multiplies q . k; causal: key j is masked for
    query i when j > i (top-left aligned); window: when set, key j is also masked when
    i - j >= window (sliding-window attention); mask: index of the call's explicit mask in the
    stack's ``masks`` (-1: none); softcap: logit soft-capping (None: none); key_bias: index in
    ``masks`` of the call's per-key additive bias, float32 ``[heads or 1, keys]``, added to
    every query's score for that key after the scale and soft-cap (-1: none; ALiBi).
    """

    q: np.ndarray
    k: np.ndarray
    scale: float
    causal: bool = False
    window: int | None = None
    mask: int = -1
    softcap: float | None = None
    key_bias: int = -1

    @property
    def shape(self) -> tuple[int, int, int]:
        """(heads, queries, keys)."""
        return self.q.shape[0], self.q.shape[1], self.k.shape[1]


def scores(call: Call, masks: list[np.ndarray], heads: int | slice, rows, keys=slice(None),
           out: torch.Tensor | None = None) -> torch.Tensor:
    """The scores (logits plus bias, -inf where masked) of query ``rows`` over ``keys`` (each a
    slice or an index array): float32 ``[len(rows), len(keys)]`` of one head (``heads`` an
    int), or ``[heads, len(rows), len(keys)]`` of a slice of heads computed together (one
    batched product per key/value head whose heads the slice holds whole). Written into
    ``out`` when given (a contiguous tensor of that shape, reused by :class:`LazyStack` so that
    a long head does not allocate a new block of scores per row block)."""
    n_heads, n_q, n_k = call.shape
    one = isinstance(heads, (int, np.integer))
    h0, h1, _ = (slice(int(heads), int(heads) + 1) if one else heads).indices(n_heads)
    group = n_heads // call.k.shape[0]
    q = torch.from_numpy(call.q[h0:h1][:, rows]) * call.scale  # [heads, rows, dim]: cheaper to scale than the scores
    n_rows, width = q.shape[1], len(np.arange(n_k)[keys])
    s = out.view(h1 - h0, n_rows, width) if out is not None else torch.empty(h1 - h0, n_rows, width)
    if h0 % group == 0 and h1 % group == 0:  # whole key/value heads: their query heads in one product each
        k = torch.from_numpy(call.k[h0 // group:h1 // group][:, keys])
        torch.bmm(q.reshape(k.shape[0], -1, q.shape[-1]), k.transpose(1, 2), out=s.view(k.shape[0], -1, width))
    else:  # heads that share their key/value head with heads outside the slice: a product each
        for h in range(h0, h1):
            torch.mm(q[h - h0], torch.from_numpy(call.k[h // group][keys]).T, out=s[h - h0])
    if call.softcap is not None:
        s.div_(call.softcap).tanh_().mul_(call.softcap)
    if call.key_bias >= 0:
        b = masks[call.key_bias]
        s += torch.from_numpy(np.ascontiguousarray((b[h0:h1] if b.shape[0] > 1 else b)[:, keys]))[:, None, :]
    if call.causal or call.window is not None:
        row_index = np.arange(n_q)[rows]
        key_index = np.arange(n_k)[keys]
        first, last = (int(row_index.min()), int(row_index.max())) if row_index.size else (0, 0)
        # the key columns a mask can touch: j > (first row) under causal, j <= (last row) - window
        # in a window; with keys in order (a slice) only those columns are compared
        ordered = isinstance(keys, slice)
        i = torch.from_numpy(row_index)[:, None]
        if call.causal:
            c0 = int(np.searchsorted(key_index, first, side="right")) if ordered else 0
            if c0 < len(key_index):
                s[:, :, c0:].masked_fill_(torch.from_numpy(key_index[c0:])[None, :] > i, float("-inf"))
        if call.window is not None:
            c1 = int(np.searchsorted(key_index, last - call.window, side="right")) if ordered else len(key_index)
            if c1 > 0:
                s[:, :, :c1].masked_fill_(torch.from_numpy(key_index[:c1])[None, :] <= i - call.window, float("-inf"))
    if call.mask >= 0:
        m = masks[call.mask]
        m = torch.from_numpy(np.ascontiguousarray((m[h0:h1] if m.shape[0] > 1 else m)[:, rows][:, :, keys]))
        if m.dtype == torch.bool:
            s.masked_fill_(~m, float("-inf"))
        else:
            s += m
    return s[0] if one else s


def visible(call: Call, rows: np.ndarray) -> slice:
    """The keys any of query ``rows`` can see, as one slice: under causal attention none after
    the last row, in a sliding window none at or before the first row minus the window."""
    n_k = call.shape[2]
    if not rows.size:
        return slice(0, 0)
    stop = min(n_k, int(rows.max()) + 1) if call.causal else n_k
    start = max(0, int(rows.min()) - call.window + 1) if call.window is not None else 0
    return slice(min(start, stop), stop)


def _softmax_(call: Call, s: torch.Tensor) -> torch.Tensor:
    """The softmax of scores ``s`` over the keys, in place (on the contiguous block, which is
    fast). Only an explicit mask can hide every key of a row (causal and window rows always see
    themselves): its rows of NaN become 0."""
    torch.softmax(s, dim=-1, out=s)
    if call.mask >= 0:
        s.nan_to_num_(0.0)
    return s


def _normalise(call: Call, s: torch.Tensor, out: torch.Tensor) -> None:
    """Writes the softmax of scores ``s`` over the keys into ``out`` (``s`` is overwritten: the
    softmax runs in place on its contiguous block, then one copy fills ``out``, a strided view
    of the rows; a softmax written straight into a strided ``out`` takes about 2.5 times as
    long)."""
    out.copy_(_softmax_(call, s))


def _run(rows: np.ndarray) -> slice | np.ndarray:
    """``rows`` as a slice when they are consecutive (numpy then reads a view, not a copy)."""
    if rows.size and int(rows[-1]) - int(rows[0]) + 1 == rows.size and bool((np.diff(rows) == 1).all()):
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def _as_rows(queries, n: int) -> np.ndarray:
    """None, a slice, an int or an index array -> int64 row indices."""
    if queries is None:
        return np.arange(n)
    if isinstance(queries, slice):
        return np.arange(n)[queries]
    rows = np.atleast_1d(np.asarray(queries, dtype=np.int64))
    if rows.size and (rows.min() < -n or rows.max() >= n):
        raise IndexError(f"query index out of range [0, {n})")
    return np.where(rows < 0, rows + n, rows)


class CellSums:
    """The rows of one layer's heads reduced to a grid of cells as they are read, a block of
    rows at a time, so that no whole row of the layer is ever held: the rule of
    attnviz.analysis.tokens.reduce, written with the units of each axis given per token.

    query_units: int ``[queries]``, the unit (row of cells) each query token belongs to, -1 for
    a token in none; key_units: int ``[keys]`` likewise for the columns; units are numbered
    from 0 and each holds at least one token. hidden: key tokens whose weight every row drops,
    the row then renormalised over the other keys (all of them, in a unit or not; None: rows
    are taken as they are). key_scale: float32 ``[heads, keys]`` multiplying each head's key
    columns first (attention x value norm, :class:`ScaledStack`), or None.

    ``values[head, u, v]``, float32 ``[heads, query units, key units]``: the mean, over the
    query tokens of unit u, of the row's total weight on the key tokens of unit v. Call
    :meth:`add` with every row of ``rows`` (the query tokens in a unit) once, in any blocks.
    """

    def __init__(self, n_heads: int, query_units, key_units, hidden=None, key_scale: np.ndarray | None = None) -> None:
        query_units = np.asarray(query_units, dtype=np.int64)
        key_units = np.asarray(key_units, dtype=np.int64)
        self.rows = np.flatnonzero(query_units >= 0)
        self.query_units = query_units
        q_sizes = np.bincount(query_units[self.rows])
        in_keys = np.flatnonzero(key_units >= 0)
        k_sizes = np.bincount(key_units[in_keys])
        if not (q_sizes.all() and k_sizes.all()):
            raise ValueError("units must be numbered from 0, each holding at least one token")
        self.row_weight = np.zeros(len(query_units), dtype=np.float32)  # 1 / tokens of its unit: the mean
        self.row_weight[self.rows] = 1.0 / q_sizes[query_units[self.rows]]
        order = in_keys[np.argsort(key_units[in_keys], kind="stable")]  # key tokens unit by unit
        self.key_order = _run(order)
        self.key_starts = np.searchsorted(key_units[order], np.arange(len(k_sizes)))
        self.n_keys = len(key_units)
        self.scale = None if key_scale is None else torch.from_numpy(np.asarray(key_scale, dtype=np.float32))
        self.kept = None  # [heads or 1, keys]: what a row's weight on a key counts for its mass
        if hidden is not None:
            kept = torch.ones(1, self.n_keys)
            kept[:, torch.from_numpy(np.asarray(hidden, dtype=np.int64))] = 0.0
            self.kept = kept if self.scale is None else kept * self.scale
        self.values = np.zeros((n_heads, len(q_sizes), len(k_sizes)), dtype=np.float32)

    def add(self, rows: np.ndarray, keys: slice, weights: torch.Tensor) -> None:
        """Adds the rows ``weights``, float32 ``[heads, len(rows), keys]``, of query tokens
        ``rows`` (each in a unit) over the key tokens ``keys`` (a slice; every other key has
        weight 0 in these rows). Each row is scaled by 1 / (tokens of its unit) and, when keys
        are hidden, by 1 / its weight on the other keys; the rows of a unit are then summed by
        one product per head (the block's units are few), and their keys summed per unit. On
        one thread (attnviz.device.cpu_threads): the products are small, and split over two
        threads each would wait for the second core, about 8 ms when it is busy."""
        units = self.query_units[rows]
        first, last = int(units.min()), int(units.max())
        spread = np.zeros((1, last - first + 1, len(rows)), dtype=np.float32)  # [1, units, rows]
        spread[0, units - first, np.arange(len(rows))] = self.row_weight[rows]
        spread = torch.from_numpy(spread)
        with cpu_threads(1):
            if self.kept is not None:
                mass = torch.matmul(weights, self.kept[:, keys, None]).transpose(1, 2)  # [heads, 1, rows]
                spread = spread / torch.where(mass > 0, mass, 1.0)
            by_unit = torch.matmul(spread, weights)  # [heads, units, keys]
            if self.scale is not None:
                by_unit *= self.scale[:, None, keys]
        summed = by_unit.numpy()
        if (keys.start, keys.stop) != (0, self.n_keys):
            summed = np.zeros((*summed.shape[:2], self.n_keys), dtype=np.float32)
            summed[..., keys] = by_unit.numpy()
        self.values[:, first:last + 1] += np.add.reduceat(summed[..., self.key_order], self.key_starts, axis=-1)


def array_cells(layer: np.ndarray, query_units, key_units, hidden=None) -> np.ndarray:
    """:class:`CellSums` of one layer held as an array, ``[heads, queries, keys]`` (a
    materialised stack's), read a block of LAYER_BLOCK_ELEMENTS weights at a time."""
    n_heads, _, n_keys = layer.shape
    cells = CellSums(n_heads, query_units, key_units, hidden)
    step = max(1, LAYER_BLOCK_ELEMENTS // max(n_heads * n_keys, 1))
    for start in range(0, len(cells.rows), step):
        rows = cells.rows[start:start + step]
        cells.add(rows, slice(0, n_keys), torch.from_numpy(np.asarray(layer[:, _run(rows)], dtype=np.float32)))
    return cells.values


class LazyStack:
    """One stack ``[layers, heads, queries, keys]`` computed on demand from recorded calls
    (one :class:`Call` per layer, all of the same shape) and their shared ``masks``."""

    ndim = 4
    dtype = np.dtype(np.float16)

    def __init__(self, calls: list[Call], masks: list[np.ndarray]) -> None:
        if not calls:
            raise ValueError("a stack needs at least one attention call")
        shapes = {c.shape for c in calls}
        if len(shapes) != 1:
            raise ValueError(f"the calls of one stack must share a shape, got {sorted(shapes)}")
        self.calls, self.masks = calls, masks
        self.shape = (len(calls), *calls[0].shape)
        self._dense: np.ndarray | None = None
        self._cache: OrderedDict = OrderedDict()
        self._cached_bytes = 0
        self._lse: dict = {}  # (layer, head) -> float32 tensor [queries]: log-sum-exp of each row's scores
        self._lock = threading.Lock()  # sessions share results: the caches are changed under it

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def small(self) -> bool:
        """Whether the whole stack is materialised on first use (see the module docstring)."""
        return self.size <= SMALL_ELEMENTS

    @property
    def causal(self) -> bool:
        """Whether no query sees a key after it in any layer: every call is causal, or its mask
        hides every key past the query (a boolean mask keeps none, an additive one is at or
        below MASKED there)."""
        for call in self.calls:
            if call.causal:
                continue
            if call.mask < 0:
                return False
            mask = self.masks[call.mask]
            keep = mask if mask.dtype == np.bool_ else mask > MASKED
            if np.triu(keep, k=1).any():
                return False
        return True

    @property
    def nbytes(self) -> int:
        """Bytes of what is recorded (queries, keys, masks)."""
        return sum(c.q.nbytes + c.k.nbytes for c in self.calls) + sum(m.nbytes for m in self.masks)

    @property
    def recorded(self) -> list[np.ndarray]:
        """The arrays that define the stack (each call's queries, keys and settings, and the
        masks): what names it in a digest, and what a saved file holds instead of the maps."""
        return [x for c in self.calls for x in (c.q, c.k, np.array([c.scale, c.causal, c.window or 0, c.mask,
                                                                   c.softcap or 0.0, c.key_bias]))] + self.masks

    @property
    def savable(self) -> bool:
        """Whether its recorded calls alone define it (AttentionResult.save may write them)."""
        return True

    def rows(self, layer: int, head: int, queries=None) -> np.ndarray:
        """float32 ``[queries, keys]`` of one head: every row (None), a slice or index array."""
        call = self.calls[layer]
        rows = _as_rows(queries, call.shape[1])
        key = (layer, head, rows.tobytes())
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit.copy()
        out = np.zeros((len(rows), call.shape[2]), dtype=np.float32)
        for start, keys, block in self._score_blocks(call, head, rows):
            _normalise(call, block, torch.from_numpy(out[start:start + len(block), keys]))
        if out.nbytes <= CACHE_BYTES // 4:
            with self._lock:
                if key not in self._cache:
                    self._cache[key] = out.copy()
                    self._cached_bytes += out.nbytes
                while self._cached_bytes > CACHE_BYTES and self._cache:
                    self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
        return out

    def columns(self, layer: int, head: int, keys) -> np.ndarray:
        """float32 ``[queries, len(keys)]``: the weight every query of one head gives ``keys``
        (an index array). Each row's normaliser (log-sum-exp) is computed once per head, in
        row blocks, and kept (4 bytes per query), so later columns cost a product with a few keys."""
        call = self.calls[layer]
        keys = np.atleast_1d(np.asarray(keys, dtype=np.int64))
        lse = self._lse.get((layer, head))
        rows = np.arange(call.shape[1])
        if lse is None:
            lse = torch.cat([torch.logsumexp(block, dim=-1) for _, _, block in self._score_blocks(call, head, rows)])
            self._lse[(layer, head)] = lse
        out = torch.exp(scores(call, self.masks, head, slice(None), keys) - lse[:, None]).nan_to_num_(0.0)
        return out.numpy()

    def layer_rows(self, layer: int, queries=None) -> np.ndarray:
        """float32 ``[heads, queries, keys]``: every head of one layer for the rows asked for
        (None, a slice or an index array), computed together: one product per key/value head
        and row block of LAYER_BLOCK_ELEMENTS scores (the overview of every head reads this).
        Not cached."""
        call = self.calls[layer]
        rows = _as_rows(queries, call.shape[1])
        out = np.zeros((call.shape[0], len(rows), call.shape[2]), dtype=np.float32)
        for start, keys, block in self._score_blocks(call, slice(None), rows, LAYER_BLOCK_ELEMENTS):
            _normalise(call, block, torch.from_numpy(out[:, start:start + block.shape[-2], keys]))
        return out

    def layer_cells(self, layer: int, query_units, key_units, hidden=None) -> np.ndarray:
        """float32 ``[heads, query units, key units]``: every head of one layer reduced to cells
        (:class:`CellSums`: query_units and key_units give each token's unit, -1 for none;
        hidden: key tokens dropped, rows renormalised). The overview of every head reads this:
        the heads are computed together, one product per key/value head and row block of about
        LAYER_BLOCK_ELEMENTS scores, and each block goes from scores to softmax to cells while
        it is in the cache; no row of the layer is ever written out."""
        call = self.calls[layer]
        cells = CellSums(call.shape[0], query_units, key_units, hidden, self._key_scale(layer))
        for start, keys, block in self._score_blocks(call, slice(None), cells.rows, LAYER_BLOCK_ELEMENTS):
            cells.add(cells.rows[start:start + block.shape[-2]], keys, _softmax_(call, block))
        return cells.values

    def _key_scale(self, layer: int) -> np.ndarray | None:
        """float32 ``[heads, keys]`` multiplying each head's key columns (None: none)."""
        return None

    def _score_blocks(self, call: Call, heads: int | slice, rows: np.ndarray, budget: int = ROW_BLOCK_ELEMENTS):
        """The scores of query ``rows`` of ``heads`` (see :func:`scores`) a row block of about
        ``budget`` scores at a time, as (start, keys, scores): the rows ``rows[start:start + n]``
        (n = the scores' second-last axis) over the keys they can see (a slice; every other
        key has weight 0). A block has at least ``budget // (heads x keys)`` rows, and more
        while its rows see fewer keys (doubled while the block stays within ``budget``). One
        buffer serves every block: each is valid until the next."""
        n_heads = 1 if isinstance(heads, (int, np.integer)) else len(range(*heads.indices(call.shape[0])))
        step = max(1, budget // max(n_heads * call.shape[2], 1))
        scratch = torch.empty(min(max(budget, n_heads * call.shape[2]), n_heads * len(rows) * call.shape[2]))
        start = 0
        while start < len(rows):
            stop = min(len(rows), start + step)
            while stop < len(rows):  # rows that see fewer keys (early rows under causal attention): more of them
                grown = min(len(rows), start + 2 * (stop - start))
                keys = visible(call, rows[start:grown])
                if n_heads * (grown - start) * (keys.stop - keys.start) > budget:
                    break
                stop = grown
            block = rows[start:stop]
            keys = visible(call, block)
            size = n_heads * len(block) * (keys.stop - keys.start)
            yield start, keys, scores(call, self.masks, heads, _run(block), keys, out=scratch[:size])
            start = stop

    def dense(self) -> np.ndarray:
        """The whole stack as float16 ``[layers, heads, queries, keys]``; refused when large."""
        if self._dense is None:
            _check_size(self.size, self.shape)
            out = np.empty(self.shape, dtype=np.float16)
            for layer in range(self.shape[0]):
                for head in range(self.shape[1]):
                    out[layer, head] = self.rows(layer, head)
            if not self.small:
                return out
            self._dense = out
        return self._dense

    def __getitem__(self, index) -> np.ndarray:
        if self.small or self._dense is not None:
            return self.dense()[index]
        index = index if isinstance(index, tuple) else (index,)
        if any(i is Ellipsis or i is None for i in index) or len(index) > 4:
            return self.dense()[index]  # refused: only plain indices are computed piecewise
        index = index + (slice(None),) * (4 - len(index))
        picks = [np.arange(n)[i] for n, i in zip(self.shape, index)]
        layers, heads, queries = (np.atleast_1d(p) for p in picks[:3])
        keys = np.atleast_1d(picks[3])
        _check_size(len(layers) * len(heads) * len(queries) * self.shape[3], self.shape)
        out = np.empty((len(layers), len(heads), len(queries), len(keys)), dtype=np.float16)
        for a, layer in enumerate(layers):
            for b, head in enumerate(heads):
                out[a, b] = self.rows(int(layer), int(head), queries)[:, keys]
        squeeze = tuple(axis for axis, p in enumerate(picks) if np.ndim(p) == 0)
        return out.squeeze(axis=squeeze) if squeeze else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        a = self.dense()
        return a if dtype is None else a.astype(dtype)

    def astype(self, dtype, copy: bool = True) -> np.ndarray:
        return self.dense().astype(dtype)

    def __len__(self) -> int:
        return self.shape[0]


class ScaledStack(LazyStack):
    """The stack ``base`` with key column j of head h of layer l multiplied by
    ``scale[l, h, j]`` (float32 ``[layers, heads, keys]``): rows and columns are the base's,
    scaled, so nothing of size queries x keys is kept beyond what the base keeps. Rows no
    longer sum to 1. Indexing, ``dense`` and ``np.asarray`` work as on any LazyStack."""

    def __init__(self, base: LazyStack, scale: np.ndarray) -> None:
        super().__init__(base.calls, base.masks)
        scale = np.asarray(scale, dtype=np.float32)
        if scale.shape != (self.shape[0], self.shape[1], self.shape[3]):
            raise ValueError(f"scale must be [layers, heads, keys] = {[self.shape[i] for i in (0, 1, 3)]}, "
                             f"got {list(scale.shape)}")
        self.base, self.scale = base, scale

    @property
    def nbytes(self) -> int:
        return self.base.nbytes + self.scale.nbytes

    @property
    def recorded(self) -> list[np.ndarray]:
        return self.base.recorded + [self.scale]

    @property
    def savable(self) -> bool:
        return False

    def rows(self, layer: int, head: int, queries=None) -> np.ndarray:
        return self.base.rows(layer, head, queries) * self.scale[layer, head]

    def layer_rows(self, layer: int, queries=None) -> np.ndarray:
        return self.base.layer_rows(layer, queries) * self.scale[layer][:, None, :]

    def _key_scale(self, layer: int) -> np.ndarray:
        return self.scale[layer]

    def columns(self, layer: int, head: int, keys) -> np.ndarray:
        keys = np.atleast_1d(np.asarray(keys, dtype=np.int64))
        return self.base.columns(layer, head, keys) * self.scale[layer, head, keys]


def _check_size(elements: int, shape) -> None:
    if elements > SLICE_ELEMENTS:
        raise AttnvizError(
            f"Materialising {elements:,} attention weights of a {list(shape)} stack is refused (more than "
            f"{SLICE_ELEMENTS:,}); read it a head at a time with AttentionResult.attention(layer, head, queries=...).")


# -- describing masks compactly ------------------------------------------------------------------
MASKED = -1e4  # an additive mask entry at or below this hides its key (eager masks write -inf or the dtype's minimum)


def describe_mask(mask: torch.Tensor, n_heads: int) -> tuple[bool, int | None, torch.Tensor | None, torch.Tensor | None]:
    """(causal, window, what is left, key bias) for one call's mask ``[heads or 1, queries, keys]``.

    A float (additive) mask is read as two parts: the keys it hides (entries at or below
    MASKED) and what it adds to the scores of the others. What it adds is returned as the key
    bias, float32 ``[heads or 1, keys]``, when every query of a head adds the same value for
    a key (ALiBi folded into the mask, as Falcon does; None when it adds nothing); a mask that
    adds values depending on the query as well (a relative-position bias) is left whole, as it
    is, with nothing described. The keys hidden, a boolean pattern, are described by
    (causal, window) alone when the pattern keeps everything, or is exactly causal, or a
    causal band of some width (sliding window), and nothing is left; any other pattern is
    left, for storing.
    """
    key_bias = None
    if mask.dtype != torch.bool:
        additive = mask.float()
        keep = additive > MASKED
        by_key, key_bias = _key_bias(additive, keep)
        if not by_key:
            return False, None, mask, None
        mask = keep
    if mask.shape[0] > 1 and bool((mask == mask[:1]).all()):
        mask = mask[:1]
    if mask.shape[0] > 1:
        return False, None, mask, key_bias
    m = mask[0]
    if bool(m.all()):
        return False, None, None, key_bias
    n_q, n_k = m.shape
    gap = torch.arange(n_q)[:, None] - torch.arange(n_k)[None, :]
    if torch.equal(m, gap >= 0):
        return True, None, None, key_bias
    width = int(m[-1].sum())
    if width and torch.equal(m, (gap >= 0) & (gap < width)):
        return True, width, None, key_bias
    return False, None, mask, key_bias


def _key_bias(additive: torch.Tensor, keep: torch.Tensor) -> tuple[bool, torch.Tensor | None]:
    """(whether what ``additive [heads, queries, keys]`` adds where ``keep`` holds depends on
    the key alone; if so, what it adds, float32 ``[heads or 1, keys]`` with 0 for a key no
    query keeps, or None when it adds 0 everywhere). Read a block of queries at a time, so
    that no temporary is as large as the mask."""
    n_heads, n_q, n_k = additive.shape
    low = torch.full((n_heads, n_k), math.inf)
    high = torch.full((n_heads, n_k), -math.inf)
    step = max(1, ROW_BLOCK_ELEMENTS // max(n_heads * n_k, 1))
    for start in range(0, n_q, step):
        values, kept = additive[:, start:start + step], keep[:, start:start + step]
        torch.minimum(low, values.masked_fill(~kept, math.inf).amin(dim=-2), out=low)
        torch.maximum(high, values.masked_fill(~kept, -math.inf).amax(dim=-2), out=high)
    seen = low != math.inf  # keys some query keeps
    if not bool((low[seen] == high[seen]).all()):
        return False, None
    bias = low.masked_fill(~seen, 0.0)
    if not bool(bias.any()):
        return True, None
    return True, bias[:1] if n_heads > 1 and bool((bias == bias[:1]).all()) else bias


def kv_groups(key: torch.Tensor, n_heads: int) -> int:
    """How many consecutive heads of ``key [heads, keys, dim]`` are copies of one key/value
    head (``repeat_kv`` of grouped-query attention); 1 when none are."""
    for g in sorted((d for d in range(2, n_heads + 1) if n_heads % d == 0), reverse=True):
        grouped = key.unflatten(0, (n_heads // g, g))
        if torch.equal(grouped, grouped[:, :1].expand_as(grouped)):
            return g
    return 1


def default_scale(dim: int) -> float:
    return 1.0 / math.sqrt(dim)
