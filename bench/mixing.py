"""bench/mixing: time and peak memory of each context-mixing method (attnviz.mixing) per model
and input size: minilm-l6 and smollm2-135m at 128 and 512 tokens, dinov2-small at 224 px.

Each row is one call of attnviz.mixing with the capture given (so the capture is not counted)
and one method besides ``attention`` (always computed); ``value_norms`` is the lazy per-head
norms alone (attention x value norm). Time: the median of --repeats runs, seconds. Peak: the
process's peak resident memory during the call above its resident memory before it (Linux:
the peak is reset through /proc/self/clear_refs before each run), MB. Value zeroing runs every
layer once per token, so it is the slow row; at 512 tokens it is at its cap. One CPU thread
(torch.set_num_threads(1)), as the other benches, so that a shared machine's figures hold.

    python bench/mixing.py [--repeats 3] [--quick] [--models M,..] [--methods value_norms,alti,..]
    (--quick: 128 tokens and 224 px only)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import attnviz  # noqa: E402
from attnviz.inputs import open_image  # noqa: E402
from attnviz.mixing import mixing, refusals, value_norms  # noqa: E402
from attnviz.samples import sample_bytes  # noqa: E402

METHODS = ("value_norms", "attention_norm", "globenc", "alti", "value_zeroing")
WORDS = ("the keys to the old cabinet are on the table near the window while the cat sleeps and the rain "
         "falls over the quiet town all night long").split()


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def measured(run) -> tuple[float, float]:
    """(seconds, peak MB above the resident memory before) of one call of ``run``."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    before = status_kb("VmRSS")
    t0 = time.perf_counter()
    run()
    seconds = time.perf_counter() - t0
    return seconds, max(0, status_kb("VmHWM") - before) / 1024


def text_of(model, tokens: int) -> str:
    """A text of whole words the model reads as at most ``tokens`` tokens (special tokens
    included), as long as that allows."""
    words = WORDS * (tokens // len(WORDS) + 2)

    def length(n: int) -> int:
        return len(model.tokenizer(" ".join(words[:n]))["input_ids"])

    low, high = 1, len(words)
    while low < high:  # the most words that fit
        mid = (low + high + 1) // 2
        low, high = (mid, high) if length(mid) <= tokens else (low, mid - 1)
    return " ".join(words[:low])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="128 tokens and 224 px only")
    parser.add_argument("--models", help="comma-separated: only these models")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated: only these rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = [("minilm-l6", 128), ("smollm2-135m", 128), ("dinov2-small", 224)]
    if not args.quick:
        cases[2:2] = [("minilm-l6", 512), ("smollm2-135m", 512)]
    if args.models:
        cases = [c for c in cases if c[0] in args.models.split(",")]
    print(f"{'model':<14} {'input':>9} {'method':<15} {'median s':>9} {'peak MB':>8}")
    for name, size in cases:
        model = attnviz.load_model(name)
        if model.family == "image":
            input, options, what = open_image(sample_bytes("cat"), "cat.png"), {"size": size}, f"{size} px"
        else:
            input, options = text_of(model, size), {}
        result = attnviz.capture(model, input, **options)
        what = what if model.family == "image" else f"{len(result.tokens)} tok"
        refused = refusals(model)
        for method in (m for m in METHODS if m in args.methods.split(",")):
            if method in refused:
                print(f"{name:<14} {what:>9} {method:<15} {'n/a':>9} {'':>8}  ({refused[method][:60]}…)")
                continue
            run = (partial(value_norms, model, input, **options) if method == "value_norms" else
                   partial(mixing, model, input, methods=(method,), result=result, **options))
            runs = [measured(run) for _ in range(args.repeats)]
            print(f"{name:<14} {what:>9} {method:<15} {statistics.median(s for s, _ in runs):>9.2f} "
                  f"{max(p for _, p in runs):>8.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
