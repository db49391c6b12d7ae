"""Which torch device attnviz computes on: the GPU when torch sees one, else the CPU."""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch


def default_device() -> torch.device:
    """``cuda`` when available, ``cpu`` otherwise; ``ATTNVIZ_DEVICE`` (e.g. ``cpu``) overrides."""
    forced = os.environ.get("ATTNVIZ_DEVICE")
    if forced:
        return torch.device(forced)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def cpu_threads(n: int):
    """Run the block with ``n`` intra-op CPU threads, then restore the previous number.

    With torch's OpenMP backend the number is per calling thread, so other threads (other
    sessions of the app) keep theirs. Small workloads (a toy model's training, timing one
    attention head) run steadier on one thread: on a busy machine the threads of a parallel
    region wait for each other, and a 30 ms step can take 300 ms.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
