"""Measuring what attention costs, for real: time and peak memory of one head as n grows.

Four implementations of one head (queries, keys and values ``[n, d]``, float32):

- ``global``: softmax(q k^T / sqrt(d)) v written out, holding the n x n scores and weights;
- ``local``: sliding-window attention (|i - j| <= w) computed block by block, the way
  Longformer does it: the queries in a block of w positions score the keys of their block and
  its two neighbours, [n / w, w, 3 w] scores, so time and memory grow as n w;
- ``top-k``: every pair is scored (n x n), the k best keys of each query are kept and their
  softmax weights sum their values;
- ``fused``: torch's ``F.scaled_dot_product_attention``, global attention computed tile by tile
  without ever holding the n x n matrix (FlashAttention's idea); measured only, as the
  contrast to the textbook formula.

Everything runs on the CPU, on ``threads`` threads (one by default: the steadiest on a machine
busy with other work, see :func:`attnviz.device.cpu_threads`). Time is the median of a few runs
(one run for slow points), after a first run that also measures the peak memory: what the run
allocates above what existed before it, from the allocation events of torch's profiler.
One measurement runs at a time in a process: two at once would compete for the CPU, skew
each other's times, and let visitors of a hosted demo pile up minutes of work.
"""
from __future__ import annotations

import math
import statistics
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F

from attnviz.analysis.mechanics import FLOAT_BYTES
from attnviz.device import cpu_threads
from attnviz.errors import AttnvizError
from attnviz.models.store import Progress, no_progress

METHODS = ("global", "local", "top-k", "fused")
MEMORY_BUDGET = 2.5e9  # bytes; points expected to need more are skipped, not run
SLOW_POINT_S = 0.3  # a first run slower than this is timed only once more
_RUNNING = threading.Lock()  # held by the one measurement running in this process


class Busy(AttnvizError):
    """Another measurement is running in this process: try again once it is done."""


@dataclass(frozen=True)
class Measured:
    """One measured point: ``seconds`` (median wall time of one call), ``peak_bytes`` (memory
    allocated by the call at its peak), or ``skipped`` saying why it was not run."""

    method: str
    n: int
    seconds: float | None = None
    peak_bytes: float | None = None
    skipped: str | None = None


def global_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v, holding the [n, n] scores and weights."""
    return torch.softmax(q @ k.T / math.sqrt(q.shape[1]), dim=-1) @ v


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """Each query i over the keys |i - j| <= window, in blocks of ``window`` queries."""
    n, d = q.shape
    b = max(window, 1)
    blocks = -(-n // b)
    pad = blocks * b - n
    qb = F.pad(q, (0, 0, 0, pad)).view(blocks, b, d)
    # keys and values padded by one block on each side; block t sees padded blocks t, t+1, t+2
    kb = F.pad(k, (0, 0, b, b + pad)).unfold(0, 3 * b, b)  # [blocks, d, 3b], a view
    vb = F.pad(v, (0, 0, b, b + pad)).unfold(0, 3 * b, b)
    scores = torch.bmm(qb, kb) / math.sqrt(d)  # [blocks, b, 3b]
    # query r of a block and its key c lie c - b - r positions apart, the same in every block
    r, c = torch.arange(b)[:, None], torch.arange(3 * b)[None, :]
    band = (c - b - r).abs() <= window  # [b, 3b]
    real = F.pad(torch.ones(n, dtype=torch.bool), (b, b + pad)).unfold(0, 3 * b, b)  # [blocks, 3b]: not padding
    scores.masked_fill_(~(band & real[:, None, :]), float("-inf"))
    return torch.bmm(torch.softmax(scores, dim=-1), vb.transpose(1, 2)).view(blocks * b, d)[:n]


def top_k_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, top: int) -> torch.Tensor:
    """Every pair scored; each query sums the values of its ``top`` best keys, softmax-weighted."""
    scores = q @ k.T / math.sqrt(q.shape[1])
    best, index = scores.topk(min(top, k.shape[0]), dim=-1)  # [n, top]
    return torch.einsum("nt,ntd->nd", torch.softmax(best, dim=-1), v[index])


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Global attention by torch's fused kernel, which never holds the [n, n] matrix (its CPU
    kernel wants [batch, heads, n, d]; with fewer axes torch falls back to the plain math)."""
    return F.scaled_dot_product_attention(q[None, None], k[None, None], v[None, None])[0, 0]


def expected_bytes(method: str, n: int, d: int, window: int) -> float:
    """A generous estimate of a run's peak memory, to skip runs over the budget."""
    if method in ("global", "top-k"):
        return 2.0 * n * n * FLOAT_BYTES
    if method == "local":
        return 3.0 * n * 3 * max(window, 1) * FLOAT_BYTES + 4.0 * n * d * FLOAT_BYTES
    return 8.0 * n * d * FLOAT_BYTES


def measure(lengths: list[int], methods: tuple[str, ...] = METHODS, *, d: int = 64, window: int = 64,
            top: int = 32, repeats: int = 3, threads: int = 1, budget: float = MEMORY_BUDGET,
            progress: Progress = no_progress) -> list[Measured]:
    """Time and peak memory of each method at each length n (one head of dimension d).
    Raises :class:`Busy` at once while another measurement runs in this process."""
    if not _RUNNING.acquire(blocking=False):
        raise Busy("Another measurement is running on this server; try again shortly.")
    try:
        with cpu_threads(threads):
            return _measure_all(lengths, methods, d, window, top, repeats, budget, progress)
    finally:
        _RUNNING.release()


def _measure_all(lengths, methods, d, window, top, repeats, budget, progress) -> list[Measured]:
    runs: dict[str, Callable] = {
        "global": global_attention, "local": lambda q, k, v: local_attention(q, k, v, window),
        "top-k": lambda q, k, v: top_k_attention(q, k, v, top), "fused": fused_attention}
    points, total, done = [], len(lengths) * len(methods), 0
    generator = torch.Generator().manual_seed(0)
    for n in lengths:
        q, k, v = (torch.randn(n, d, generator=generator) for _ in range(3))
        for method in methods:
            progress(done / total, f"{method} attention, n = {n:,}")
            need = expected_bytes(method, n, d, window)
            if need > budget:
                points.append(Measured(method, n, skipped=f"needs about {need / 1e9:.1f} GB, over the "
                                                          f"{budget / 1e9:.1f} GB budget"))
            else:
                points.append(_measure_one(method, n, partial(runs[method], q, k, v), repeats))
            done += 1
        del q, k, v  # free this length's inputs before the next, larger ones
    progress(1.0, "done")
    return points


def _measure_one(method: str, n: int, run: Callable, repeats: int) -> Measured:
    with torch.inference_mode():
        started = time.perf_counter()
        peak = _peak_bytes(run)  # also the warm-up
        first = time.perf_counter() - started
        times = []
        for _ in range(1 if first > SLOW_POINT_S else repeats):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
    return Measured(method, n, seconds=statistics.median(times), peak_bytes=peak)


def _peak_bytes(run: Callable) -> float | None:
    """Bytes allocated by ``run()`` at its peak, above what was allocated before it."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    try:  # the allocation events carry the running total of bytes allocated since the start
        events = list(_walk(prof.profiler.kineto_results.experimental_event_tree()))
        totals = [e.extra_fields.total_allocated for e in events
                  if type(e.extra_fields).__name__ == "_ExtraFields_Allocation"]
    except AttributeError:  # a torch without these (private) event fields: memory unknown
        return None
    return float(max(totals, default=0))


def _walk(events):
    for e in events:
        yield e
        yield from _walk(e.children)
