"""bench/capture: the cost of capturing every attention map, against a plain forward pass.

For minilm-l6 on a 128-token text and dinov2-small on a 224 px photo: the median time of
`attnviz.capture` (everything: tokenising or preprocessing, the eager forward with attention
outputs, the copy to float16, the metadata) against the same model's plain forward pass with
its default (SDPA) attention and inputs already prepared. Target: capture / forward <= 1.5.

    python bench/capture.py [--runs 15]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch  # noqa: E402
import transformers as tf  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data  # noqa: E402

import attnviz  # noqa: E402
from attnviz.models import store  # noqa: E402

TEXT = ("Attention lets every token look at every other token; the model learns where to look. " * 12)


def medians_s(capture, forward, runs: int) -> tuple[float, float]:
    """Median seconds of ``capture()`` and of ``forward()``, run alternately so that a busy
    moment of the machine falls on both alike."""
    capture(), forward()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for fn, out in ((capture, times[0]), (forward, times[1])):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1])


def text_case(runs: int) -> tuple[str, float, float]:
    model = attnviz.load_model("minilm-l6")
    enc = model.tokenizer(TEXT, return_tensors="pt", truncation=True, max_length=128)
    text = model.tokenizer.decode(enc["input_ids"][0, 1:-1])
    assert len(attnviz.capture(model, text).tokens) in range(124, 133)
    plain = tf.AutoModel.from_pretrained(store.model_dir("minilm-l6"), attn_implementation="sdpa").eval()
    capture, forward = medians_s(lambda: attnviz.capture(model, text), lambda: _plain(plain, enc), runs)
    return f"minilm-l6, {enc['input_ids'].shape[1]} tokens", capture, forward


def image_case(runs: int) -> tuple[str, float, float]:
    model = attnviz.load_model("dinov2-small")
    photo = Image.fromarray(data.astronaut())  # 512 x 512: 16 x 16 patches at 224 px
    plain = tf.AutoModel.from_pretrained(store.model_dir("dinov2-small"), attn_implementation="sdpa").eval()
    pixels = torch.randn(1, 3, 224, 224)
    capture, forward = medians_s(lambda: attnviz.capture(model, photo, size=224),
                                 lambda: _plain(plain, {"pixel_values": pixels}), runs)
    return "dinov2-small, 224 px (257 tokens)", capture, forward


def _plain(net, inputs: dict) -> None:
    with torch.inference_mode():
        net(**inputs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    runs = ap.parse_args().runs
    rows = [text_case(runs), image_case(runs)]
    print(f"threads: {torch.get_num_threads()}, runs: {runs} (medians)")
    print(f"{'case':<36}{'capture ms':>12}{'SDPA forward ms':>17}{'ratio':>8}{'target':>8}")
    for name, capture, forward in rows:
        ratio = capture / forward
        print(f"{name:<36}{capture * 1e3:>12.1f}{forward * 1e3:>17.1f}{ratio:>8.2f}{'<= 1.5':>8}")


if __name__ == "__main__":
    main()
