"""bench/image: time from a photo upload to the first overlay on the image page, against the
model's forward pass alone.

For dinov2-small at 224 px (16 x 16 patches) and 448 px (32 x 32), and clip-vit-b16 at 224 px
(14 x 14), on the 512 x 512 astronaut photo:

- upload -> overlay: the page run that follows an upload (streamlit's AppTest, the real page
  script: open and check the image, capture every attention map, draw the CLS overlay, build
  and serialise its figure). Every run uploads different bytes (one pixel changed), so
  nothing comes from a cache but the loaded model;
- capture: ``attnviz.capture`` alone (preprocessing, eager forward with attention outputs,
  copy to float16);
- forward, eager: the model's own forward with ``output_attentions=True`` (what capture runs);
- forward, SDPA: the same weights' plain forward with fused attention, inputs ready.

Each timed call runs in a fresh thread, as Streamlit runs each page script: on a busy 2-core
machine the same forward pass took 2.3 s in the main thread and 0.19 s in a fresh one (torch's
OpenMP settings are per thread), so timing the two sides in different kinds of thread would
compare nothing.

The ratios divide upload -> overlay by each forward, round by round (each round times the
four back to back, so a busy machine slows all of them alike); shown are the medians over
``--runs`` rounds after a warm-up round.

    python bench/image.py [--runs 5]
"""
from __future__ import annotations

import argparse
import io
import logging
import statistics
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers as tf  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

import attnviz  # noqa: E402
from attnviz.models import store  # noqa: E402

CASES = [("dinov2-small", 224), ("dinov2-small", 448), ("clip-vit-b16", 224)]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def seconds(fn) -> float:
    """Wall time of ``fn()`` run in a fresh thread, as Streamlit (and AppTest) runs each page
    script; the calling thread only waits."""
    elapsed = []

    def run() -> None:
        with torch.inference_mode():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            elapsed.append(time.perf_counter() - t)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    return elapsed[0]


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def page_for(name: str, size: int) -> AppTest:
    """The image page with ``name`` picked at ``size`` px and its model loaded."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.query_params.update(model=name, size=str(size))
    at.run()
    at.switch_page("pages/image.py").run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    return at


def case(name: str, size: int, photo: np.ndarray, runs: int) -> dict:
    """Medians over ``runs`` rounds; each round times all four back to back, so that the
    ratios compare times taken under the same load (the per-round ratios' medians)."""
    model = attnviz.load_model(name)
    image = Image.fromarray(photo)
    result = attnviz.capture(model, image, size=size)
    h, w = result.image.shape[:2]
    pixels = torch.randn(1, 3, h, w, device=model.device)
    kwargs = {"interpolate_pos_encoding": True}
    cls = tf.CLIPVisionModel if name.startswith("clip") else tf.AutoModel
    sdpa = cls.from_pretrained(store.model_dir(name), attn_implementation="sdpa").eval().to(model.device)
    at = page_for(name, size)

    def upload(i: int) -> None:
        changed = photo.copy()
        changed[0, 0, 0] ^= i + 1  # new bytes: no cached capture
        at.file_uploader(key="image_upload").set_value(("astronaut.png", png(changed), "image/png"))

    def page_run() -> float:
        t = time.perf_counter()
        at.run()  # in a script thread of its own
        elapsed = time.perf_counter() - t
        assert not at.exception and not at.error and at.get("plotly_chart"), "no overlay"
        return elapsed

    rounds = []
    for i in range(runs + 1):  # the first round warms up
        upload(i)
        rounds.append({
            "overlay": page_run(),
            "capture": seconds(lambda: attnviz.capture(model, image, size=size)),
            "eager": seconds(lambda: model.net(pixel_values=pixels, output_attentions=True, **kwargs)),
            "sdpa": seconds(lambda: sdpa(pixel_values=pixels, **kwargs)),
        })
    rounds = rounds[1:]
    out = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    out["per_eager"] = statistics.median(r["overlay"] / r["eager"] for r in rounds)
    out["per_sdpa"] = statistics.median(r["overlay"] / r["sdpa"] for r in rounds)
    g = result.grid
    out["case"] = f"{name}, {size} px ({g.rows}x{g.cols}+{g.prefix} tokens)"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    runs = ap.parse_args().runs
    logging.getLogger("streamlit").setLevel(logging.ERROR)
    tf.logging.set_verbosity_error()
    photo = data.astronaut()
    rows = [case(name, size, photo, runs) for name, size in CASES]
    device = attnviz.load_model(CASES[0][0]).device
    print(f"device: {device}, torch threads: {torch.get_num_threads()}, runs: {runs} (medians)")
    print(f"{'case':<40}{'upload->overlay ms':>20}{'capture ms':>12}{'eager fwd ms':>14}{'SDPA fwd ms':>13}"
          f"{'/eager':>8}{'/SDPA':>8}")
    for r in rows:
        print(f"{r['case']:<40}{r['overlay'] * 1e3:>20.0f}{r['capture'] * 1e3:>12.0f}{r['eager'] * 1e3:>14.0f}"
              f"{r['sdpa'] * 1e3:>13.0f}{r['per_eager']:>8.2f}{r['per_sdpa']:>8.2f}")


if __name__ == "__main__":
    main()
