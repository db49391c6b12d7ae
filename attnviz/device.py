"""Which torch device attnviz computes on: the GPU when torch sees one, else the CPU."""
from __future__ import annotations

import os

import torch


def default_device() -> torch.device:
    """``cuda`` when available, ``cpu`` otherwise; ``ATTNVIZ_DEVICE`` (e.g. ``cpu``) overrides."""
    forced = os.environ.get("ATTNVIZ_DEVICE")
    if forced:
        return torch.device(forced)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
