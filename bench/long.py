"""bench/long: what recording attention costs next to the model's own forward pass, on long inputs.

For smollm2-135m at 2,048 and 8,192 tokens, minilm-l6 at 512 tokens and dinov2-small at 448 px:
the time and the peak memory (the process's maximum resident set, model weights included) of

- the plain forward pass with the model's default attention (SDPA), nothing recorded, and
- ``attnviz.capture`` on the same input (which runs that same forward pass and records),

each run in a fresh process (after one short warm-up forward pass, alike for both), alternately,
``--runs`` times; the table gives medians and the ratios capture / forward. Targets: time <= 1.3x and peak memory <= 1.5x at 2,048 and 8,192
tokens. Then, in the last capture process of each text case, the server side of the text
explorer on that result: the first head heatmap (figure built and serialised, bytes sent), a
head switch (another head), the overview of every head (built once, then cached) and token
focus, with the peak memory so far; then, side by side in the same process, the overview built
again between two plain forward passes of the same input (their mean is the ratio's
denominator) and the overview computed the way it was before, one head at a time. Targets at
8,192 tokens: first heatmap <= 1 s and <= 2 MB, a head switch <= 0.5 s, the overview <= 0.5x
the forward pass.

    python bench/long.py [--runs 3] [--cases smollm2-135m:2048,smollm2-135m:8192:1,minilm-l6:512,dinov2-small:448]

(a case is MODEL:SIZE[:RUNS], RUNS overriding --runs for that case).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

CASES = "smollm2-135m:2048,smollm2-135m:8192,minilm-l6:512,dinov2-small:448"
MB = 1e6


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def child(mode: str, name: str, size: int, views: bool) -> dict:
    """One measurement in this (fresh) process; returns JSON-able numbers."""
    import numpy as np
    import torch
    from PIL import Image
    from skimage import data

    import attnviz
    from attnviz.pixels import image_input_size
    from attnviz.recorder import default_attention

    model = attnviz.load_model(name)
    if model.family == "image":
        photo = Image.fromarray(data.chelsea())
        spec = model.image
        w, h = image_input_size(*photo.size, size, spec.patch)
        pixels = np.asarray(photo.resize((w, h), Image.Resampling.BICUBIC), np.float32) / 255.0
        pixels = (pixels - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
        inputs = {"pixel_values": torch.from_numpy(pixels.transpose(2, 0, 1)[None].copy())}
        if "interpolate_pos_encoding" in model.net.forward.__code__.co_varnames:
            inputs["interpolate_pos_encoding"] = True
        given = photo
    else:
        from text import text_of

        given = text_of(model, size)
        ids = model.tokenizer(given, return_tensors="pt", truncation=True, max_length=model.max_tokens)
        inputs = {"input_ids": ids["input_ids"], "attention_mask": torch.ones_like(ids["input_ids"])}
        if model.family == "decoder":
            inputs["use_cache"] = False
    out = {"tokens": None}
    with default_attention(model.net), torch.inference_mode():  # one-time set-up, for both modes alike
        warm = {k: v[..., :16] if k == "input_ids" or k == "attention_mask" else v for k, v in inputs.items()}
        if model.family == "image":
            warm["pixel_values"] = inputs["pixel_values"][..., :4 * model.image.patch, :4 * model.image.patch]
        model.net(**warm)
    start_mb = peak_mb()
    if mode == "forward":
        with default_attention(model.net) as sdpa, torch.inference_mode():
            assert sdpa
            t = time.perf_counter()
            model.net(**inputs)
            out["time_s"] = time.perf_counter() - t
        out["tokens"] = int(next(v for v in inputs.values() if torch.is_tensor(v)).shape[-1])
    else:
        kwargs = {"size": size} if model.family == "image" else {}
        t = time.perf_counter()
        result = attnviz.capture(model, given, **kwargs)
        out["time_s"] = time.perf_counter() - t
        out["tokens"] = len(result.tokens)
        out["lazy"] = all(result.is_lazy(s) for s in result.stacks)
    out["peak_mb"], out["loaded_mb"] = peak_mb(), start_mb
    if views and mode == "capture" and model.family != "image":
        out.update(view_times(result, lambda: forward_s(model, inputs)))
    return out


def forward_s(model, inputs: dict) -> float:
    """Seconds of one plain forward pass of ``inputs`` with the model's default attention."""
    import torch

    from attnviz.recorder import default_attention

    with default_attention(model.net), torch.inference_mode():
        t = time.perf_counter()
        model.net(**inputs)
        return time.perf_counter() - t


