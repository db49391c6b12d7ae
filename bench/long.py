"""bench/long: what recording attention costs next to the model's own forward pass, on long inputs.

For smollm2-135m at 2,048 and 8,192 tokens, minilm-l6 at 512 tokens, dinov2-small at 448 px and
a vision-language model on a picture and a prompt of 2,048 tokens in all (``random-paligemma``:
no vision-language model is bundled, so a PaliGemma of random weights is built here and saved to
a temporary folder: a SigLIP tower of 384 wide, 6 layers, 224 px in 14 px patches, 256 image
tokens; a Gemma language model 1,024 wide, 6 layers, 8 heads of 128 and one key/value head,
4,096 wide feed-forward, the bundled byte-level BPE vocabulary of 49,153 tokens):
the time and the peak memory (the process's maximum resident set, model weights included) of

- the plain forward pass with the model's default attention (SDPA), nothing recorded,
- the same forward pass asking for the last position's logits only (``logits_to_keep=1``,
  where the model takes it, as a capture asks), and
- ``attnviz.capture`` on the same input (which runs that same forward pass and records),

each run in a fresh process (after one short warm-up forward pass, alike for all), in turn,
``--runs`` times; the table gives medians and the ratios capture / forward. Memory is counted
twice: the process's maximum resident set, and what the measured step adds to the loaded model,
sampled every millisecond (the maximum resident set hides it when loading the model peaked
higher, as it does for the vision-language checkpoint). Targets: time <= 1.3x and peak memory
<= 1.5x at 2,048 and 8,192 tokens, and for the vision-language capture (above the loaded
model). Then, in the last capture process of each text case, the server side of the text
explorer on that result: the first head heatmap (figure built and serialised, bytes sent), a
head switch (another head), the overview of every head (built once, then cached) and token
focus, with the peak memory so far; then, side by side in the same process, the overview built
again between two plain forward passes of the same input (their mean is the ratio's
denominator) and the overview computed the way it was before, one head at a time. Targets at
8,192 tokens: first heatmap <= 1 s and <= 2 MB, a head switch <= 0.5 s, the overview <= 0.5x
the forward pass.

    python bench/long.py [--runs 3] [--cases smollm2-135m:2048,smollm2-135m:8192:1,minilm-l6:512,dinov2-small:448,random-paligemma:2048]

(a case is MODEL:SIZE[:RUNS], RUNS overriding --runs for that case).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

CASES = "smollm2-135m:2048,smollm2-135m:8192,minilm-l6:512,dinov2-small:448,random-paligemma:2048"
MB = 1e6
PALIGEMMA = "random-paligemma"  # built by build_paligemma (see the module docstring)
PALIGEMMA_TEXT = dict(hidden_size=1024, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=1,
                      head_dim=128, intermediate_size=4096, max_position_embeddings=4096)
PALIGEMMA_VISION = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536,
                        image_size=224, patch_size=14)


def build_paligemma(folder: Path) -> Path:
    """The random PaliGemma of the module docstring, saved under ``folder``."""
    sys.path.insert(0, str(ROOT / "tests"))  # the tests' checkpoint builder (attnviz itself is installed)
    from arch_zoo import save_vlm

    return save_vlm("paligemma", folder / PALIGEMMA, text=PALIGEMMA_TEXT, vision=PALIGEMMA_VISION)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


class Resident:
    """Within: the highest resident set seen (``peak_mb``, MB), sampled every millisecond by a
    thread from /proc/self/statm, and the resident set on entry (``start_mb``). Unlike the
    process's maximum resident set, it is not hidden by a higher mark left by loading the model
    (a vision-language checkpoint's loading peaks above its forward pass)."""

    PAGE_MB = resource.getpagesize() / 2 ** 20

    def now_mb(self) -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.PAGE_MB

    def __enter__(self):
        import threading

        self.start_mb = self.peak_mb = self.now_mb()
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(0.001):
                self.peak_mb = max(self.peak_mb, self.now_mb())
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.now_mb())


