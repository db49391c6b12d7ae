"""bench/export: what a figure download, `plot` and `report` cost.

For minilm-l6 on a 128-token text and dinov2-small on a 224 px photo: the median time to
render the head heatmap (text) and the rollout overlay (image) as SVG, PDF and 3x PNG with
attnviz.export (each render starts a headless Chromium), with the file sizes; then the median
time and the size of the offline HTML report of each result.

    python bench/export.py [--runs 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

from PIL import Image
from skimage import data

import attnviz
from attnviz import figures
from attnviz.export import FORMATS, figure_bytes
from attnviz.report import report_html

TEXT = ("Attention lets every token look at every other token; the model learns where to look. " * 12)


def timed(fn, runs: int):
    times, out = [], None
    for _ in range(runs):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    text = attnviz.capture(attnviz.load_model("minilm-l6"), TEXT)
    image = attnviz.capture(attnviz.load_model("dinov2-small"), Image.fromarray(data.chelsea()), size=224)
    cases = {f"minilm-l6, {len(text.tokens)} tokens, heatmap": (text, figures.heatmap(text)),
             f"dinov2-small, {image.grid.rows}x{image.grid.cols} patches, rollout": (image, figures.rollout(image))}
    print(f"median of {runs} runs")
    print(f"{'figure':<44}{'format':<8}{'seconds':>9}{'size kB':>10}")
    for name, (_, fig) in cases.items():
        for fmt in FORMATS:
            seconds, out = timed(lambda fig=fig, fmt=fmt: figure_bytes(fig, fmt), runs)
            print(f"{name:<44}{fmt:<8}{seconds:>9.2f}{len(out) / 1e3:>10.0f}")
    print(f"\n{'report of':<44}{'seconds':>17}{'size MB':>10}")
    for name, (result, _) in cases.items():
        seconds, out = timed(lambda result=result: report_html(result), runs)
        print(f"{name.rsplit(',', 1)[0]:<44}{seconds:>17.2f}{len(out.encode()) / 1e6:>10.1f}")


if __name__ == "__main__":
    main()
