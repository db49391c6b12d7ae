"""bench/explain: how long `attnviz.explain` takes, method by method, and what blank-out costs.

1. minilm-l6 on a 128-token text (6 layers, 12 heads) and dinov2-small on a photo at 224 px
   (257 tokens, 12 layers, 6 heads): the median time of `explain(model, input,
   methods=(m,))` for each method m alone (so each includes its own forward pass), and of all
   seven together, next to one plain forward pass of the model with attention outputs.
2. Blank-out runs n + 1 forward passes (the input, then each token or patch replaced), in
   batches of attnviz.explain.BATCH: the table gives the passes, the time per token, and the
   ratio to one plain forward pass.

    python bench/explain.py [--runs 3]
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from flow import median_s  # noqa: E402
from PIL import Image  # noqa: E402

import attnviz  # noqa: E402
from attnviz.explain import BATCH, IG_STEPS, METHODS, explain  # noqa: E402
from attnviz.pixels import image_pixels  # noqa: E402
from attnviz.samples import sample_bytes  # noqa: E402

TEXT = ("Attention lets every token look at every other token, and the model learns where to look; "
        "whether the pictures it draws follow what the model uses is another question. ") * 6


def text_128(model) -> str:
    """TEXT cut to exactly 128 tokens, [CLS] and [SEP] included."""
    ids = model.tokenizer(TEXT, add_special_tokens=False)["input_ids"][:126]
    text = model.tokenizer.decode(ids)
    assert len(model.tokenizer(text)["input_ids"]) == 128
    return text


def plain_forward(model, input, size=None):
    if model.family == "image":
        pixels, _ = image_pixels(model, input, size)
        return lambda: model.net(pixel_values=pixels, output_attentions=True)
    enc = model.tokenizer(input, return_tensors="pt")
    return lambda: model.net(**enc, output_attentions=True)


def rows_for(name: str, input, runs: int, size: int | None = None) -> list[str]:
    model = attnviz.load_model(name)
    with torch.inference_mode():
        forward, forward_cpu = median_s(plain_forward(model, input, size), runs)
    n = len(explain(model, input, size=size, methods=("attention",)).tokens)
    rows = [f"| {name}, {n} tokens | one plain forward pass | {forward * 1e3:.0f} ms ({forward_cpu * 1e3:.0f} ms CPU) | |"]
    for method in METHODS + ("all seven",):
        methods = METHODS if method == "all seven" else (method,)
        wall, cpu = median_s(lambda methods=methods: explain(model, input, size=size, methods=methods), runs)
        note = ""
        if method == "blankout":
            passes = n + 1
            note = (f"{passes} passes in {-(-passes // BATCH)} batches of {BATCH}: {wall / n * 1e3:.1f} ms a token, "
                    f"{wall / forward:.0f}× one forward")
        elif method == "integrated_gradients":
            note = f"{IG_STEPS} steps, forward + backward each: {wall / forward:.0f}× one forward"
        rows.append(f"| {name}, {n} tokens | {method} | {wall:.2f} s ({cpu:.2f} s CPU) | {note} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    text = text_128(attnviz.load_model("minilm-l6"))
    photo = Image.open(io.BytesIO(sample_bytes("astronaut"))).convert("RGB")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.runs} runs")
    print("| model, input | method | time (median) | notes |")
    print("|---|---|---|---|", flush=True)
    for rows in (rows_for("minilm-l6", text, args.runs), rows_for("dinov2-small", photo, args.runs, size=224)):
        for row in rows:
            print(row, flush=True)


if __name__ == "__main__":
    main()
