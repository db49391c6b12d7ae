"""The server's budgets: how much memory a model, a capture, the computations running at once
and the result cache may take, how many computations run at once and for how long a visitor,
and whether attnviz runs as a hosted demo.

Each is read from the environment when it is used (so a test or an operator can change it
without a restart of the backend code); sizes take a number of bytes or a unit: ``512MB``,
``2GB``, ``1.5GiB``.

============================  =========  =========  ===============================================
variable                      local      hosted     bounds
============================  =========  =========  ===============================================
``ATTNVIZ_MODEL_BYTES``       8 GB       1.5 GB     a model's weights **and** buffers, estimated
                                                    from its config before anything is allocated
``ATTNVIZ_CAPTURE_BYTES``     8 GB       2 GB       the memory one capture's attention may take at
                                                    the longest input a model is allowed (this sets
                                                    each model's token cap, see
                                                    :func:`tokens_within`)
``ATTNVIZ_CACHE_BYTES``       4 GB       1 GB       cached results, all sessions together
``ATTNVIZ_JOB_BYTES``         16 GB      3 GB       every computation admitted at once, running or
                                                    waiting (local default: workers x capture
                                                    budget; see attnviz.jobs)
``ATTNVIZ_WORKERS``           2          2          computations running at once, across models
``ATTNVIZ_VISITOR_SECONDS``   none       60         worker seconds one visitor's computations may
                                                    take per minute
``ATTNVIZ_UPLOAD_BYTES``      2 GiB      512 MiB    what one model upload may unpack to on disk
``ATTNVIZ_DOWNLOAD_BYTES``    8 GB       256 MB     a result offered as a .npz download (the file
                                                    is built in the server's memory when clicked)
``ATTNVIZ_SAVED_MODELS``      100        10         Build-your-own models one visitor keeps saved
                                                    (the oldest are removed first)
``ATTNVIZ_SAVED_BYTES``       4 GB       50 MB      what one visitor's saved models take on disk
``ATTNVIZ_MAX_TOKENS``        unset      unset      a further cap on every input's length
============================  =========  =========  ===============================================

"Hosted" is ``ATTNVIZ_HOSTED=1`` (the Docker image sets it): models then come only from an
allow-list (the bundled ones, the operator's ``ATTNVIZ_MODELS`` and the session's own uploads)
and messages never name a server path. See docs/deploy.md.
"""
from __future__ import annotations

import os
import re

HOSTED_ENV = "ATTNVIZ_HOSTED"
OPERATOR_MODELS_ENV = "ATTNVIZ_MODELS"
TOKEN_CAP_ENV = "ATTNVIZ_MAX_TOKENS"
GB = 10**9

# (variable, local default, hosted default)
MODEL_BYTES = ("ATTNVIZ_MODEL_BYTES", 8 * GB, int(1.5 * GB))
CAPTURE_BYTES = ("ATTNVIZ_CAPTURE_BYTES", 8 * GB, 2 * GB)
CACHE_BYTES = ("ATTNVIZ_CACHE_BYTES", 4 * GB, 1 * GB)
UPLOAD_BYTES = ("ATTNVIZ_UPLOAD_BYTES", 2 << 30, 512 << 20)
DOWNLOAD_BYTES = ("ATTNVIZ_DOWNLOAD_BYTES", 8 * GB, 256 * 10**6)
SAVED_MODELS = ("ATTNVIZ_SAVED_MODELS", 100, 10)  # per visitor (attnviz.lab.custom.save_owned)
SAVED_BYTES = ("ATTNVIZ_SAVED_BYTES", 4 * GB, 50 * 10**6)
JOB_BYTES = ("ATTNVIZ_JOB_BYTES", 0, 3 * GB)  # 0: workers x capture budget, see job_bytes()
WORKERS = ("ATTNVIZ_WORKERS", 2, 2)
VISITOR_SECONDS = ("ATTNVIZ_VISITOR_SECONDS", 0, 60)  # 0: no quota

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str) -> int | None:
    """``"512MB"`` -> 512_000_000, ``"2GiB"`` -> 2_147_483_648, ``"1000"`` -> 1000; None when
    ``text`` is not such a size."""
    m = _SIZE.match(text or "")
    if not m or m.group(2).lower() not in _UNITS:
        return None
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def hosted() -> bool:
    """Whether attnviz runs as a hosted demo (``ATTNVIZ_HOSTED`` set to 1, true or yes)."""
    return os.environ.get(HOSTED_ENV, "").strip().lower() in ("1", "true", "yes")


def budget(which: tuple[str, int, int]) -> int:
    """The value of one budget (``MODEL_BYTES``, ``CAPTURE_BYTES``, ...): the environment's when
    it holds a valid positive size, else the local or hosted default."""
    name, local, hosted_default = which
    value = parse_bytes(os.environ.get(name, ""))
    return value if value and value > 0 else (hosted_default if hosted() else local)


def job_bytes() -> int:
    """The memory budget of every computation admitted at once (attnviz.jobs): the
    environment's ``ATTNVIZ_JOB_BYTES``; else, hosted, 3 GB (with the loaded models and the
    result cache, sized for the demo's 4.5 GB bound, docs/deploy.md), and locally ``WORKERS`` x
    ``CAPTURE_BYTES``, so that as many captures at their longest input fit as run at once."""
    return budget(JOB_BYTES) or budget(WORKERS) * budget(CAPTURE_BYTES)


def token_cap(limit: int) -> int:
    """``limit`` lowered to $ATTNVIZ_MAX_TOKENS when that is set."""
    cap = os.environ.get(TOKEN_CAP_ENV, "").strip()
    return min(limit, int(cap)) if cap.isdigit() and int(cap) > 0 else limit


# -- what a capture costs --------------------------------------------------------------------
def capture_bytes(n: int, layers: int, heads: int, hidden: int, stacks: int = 1, recorded: bool = True) -> int:
    """Bytes one capture of ``n`` tokens takes beyond the model's weights (an upper estimate).

    ``recorded`` (the model runs SDPA or transformers' attention registry, so attnviz records
    its queries and keys, see attnviz.lazy): queries and keys of every layer in float32
    (``2 x [n, hidden]`` a layer), one layer's working set (about 12 arrays ``[n, hidden]``:
    q, k, v, the MLP's 4x width and outputs), and the maps of a small result, which are built
    once and kept (at most 2^26 weights in float16). Otherwise the maps are materialised: the
    model returns float32 ``[heads, n, n]`` per layer and attnviz keeps float16 (6 bytes a
    score), plus one layer's scores and softmax in float32 (8 bytes a score) and the hidden
    states.
    """
    scores = n * n * heads
    states = stacks * layers * n * hidden * 4 * 12
    if recorded:
        return stacks * layers * n * hidden * 8 + n * hidden * 4 * 12 + min(stacks * layers * scores, 2**26) * 2
    return stacks * layers * scores * 6 + scores * 8 + states


def tokens_within(limit: int, layers: int, heads: int, hidden: int, stacks: int = 1, recorded: bool = True) -> int:
    """The longest input, at most ``limit`` tokens, whose :func:`capture_bytes` fits the
    capture budget (0 when not even one token fits)."""
    room = budget(CAPTURE_BYTES)
    lo, hi = 0, max(int(limit), 0)
    while lo < hi:  # capture_bytes grows with n: bisect on it
        mid = (lo + hi + 1) // 2
        if capture_bytes(mid, layers, heads, hidden, stacks, recorded) <= room:
            lo = mid
        else:
            hi = mid - 1
    return lo
