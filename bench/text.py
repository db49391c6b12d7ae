"""bench/text: what the text explorer costs at 128, 512 and 2,048 tokens.

For minilm-l6 at 128 and 512 tokens and smollm2-135m at 2,048 tokens: the time of
`attnviz.capture`, then per view the median time to build its figure and the bytes of the
figure sent to the browser (``len(fig.to_json())``: Streamlit sends that JSON), and the
server time of a head switch: rebuilding the heatmap and its JSON for another head, and (up
to 512 tokens) a whole AppTest rerun after the head select box changes (an upper bound: the
browser reruns only the view's fragment, AppTest reruns the whole page, capture cached).
Targets: a view under 1 MB at 512 tokens and under 2 MB at 2,048; a head switch under 0.3 s
at 512 tokens.

    python bench/text.py [--runs 5] [--skip-2048]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

import attnviz  # noqa: E402
from attnviz.viz import text as viz  # noqa: E402

PARAGRAPH = (
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having "
    "nothing to do: once or twice she had peeped into the book her sister was reading, but it had "
    "no pictures or conversations in it, and what is the use of a book, thought Alice, without "
    "pictures or conversations? So she was considering in her own mind (as well as she could, for "
    "the hot day made her feel very sleepy and stupid), whether the pleasure of making a "
    "daisy-chain would be worth the trouble of getting up and picking the daisies, when suddenly a "
    "White Rabbit with pink eyes ran close by her. ")
CASES = [("minilm-l6", 128), ("minilm-l6", 512), ("smollm2-135m", 2048)]
OPTIONS = viz.TextOptions()  # the page's defaults: tokens, specials shown, colour 0..row max
MB = 1e6


def text_of(model: attnviz.Model, n_tokens: int) -> str:
    """A text that the model reads as about ``n_tokens`` tokens (specials included)."""
    ids = model.tokenizer(PARAGRAPH * (n_tokens // 100 + 2), add_special_tokens=False)["input_ids"]
    with_special, without = (len(model.tokenizer("a", add_special_tokens=flag)["input_ids"]) for flag in (True, False))
    n_special = with_special - without
    return model.tokenizer.decode(ids[:n_tokens - n_special])


def timed(fn, runs: int):
    """(median seconds over ``runs`` calls after one warm-up, the last value)."""
    value = fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), value


def view_builders(result: attnviz.AttentionResult, stack: str):
    """(view name, function building its figures) for what the page shows by default."""
    layer = result.attn[stack].shape[0] - 1
    heads = list(range(result.attn[stack].shape[1]))
    q, _ = viz.axes(result, stack, OPTIONS)
    token = len(q) - 1
    thumbs = viz.thumbnails(result, stack, OPTIONS)  # the page computes them once per result
    views = [("head heatmap", lambda: [viz.head_heatmap(result, stack, layer, 0, OPTIONS)[0]])]
    if len(q) > viz.HEATMAP_MAX:
        views.append(("zoom window", lambda: [viz.head_heatmap(result, stack, layer, 0, OPTIONS, zoom=(0, 0))[0]]))
    views += [
        ("model overview, first visit", lambda: [viz.overview(result, stack, viz.thumbnails(result, stack, OPTIONS),
                                                              OPTIONS, (layer, 0))[0]]),
        ("model overview, thumbnails cached", lambda: [viz.overview(result, stack, thumbs, OPTIONS, (layer, 1))[0]]),
        ("token lines (all heads)", lambda: [viz.token_lines(result, stack, layer, heads, OPTIONS)[0]]),
        ("token focus (both)", lambda: list(viz.token_focus(result, stack, 0, OPTIONS, query=token, key=token)[:2])),
        ("token focus, mean of heads", lambda: list(viz.token_focus(result, stack, "mean", OPTIONS, query=token,
                                                                    key=token)[:2])),
    ]
    return views


def apptest_head_switch(name: str, text: str, runs: int) -> float:
    """Median seconds of an AppTest rerun after switching the heatmap's head."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=900)
    at.query_params["model"] = name
    at.run()
    at.switch_page("pages/text.py").run()
    at.text_area(key="_text_box").set_value(text).run()  # captures once; later runs hit the cache
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    times = []
    for head in range(1, runs + 1):
        t = time.perf_counter()
        at.selectbox(key="text_lh_head").set_value(head).run()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_case(name: str, n: int, runs: int) -> tuple[list[tuple], tuple]:
    """Rows (case, view, seconds, JSON bytes, target bytes) and the head-switch timings of one
    model at about n tokens."""
    rows = []
    model = attnviz.load_model(name)
    text = text_of(model, n)
    result = attnviz.capture(model, text)
    capture_s = result.timings["total_s"] if n >= 2048 else timed(lambda: attnviz.capture(model, text), 2)[0]
    stack = result.stacks[0]
    n_tokens = len(result.tokens)
    target = 1 * MB if n <= 512 else 2 * MB
    case = f"{name}, {n_tokens} tokens"
    rows.append((case, "capture", capture_s, None, None))
    for view, build in view_builders(result, stack):
        seconds, figs = timed(build, 1 if n >= 2048 else runs)
        size = sum(len(f.to_json()) for f in figs)
        rows.append((case, view, seconds, size, target))
    layer = result.attn[stack].shape[0] - 1
    switch = timed(lambda: viz.head_heatmap(result, stack, layer, 1, OPTIONS)[0].to_json(), runs)[0]
    switch_mean = timed(lambda: viz.head_heatmap(result, stack, layer, "mean", OPTIONS)[0].to_json(), runs)[0]
    apptest = apptest_head_switch(name, text, 3) if n <= 512 else None
    return rows, (case, switch, switch_mean, apptest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--skip-2048", action="store_true", help="leave out smollm2-135m at 2,048 tokens")
    args = ap.parse_args()
    cases = [c for c in CASES if not (args.skip_2048 and c[1] == 2048)]
    print(f"torch threads: {torch.get_num_threads()}, runs: {args.runs} (medians; capture at 2,048: one run)")
    rows, switches = [], []
    for name, n in cases:  # one case at a time: its model and result are freed before the next
        case_rows, switch = bench_case(name, n, args.runs)
        rows += case_rows
        switches.append(switch)

    print(f"\n{'case':<28}{'view':<36}{'time s':>9}{'JSON MB':>10}{'target MB':>11}{'ok':>5}")
    for case, view, seconds, size, target in rows:
        if size is None:
            print(f"{case:<28}{view:<36}{seconds:>9.3f}")
        else:
            print(f"{case:<28}{view:<36}{seconds:>9.3f}{size / MB:>10.3f}{target / MB:>11.1f}"
                  f"{'yes' if size < target else 'NO':>5}")
    print("\nhead switch, server time (target < 0.3 s at 512 tokens)")
    print(f"{'case':<28}{'figure+JSON s':>15}{'mean of heads s':>17}{'AppTest rerun s':>17}")
    for case, switch, switch_mean, apptest in switches:
        at = f"{apptest:>17.3f}" if apptest is not None else f"{'-':>17}"
        print(f"{case:<28}{switch:>15.3f}{switch_mean:>17.3f}{at}")


if __name__ == "__main__":
    main()