def child(mode: str, name: str, size: int, views: bool) -> dict:
    """One measurement in this (fresh) process; returns JSON-able numbers."""
    import numpy as np
    import torch
    from PIL import Image
    from skimage import data

    import attnviz
    from attnviz.pixels import image_input_size
    from attnviz.recorder import default_attention
    from attnviz.recording import last_logits_only

    model = attnviz.load_model(name)
    prompt = None
    if model.family == "vision-language":
        from text import text_of

        given = Image.fromarray(data.chelsea())
        n_image = model.processor.image_processor.image_seq_length
        prompt = text_of(model, size - n_image - 2)  # the processor adds BOS, and a newline after the prompt
        inputs = {k: v for k, v in model.processor(images=[given], text=prompt, return_tensors="pt").items()
                  if k != "labels"}
        inputs["use_cache"] = False
        warm = dict(model.processor(images=[given], text="", return_tensors="pt"), use_cache=False)
        warm.pop("labels", None)
    elif model.family == "image":
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
        if prompt is None:
            warm = {k: v[..., :16] if k == "input_ids" or k == "attention_mask" else v for k, v in inputs.items()}
        if model.family == "image":
            warm["pixel_values"] = inputs["pixel_values"][..., :4 * model.image.patch, :4 * model.image.patch]
        model.net(**warm)
    start_mb = peak_mb()
    with Resident() as resident:  # what the measured step adds to the loaded model
        if mode in ("forward", "forward-last"):  # forward-last: the last position's logits only, as capture asks
            last = last_logits_only(model.net) if mode == "forward-last" else {}
            with default_attention(model.net) as sdpa, torch.inference_mode():
                assert sdpa
                t = time.perf_counter()
                model.net(**inputs, **last)
                out["time_s"] = time.perf_counter() - t
            out["tokens"] = int(next(v for v in inputs.values() if torch.is_tensor(v)).shape[-1])
        else:
            kwargs = {"size": size} if model.family == "image" else {"prompt": prompt} if prompt is not None else {}
            t = time.perf_counter()
            result = attnviz.capture(model, given, **kwargs)
            out["time_s"] = time.perf_counter() - t
            out["tokens"] = len(result.tokens)
            out["lazy"] = all(result.is_lazy(s) for s in result.stacks)
    out["peak_mb"], out["loaded_mb"] = peak_mb(), start_mb
    out["above_mb"] = resident.peak_mb - resident.start_mb
    if views and mode == "capture" and model.family not in ("image", "vision-language"):
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
    built = tempfile.TemporaryDirectory()
    for case in args.cases.split(","):
        name, size, *n_runs = case.split(":")  # MODEL:SIZE[:RUNS]
        n_runs = int(n_runs[0]) if n_runs else args.runs
        folder = str(build_paligemma(Path(built.name))) if name == PALIGEMMA else name
        runs = {"forward": [], "forward-last": [], "capture": []}
        for run in range(n_runs):
            for mode in runs:
                last = run == n_runs - 1 and mode == "capture"
                runs[mode].append(run_child(mode, folder, int(size), views=last))
                print(f"  {case} {mode} run {run + 1}: {runs[mode][-1]['time_s']:.2f} s, "
                      f"peak {runs[mode][-1]['peak_mb']:.0f} MB"
                      + (f", lazy: {runs[mode][-1]['lazy']}" if "lazy" in runs[mode][-1] else ""), flush=True)
        med = {m: {k: statistics.median(r[k] for r in runs[m]) for k in ("time_s", "peak_mb", "loaded_mb", "above_mb")}
               for m in runs}
        unit = "px" if name.startswith(("dinov2", "clip")) else "tokens"
        added_ratio = ((med["capture"]["peak_mb"] - med["capture"]["loaded_mb"])
                       / max(med["forward"]["peak_mb"] - med["forward"]["loaded_mb"], 1))
        rows.append(f"| {name} | {size} {unit} ({runs['capture'][0]['tokens']} tokens), {n_runs} runs "
                    f"| {med['forward']['time_s']:.2f} s | {med['capture']['time_s']:.2f} s "
                    f"| {med['capture']['time_s'] / med['forward']['time_s']:.2f}x "
                    f"| {med['forward']['peak_mb']:.0f} MB | {med['capture']['peak_mb']:.0f} MB "
                    f"| {med['capture']['peak_mb'] / med['forward']['peak_mb']:.2f}x "
                    f"| {added_ratio:.2f}x | {med['forward']['above_mb']:.0f} MB "
                    f"| {med['capture']['above_mb']:.0f} MB "
                    f"| {med['capture']['above_mb'] / max(med['forward']['above_mb'], 1):.2f}x "
                    f"| {med['forward-last']['above_mb']:.0f} MB "
                    f"| {med['capture']['above_mb'] / max(med['forward-last']['above_mb'], 1):.2f}x |")
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
          "| peak ratio | ratio above the loaded model | forward above the loaded model, sampled "
          "| capture above, sampled | sampled ratio | forward, last logits only, above, sampled "
          "| capture / that |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    if view_rows:
        print("\n| model | tokens | first head heatmap | sent | head switch | overview build (all heads) "
              "| overview again, beside the forward pass | overview / forward | one head at a time (before) "
              "| overview figure | token focus (first) | peak with views |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        print("\n".join(view_rows))


if __name__ == "__main__":
    main()
