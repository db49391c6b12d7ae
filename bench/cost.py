"""bench/cost: the mechanics lab's Cost view as a table: time and peak memory of one attention
head (d = 64, float32) for global, local (w = 64), top-k (k = 32) and torch's fused global
attention, n = 128 to 16,384, measured with attnviz.lab.cost.measure (median of 3 runs,
one CPU thread), each against its formula (attnviz.analysis.mechanics.cost_formula; seconds
from flops at the throughput of the largest global run).

    python bench/cost.py [--longest 16384] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys

from attnviz.analysis.mechanics import cost_formula  # noqa: E402
from attnviz.lab.cost import measure  # noqa: E402

D, WINDOW, TOP = 64, 64, 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--longest", type=int, default=16384)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    lengths = [n for n in (128 * 2 ** i for i in range(10)) if n <= args.longest]
    points = measure(lengths, d=D, window=WINDOW, top=TOP, threads=args.threads,
                     progress=lambda f, m: print(f"\r{f:4.0%} {m:<40}", end="", file=sys.stderr, flush=True))
    print(file=sys.stderr)

    def formula(p):  # the fused kernel computes global attention
        return cost_formula(p.n, "global" if p.method == "fused" else p.method, D, WINDOW, TOP)

    largest = max((p for p in points if p.method == "global" and p.seconds), key=lambda p: p.n)
    rate = formula(largest).flops / largest.seconds
    print(f"d = {D}, w = {WINDOW}, k = {TOP}, {args.threads} thread(s); throughput of global at n = {largest.n:,}: "
          f"{rate / 1e9:.1f} GFLOP/s")
    print(f"{'method':<7} {'n':>6}  {'ms':>9}  {'time/formula':>12}  {'MB':>8}  {'memory/formula':>14}  "
          f"{'x time vs n/2':>13}")
    previous = {}
    for p in points:
        if p.skipped:
            print(f"{p.method:<7} {p.n:>6}  skipped: {p.skipped}")
            continue
        f = formula(p)
        growth = f"{p.seconds / previous[p.method]:.1f}" if p.method in previous else ""
        previous[p.method] = p.seconds
        print(f"{p.method:<7} {p.n:>6}  {p.seconds * 1e3:>9.2f}  {p.seconds * rate / f.flops:>12.2f}  "
              f"{p.peak_bytes / 1e6:>8.1f}  {p.peak_bytes / f.bytes:>14.2f}  {growth:>13}")


if __name__ == "__main__":
    main()
