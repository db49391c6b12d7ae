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

``--faithfulness`` measures instead, on minilm-l6 over the sentences of bench/sentences.txt
(``--sentences N``: the first N; all 60 by default), three things per sentence, then their
mean ± std (population) over the sentences:

1. Every method's Spearman correlation with blank-out over the non-special tokens (as
   attnviz.explain's scoreboard): explain's seven methods, and for each mixing method (attention,
   attention_norm, globenc, alti, value_zeroing; one attnviz.mixing call with the capture given)
   its last layer and its rollout carried to the output (``mix @ M[L-1]`` and ``mix @ rollout``,
   ``mix`` the mean of explain's output rows: every token of minilm-l6's pooled embedding);
   and, as a diagnostic, value zeroing rolled out as attention is, each layer
   ``rownorm(0.5 M + 0.5 I)`` (zeroing token i's value leaves its residual in place, so its
   diagonal does not hold the residual stream as ALTI's does), and the mean diagonal of each
   method's layers.
2. The routes (attnviz.analysis.routes) of alti and value_zeroing from the same rows, at the
   thresholds that keep each share of the L x N x N edges in FRACTIONS: edges kept, threshold,
   routed share (its sum) and its Spearman correlation with blank-out, beside the rollout.
3. Kobayashi et al. (2020)'s observation: per layer, the share of each query row's weight that
   goes to [CLS], [SEP] and punctuation tokens, averaged over the rows (every token): by the
   heads' attention weights, by attention x value norm per head (``α^h_ij ||f^h(x_j)||``,
   each head's row normalised, then the heads averaged) and by the per-layer attention_norm.

    python bench/mixing.py --faithfulness [--sentences 60] [--no-value-zeroing]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import attnviz  # noqa: E402
from attnviz.analysis import faithfulness as faith  # noqa: E402
from attnviz.analysis.flow import residual_augmented  # noqa: E402
from attnviz.analysis.routes import default_threshold, layer_matrices, routes  # noqa: E402
from attnviz.explain import default_output_rows, explain  # noqa: E402
from attnviz.inputs import open_image  # noqa: E402
from attnviz.mixing import mixing, refusals, value_norms  # noqa: E402
from attnviz.samples import sample_bytes  # noqa: E402

METHODS = ("value_norms", "attention_norm", "globenc", "alti", "value_zeroing")
SENTENCES = ROOT / "bench" / "sentences.txt"
EXPLAINED = ("attention", "rollout", "flow", "attn_x_grad", "grad_x_input", "integrated_gradients", "blankout")
MIXED = ("attention", "attention_norm", "globenc", "alti", "value_zeroing")
ROUTED = ("alti", "value_zeroing")
VZ_RESIDUAL = "value_zeroing, rollout of rownorm(0.5 M + 0.5 I)"
FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
PUNCTUATION = set(".,;:!?'\"()-")
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


def sink_share(weights: np.ndarray, sinks: np.ndarray) -> float:
    """The mean over the rows of ``weights [..., N, N]`` (each row summing to 1) of the weight
    on the ``sinks`` columns."""
    return float(weights[..., sinks].sum(-1).mean())


def one_sentence(model, text: str, value_zeroing: bool) -> tuple[dict, dict, dict, dict]:
    """(Spearman per method, {(method, fraction): (edges share, threshold, routed sum, rho)},
    {kind: [share per layer]}, {method: mean diagonal of its layers}) of one sentence."""
    e = explain(model, text, methods=EXPLAINED)
    result = attnviz.capture(model, text)
    asked = tuple(m for m in MIXED[1:] if value_zeroing or m != "value_zeroing")
    mx = mixing(model, text, methods=asked, result=result)
    if mx.tokens != e.tokens:
        raise SystemExit(f"mixing and explain read {text!r} differently")
    rho = {m: faith.spearman(v, e.scores["blankout"], e.special) for m, v in e.scores.items() if m != "blankout"}
    outputs = np.array(default_output_rows(model, mx.tokens))
    mix = np.zeros(len(mx.tokens))
    mix[outputs] = 1.0 / len(outputs)
    for method in (m for m in MIXED if m in mx.matrices):
        for what, scores in (("last layer", mix @ mx.matrices[method][-1].astype(np.float64)),
                             ("rollout", mix @ mx.rollout(method))):
            rho[f"{method}, {what}"] = faith.spearman(scores, e.scores["blankout"], e.special)
    if "value_zeroing" in mx.matrices:  # a diagnostic: its diagonal leaves token i's residual out
        carried = mix
        for layer in residual_augmented(mx.matrices["value_zeroing"])[::-1]:
            carried = carried @ layer
        rho[VZ_RESIDUAL] = faith.spearman(carried, e.scores["blankout"], e.special)
    routed = {}
    for method in (m for m in ROUTED if m in mx.matrices):
        mp = layer_matrices(mx.matrices[method], method)
        for f in FRACTIONS:
            r = routes(mx.matrices[method], method, outputs, threshold=default_threshold(mp, outputs, f))
            routed[method, f] = (len(r.edges) / mp.size, r.threshold, r.routed.sum(),
                                 faith.spearman(r.routed, e.scores["blankout"], e.special))
    sinks = np.array([s or (t.strip() != "" and set(t) <= PUNCTUATION) for t, s in zip(mx.tokens, mx.special)])
    heads = np.stack([result.layer_attention(layer) for layer in range(len(mx.value_norms))]).astype(np.float64)
    scaled = heads * mx.value_norms[:, :, None, :]
    scaled /= scaled.sum(-1, keepdims=True)
    shares = {"attention weights (heads' mean)": [sink_share(mx.matrices["attention"][l], sinks) for l in range(len(heads))],
              "attention x value norm (per head)": [sink_share(scaled[l], sinks) for l in range(len(heads))],
              "attention_norm (per layer)": [sink_share(mx.matrices["attention_norm"][l], sinks) for l in range(len(heads))]}
    diagonal = {m: float(np.diagonal(mx.matrices[m], axis1=1, axis2=2).mean()) for m in MIXED if m in mx.matrices}
    return rho, routed, shares, diagonal


def spread(values) -> str:
    v = np.array([x for x in values if not math.isnan(x)], np.float64)
    return f"{v.mean():+.2f} ± {v.std():.2f} ({len(v)})" if len(v) else "–"


def faithfulness(n: int, value_zeroing: bool) -> None:
    model = attnviz.load_model("minilm-l6")
    texts = [t for t in SENTENCES.read_text().splitlines() if t.strip()][:n]
    started = time.perf_counter()
    per_sentence = []
    for k, text in enumerate(texts):
        per_sentence.append(one_sentence(model, text, value_zeroing))
        print(f"  {k + 1}/{len(texts)} sentences, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    print(f"minilm-l6, {len(texts)} sentences of bench/sentences.txt, {time.perf_counter() - started:.0f} s; "
          "Spearman with blank-out over the non-special tokens: mean ± std (sentences where defined)")
    print("| method | Spearman with blank-out |\n|---|---|")
    for method, a in faith.summarise([rho for rho, *_ in per_sentence]).items():
        print(f"| {method} | {a.mean:+.2f} ± {a.std:.2f} ({a.n}) |")
    for method in ROUTED:
        if (method, FRACTIONS[0]) not in per_sentence[0][1]:
            continue
        print(f"\nroutes of {method} from the output rows, by the share of the edges kept (means over the sentences)")
        print("| edges kept (asked) | edges kept | threshold | routed share | Spearman with blank-out |")
        print("|---:|---:|---:|---:|---:|")
        for f in FRACTIONS:
            share, threshold, total, rho = zip(*(routed[method, f] for _, routed, *_ in per_sentence))
            print(f"| {f:.0%} | {np.mean(share):.1%} | {np.mean(threshold):.3f} | {np.mean(total):.2f} | {spread(rho)} |")
        print(f"| every edge (rollout) | 100% | – | 1.00 | {spread([rho[f'{method}, rollout'] for rho, *_ in per_sentence])} |")
    layers = len(per_sentence[0][2]["attention_norm (per layer)"])
    print("\nshare of each row's weight on [CLS] + [SEP] + punctuation, per layer (1-based), mean over the sentences")
    print("| measure | " + " | ".join(f"layer {l + 1}" for l in range(layers)) + f" | layers 2-{layers - 1} |")
    print("|---|" + "---:|" * (layers + 1))
    for kind in per_sentence[0][2]:
        values = np.array([shares[kind] for _, _, shares, _ in per_sentence])
        print(f"| {kind} | " + " | ".join(f"{v:.2f}" for v in values.mean(0)) + f" | {values[:, 1:-1].mean():.2f} |")
    print("\nmean diagonal (a token's share of its own output) of each method's layers: "
          + ", ".join(f"{m} {np.mean([d[m] for *_, d in per_sentence]):.2f}" for m in per_sentence[0][3]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="128 tokens and 224 px only")
    parser.add_argument("--models", help="comma-separated: only these models")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated: only these rows")
    parser.add_argument("--faithfulness", action="store_true", help="agreement with blank-out instead of cost")
    parser.add_argument("--sentences", type=int, default=60, help="--faithfulness: the first N of bench/sentences.txt")
    parser.add_argument("--no-value-zeroing", action="store_true", help="--faithfulness: leave value zeroing out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.faithfulness:
        faithfulness(args.sentences, not args.no_value_zeroing)
        return 0
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
