"""bench/flow: exact attention flow, how fast, and whether it equals the reference.

1. dinov2-small at 224 px (257 tokens, 12 layers), each sample photo cropped square: the
   median time of `attention_flow` from CLS to every input token (capacities included), next
   to rollout. Target: under 1 s on a 2-core machine.
2. minilm-l6 on a 32-token text (6 layers): the same flow from CLS against the reference
   approach of the paper's code, networkx Edmonds-Karp once per (CLS, token) pair on a graph
   built once. With the same integer capacities the values must be equal; with the paper's
   float capacities they may differ by the rounding (2**-25 per edge).

    python bench/flow.py [--runs 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' reference flow (attnviz itself is installed)

import numpy as np  # noqa: E402
from flow_reference import networkx_flows  # noqa: E402
from PIL import Image  # noqa: E402

import attnviz  # noqa: E402
from attnviz.analysis.flow import attention_flow, augmented_layer, flow_capacities, max_flow_values, rollout  # noqa: E402
from attnviz.samples import SAMPLES, sample_bytes  # noqa: E402

TEXT = "Attention lets every token look at every other token, and the model learns where to look. " * 4


def median_s(fn, runs: int) -> tuple[float, float]:
    """Median wall-clock and CPU seconds of ``fn()`` (CPU time is what a busy shared machine
    does not inflate)."""
    wall, cpu = [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def square(photo: Image.Image) -> Image.Image:
    side = min(photo.size)
    left, top = (photo.width - side) // 2, (photo.height - side) // 2
    return photo.crop((left, top, left + side, top + side))


def image_rows(runs: int) -> list[str]:
    import io

    model = attnviz.load_model("dinov2-small")
    rows = []
    for name in SAMPLES:
        result = attnviz.capture(model, square(Image.open(io.BytesIO(sample_bytes(name)))), size=224)
        attn = result.attn["encoder"]
        flow_s, flow_cpu = median_s(lambda attn=attn: attention_flow(attn, 0), runs)
        rollout_s, _ = median_s(lambda attn=attn: rollout(attn, source=0), runs)
        rows.append(f"| dinov2-small, {name} | {attn.shape[-1]} | {attn.shape[0]} | {flow_s:.3f} s ({flow_cpu:.3f} s CPU) "
                    f"| {rollout_s * 1e3:.1f} ms |")
    return rows


def text_rows(runs: int) -> list[str]:
    model = attnviz.load_model("minilm-l6")
    ids = model.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    text = model.tokenizer.decode(ids[:30])
    result = attnviz.capture(model, text)
    attn = result.attn["encoder"]
    n, layers = attn.shape[-1], attn.shape[0]
    assert n == 32, n
    ours_s, ours_cpu = median_s(lambda: attention_flow(attn, 0), runs)
    ours = attention_flow(attn, 0)
    caps = flow_capacities(attn)
    assert (max_flow_values(caps, 0) == networkx_flows(caps, 0)).all()
    t, c = time.perf_counter(), time.process_time()
    reference_int = networkx_flows(caps, 0)
    reference_s, reference_cpu = time.perf_counter() - t, time.process_time() - c
    reference_float = networkx_flows(np.stack([augmented_layer(a) for a in attn]), 0)
    diff_int = np.abs(ours - reference_int / reference_int.sum()).max()
    diff_float = np.abs(ours - reference_float / reference_float.sum()).max()
    return [
        f"| minilm-l6, 32-token text: attnviz | {n} | {layers} | {ours_s * 1e3:.1f} ms ({ours_cpu * 1e3:.1f} ms CPU) | |",
        f"| minilm-l6, 32-token text: networkx Edmonds-Karp per pair | {n} | {layers} | {reference_s:.2f} s "
        f"({reference_cpu:.2f} s CPU) | |",
        "",
        f"speed ratio networkx / attnviz: {reference_s / ours_s:,.0f}x wall-clock, {reference_cpu / ours_cpu:,.0f}x CPU",
        f"max |difference| after normalising, same integer capacities: {diff_int:.1e} (values equal)",
        f"max |difference| after normalising, against networkx on float capacities: {diff_float:.1e}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print("| case | tokens | layers | exact flow, one source to all | rollout, one row |")
    print("|---|---|---|---|---|")
    for row in image_rows(args.runs) + text_rows(args.runs):
        print(row)


if __name__ == "__main__":
    main()