def view_times(result, forward) -> dict:
    """Server time and bytes of the text explorer's views on ``result``; the overview beside
    ``forward()`` (seconds of a plain forward pass of the same input), and one head at a time."""
    import numpy as np

    from attnviz.viz import text as viz

    stack = result.stacks[0]
    options = viz.TextOptions()
    layer = result.attn[stack].shape[0] - 1
    t = time.perf_counter()
    fig, _ = viz.head_heatmap(result, stack, layer, 0, options)
    first_bytes = len(fig.to_json())
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    fig, _ = viz.head_heatmap(result, stack, layer, 1, options)
    fig.to_json()
    switch_s = time.perf_counter() - t
    t = time.perf_counter()
    thumbs = viz.thumbnails(result, stack, options)
    overview_build_s = time.perf_counter() - t
    t = time.perf_counter()
    fig, _ = viz.overview(result, stack, thumbs, options)
    overview_bytes = len(fig.to_json())
    overview_draw_s = time.perf_counter() - t
    t = time.perf_counter()
    viz.token_focus(result, stack, 0, options, query=len(result.tokens) - 1, key=len(result.tokens) - 1)
    focus_s = time.perf_counter() - t
    views_peak_mb = peak_mb()  # before the forward passes below, which take more
    before = forward()
    t = time.perf_counter()
    again = viz.thumbnails(result, stack, options)
    overview_again_s = time.perf_counter() - t
    after = forward()
    n_layers, n_heads = result.attn[stack].shape[:2]
    t = time.perf_counter()
    per_head = np.stack([[viz.head_values(result, stack, layer, head, thumbs.queries, thumbs.keys)
                          for head in range(n_heads)] for layer in range(n_layers)])
    per_head_s = time.perf_counter() - t
    assert np.abs(per_head - again.values).max() < 1e-4, "the two ways give the same thumbnails"
    return {"heatmap_first_s": first_s, "heatmap_mb": first_bytes / MB, "head_switch_s": switch_s,
            "overview_build_s": overview_build_s, "overview_again_s": overview_again_s,
            "overview_forward_s": (before + after) / 2, "overview_per_head_s": per_head_s,
            "overview_draw_s": overview_draw_s, "overview_mb": overview_bytes / MB, "focus_first_s": focus_s,
            "views_peak_mb": views_peak_mb}


def run_child(mode: str, name: str, size: int, views: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, name, str(size)] + (["--views"] if views else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cases", default=CASES)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "MODEL", "SIZE"))
    parser.add_argument("--views", action="store_true")
    args = parser.parse_args()
    if args.child:
        mode, name, size = args.child
        print(json.dumps(child(mode, name, int(size), args.views)))
        return
    import torch

    print(f"torch threads: {torch.get_num_threads()}, runs: {args.runs}, each in a fresh process\n")
    rows, view_rows = [], []
    for case in args.cases.split(","):
        name, size, *n_runs = case.split(":")  # MODEL:SIZE[:RUNS]
        n_runs = int(n_runs[0]) if n_runs else args.runs
        runs = {"forward": [], "capture": []}
        for run in range(n_runs):
            for mode in ("forward", "capture"):
                last = run == n_runs - 1 and mode == "capture"
                runs[mode].append(run_child(mode, name, int(size), views=last))
                print(f"  {case} {mode} run {run + 1}: {runs[mode][-1]['time_s']:.2f} s, "
                      f"peak {runs[mode][-1]['peak_mb']:.0f} MB", flush=True)
        med = {m: {k: statistics.median(r[k] for r in runs[m]) for k in ("time_s", "peak_mb", "loaded_mb")}
               for m in runs}
        unit = "px" if name.startswith(("dinov2", "clip")) else "tokens"
        added_ratio = ((med["capture"]["peak_mb"] - med["capture"]["loaded_mb"])
                       / max(med["forward"]["peak_mb"] - med["forward"]["loaded_mb"], 1))
        rows.append(f"| {name} | {size} {unit} ({runs['capture'][0]['tokens']} tokens), {n_runs} runs "
                    f"| {med['forward']['time_s']:.2f} s | {med['capture']['time_s']:.2f} s "
                    f"| {med['capture']['time_s'] / med['forward']['time_s']:.2f}x "
                    f"| {med['forward']['peak_mb']:.0f} MB | {med['capture']['peak_mb']:.0f} MB "
                    f"| {med['capture']['peak_mb'] / med['forward']['peak_mb']:.2f}x "
                    f"| {added_ratio:.2f}x |")
        v = runs["capture"][-1]
        if "heatmap_first_s" in v:
            view_rows.append(f"| {name} | {v['tokens']} | {v['heatmap_first_s']:.2f} s | {v['heatmap_mb']:.2f} MB "
                             f"| {v['head_switch_s']:.2f} s | {v['overview_build_s']:.1f} s "
                             f"| {v['overview_again_s']:.1f} s between forward passes of {v['overview_forward_s']:.1f} s "
                             f"| {v['overview_again_s'] / v['overview_forward_s']:.2f}x "
                             f"| {v['overview_per_head_s']:.1f} s ({v['overview_per_head_s'] / v['overview_forward_s']:.2f}x) "
                             f"| {v['overview_draw_s']:.2f} s, {v['overview_mb']:.2f} MB | {v['focus_first_s']:.1f} s "
                             f"| {v['views_peak_mb']:.0f} MB |")
    print("\n| model | input | forward (SDPA) | capture | time ratio | forward peak | capture peak "
          "| peak ratio | ratio above the loaded model |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    if view_rows:
        print("\n| model | tokens | first head heatmap | sent | head switch | overview build (all heads) "
              "| overview again, beside the forward pass | overview / forward | one head at a time (before) "
              "| overview figure | token focus (first) | peak with views |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        print("\n".join(view_rows))


if __name__ == "__main__":
    main()
