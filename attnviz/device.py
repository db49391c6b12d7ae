"""Which torch device attnviz computes on: the GPU when torch sees one, else the CPU."""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager

import torch


def default_device() -> torch.device:
    """``cuda`` when available, ``cpu`` otherwise; ``ATTNVIZ_DEVICE`` (e.g. ``cpu``) overrides."""
    forced = os.environ.get("ATTNVIZ_DEVICE")
    if forced:
        return torch.device(forced)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


PROCESS_THREADS = torch.get_num_threads()  # torch's intra-op threads for the process (OMP_NUM_THREADS, else the cores)
_local = threading.local()  # .cap: the threads the innermost cpu_threads block on this thread allows


@contextmanager
def cpu_threads(n: int):
    """Run the block with ``n`` intra-op CPU threads, then restore the previous number.

    With torch's OpenMP backend the number is per calling thread, so other threads (other
    sessions of the app) keep theirs. Small workloads (a toy model's training, timing one
    attention head) run steadier on one thread: on a busy machine the threads of a parallel
    region wait for each other, and a 30 ms step can take 300 ms. Within the block,
    :func:`share_threads` gives this thread no more than ``n``.
    """
    before, cap = torch.get_num_threads(), getattr(_local, "cap", None)
    _local.cap = n
    torch.set_num_threads(n)
    try:
        yield
    finally:
        _local.cap = cap
        torch.set_num_threads(before)


def share_threads(computing: int) -> int:
    """Give the calling thread its share of the process's CPU threads while ``computing``
    computations run at once: PROCESS_THREADS // computing, at least one, at most what an
    enclosing :func:`cpu_threads` block allows. Returns the number.

    Two reasons. torch keeps the number per thread, and a thread takes, at its first use of
    torch, the number any thread set last: a page's thread started while another thread ran
    a ``cpu_threads(1)`` block (a toy model's training) would compute on one thread for good.
    And two computations of two threads each on two cores oversubscribe them: OpenMP's threads
    wait for each other, and a step takes several times as long as on one thread each.

    On the main thread (the command line, a notebook, a batch worker process, a benchmark) the
    number the caller set stands: nothing there starts threads, and it is the user's to choose."""
    if threading.current_thread() is threading.main_thread():
        return torch.get_num_threads()
    n = max(1, PROCESS_THREADS // max(1, computing))
    cap = getattr(_local, "cap", None)
    if cap is not None:
        n = min(n, cap)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
