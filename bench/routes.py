"""bench/routes: how long information-flow routes take to build, and how the threshold trades
the edges kept against agreement with blank-out.

1. ``--part timing``: synthetic row-stochastic mixing matrices of the two acceptance sizes,
   minilm-l6 at 128 tokens (6 layers, 12 heads, output CLS and every token) and smollm2-135m at
   256 tokens (30 layers, 9 heads, causal, output the last token), with per-head contributions.
   Median seconds of `routes` at the default threshold (about 5% of the L x N x N edges, the
   bisection included) and at that threshold given, of `routes_json` with `json.dumps`, and of
   the figure (drawn with at most MAX_DRAWN_EDGES edges, as figures.routes does). Targets: at
   most 2 s and 10 s after mixing is computed.
2. ``--part real`` (needs attnviz.mixing): the same times on the method's real matrices
   (``--method``, ALTI by default, with its per-head contributions), minilm-l6 at 128 tokens
   (every token an output) and smollm2-135m at 256 tokens (the last token).
3. ``--part agreement`` (needs attnviz.mixing): minilm-l6 (its mean-pooled sentence embedding:
   every token is an output) and smollm2-135m (the next token: the last position) on each of
   the first ``--sentences`` of bench/sentences.txt (``--models``: only these): explain's
   blank-out and the mixing method (``--method``, ALTI by default); then,
   for thresholds keeping each fraction of the edges, the routed share of each input token
   (attnviz.analysis.routes) against blank-out (Spearman over the non-special tokens), beside
   the rollout over the method (every edge kept).

    python bench/routes.py [--runs 5] [--part timing|real|agreement|all] [--method alti]
                           [--sentences 16] [--models minilm-l6,smollm2-135m]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from explain import TEXT, text_128  # noqa: E402
from flow import median_s  # noqa: E402

import attnviz  # noqa: E402
from attnviz.analysis import faithfulness as faith  # noqa: E402
from attnviz.analysis.routes import default_threshold, layer_matrices, routes, routes_json  # noqa: E402
from attnviz.viz.routes import MAX_DRAWN_EDGES, routes_figure  # noqa: E402

SIZES = (  # layers, heads, tokens, causal, output rows, what they are
    (6, 12, 128, False, [0], "CLS"),
    (6, 12, 128, False, list(range(128)), "every token"),
    (30, 9, 256, True, [255], "last token"),
)
FRACTIONS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
SENTENCES = Path(__file__).resolve().parent / "sentences.txt"  # one per line, shared with bench/mixing.py


def synthetic(rng, layers: int, heads: int, n: int, causal: bool) -> tuple[np.ndarray, np.ndarray]:
    """Row-stochastic mixing ``[layers, n, n]`` with a heavy diagonal (as ALTI's residual) and
    per-head contributions ``[layers, heads, n, n]`` (float32)."""
    a = rng.gamma(0.3, size=(layers, n, n)) + 3.0 * np.eye(n) * rng.random((layers, n, 1))
    if causal:
        a *= np.tril(np.ones((n, n)))
    matrices = (a / a.sum(-1, keepdims=True)).astype(np.float32)
    per_head = (matrices[:, None] * rng.dirichlet(np.ones(heads), size=(layers, n, n)).transpose(0, 3, 1, 2))
    return matrices, per_head.astype(np.float32)


def timed(matrices, method: str, outputs, heads, tokens: list[str], runs: int) -> tuple[int, list[float], int]:
    """(edges kept at the default threshold, median seconds of: routes at the default
    threshold, routes at that threshold given, routes_json + json.dumps, the figure; edges
    the figure draws)."""
    r = routes(matrices, method, outputs, heads=heads)
    drawn = routes(matrices, method, outputs, heads=heads, max_edges=MAX_DRAWN_EDGES)
    seconds = [median_s(fn, runs)[0] for fn in (
        lambda: routes(matrices, method, outputs, heads=heads),
        lambda: routes(matrices, method, outputs, threshold=r.threshold, heads=heads),
        lambda: json.dumps(routes_json(r, tokens)),
        lambda: routes_figure(drawn, tokens))]
    return len(r.edges), seconds, len(drawn.edges)


HEADER = ["| matrices | output | edges kept | routes, default threshold | routes, threshold given | "
          "JSON (+ dumps) | figure (≤ 30,000 edges) |", "|---|---|---:|---:|---:|---:|---:|"]


def row(what: str, output: str, size: int, edges: int, seconds: list[float], drawn: int) -> str:
    build, given, as_json, figure = seconds
    return (f"| {what} | {output} | {edges:,} ({edges / size:.1%}) | {build:.3f} s | {given:.3f} s | {as_json:.3f} s | "
            f"{figure:.3f} s ({drawn:,} edges) |")


def timing_rows(runs: int) -> list[str]:
    rng = np.random.default_rng(0)
    rows = list(HEADER)
    for layers, heads, n, causal, outputs, what in SIZES:
        matrices, per_head = synthetic(rng, layers, heads, n, causal)
        edges, seconds, drawn = timed(matrices, "alti", outputs, per_head, [f"t{k}" for k in range(n)], runs)
        rows.append(row(f"synthetic {layers} x {n} x {n}, {heads} heads{', causal' if causal else ''}", what,
                        matrices.size, edges, seconds, drawn))
    return rows


def agreement_rows(method: str, sentences: int, models: list[str]) -> list[str]:
    from attnviz.explain import default_output_rows, explain
    from attnviz.mixing import mixing

    rows = []
    texts = [t for t in SENTENCES.read_text().splitlines() if t.strip()][:sentences]
    for name in models:
        model = attnviz.load_model(name)
        per_fraction = {f: [] for f in FRACTIONS}  # (edges share, threshold, routed sum, spearman)
        rollout_r = []
        for text in texts:
            e = explain(model, text, methods=("blankout",))
            mx = mixing(model, text, methods=(method,))
            if mx.tokens != e.tokens:
                raise SystemExit(f"{name}: mixing and explain tokenised {text!r} differently")
            outputs = default_output_rows(model, e.tokens)
            mp = layer_matrices(mx.matrices[method], method)
            for f in FRACTIONS:
                r = routes(mx.matrices[method], method, outputs, threshold=default_threshold(mp, np.array(outputs), f))
                per_fraction[f].append((len(r.edges) / mp.size, r.threshold, r.routed.sum(),
                                        faith.spearman(r.routed, e.scores["blankout"], e.special)))
            full = routes(mx.matrices[method], method, outputs, threshold=float(mp[mp > 0].min()))
            rollout_r.append(faith.spearman(full.shares[0], e.scores["blankout"], e.special))
        rows += [f"\n{name}, {method}, {len(texts)} sentences (output rows: {'every token' if len(outputs) > 1 else 'one'})",
                 "| edges kept (asked) | edges kept | threshold | routed share | Spearman with blank-out |",
                 "|---:|---:|---:|---:|---:|"]
        for f, values in per_fraction.items():
            share, threshold, routed, rho = (np.array(v, np.float64) for v in zip(*values))
            ok = rho[np.isfinite(rho)]
            rows.append(f"| {f:.1%} | {share.mean():.1%} | {threshold.mean():.4f} | {routed.mean():.2f} | "
                        f"{ok.mean():+.2f} ± {ok.std():.2f} (n={len(ok)}) |")
        ok = np.array([r for r in rollout_r if not math.isnan(r)])
        rows.append(f"| every edge (rollout over {method}) | 100% | – | 1.00 | {ok.mean():+.2f} ± {ok.std():.2f} (n={len(ok)}) |")
    return rows


def real_timing_rows(method: str, runs: int) -> list[str]:
    from attnviz.mixing import mixing

    rows = ["", *HEADER]
    for name, n in (("minilm-l6", 128), ("smollm2-135m", 256)):
        model = attnviz.load_model(name)
        if name == "minilm-l6":
            text = text_128(model)
        else:
            text = model.tokenizer.decode(model.tokenizer(TEXT * 2)["input_ids"][:n])
        started = time.perf_counter()
        mx = mixing(model, text, methods=(method,))
        print(f"  {name}: mixing ({method}) {time.perf_counter() - started:.0f} s (not counted)", file=sys.stderr, flush=True)
        n_tokens = len(mx.tokens)
        outputs, what = (list(range(n_tokens)), "every token") if name == "minilm-l6" else ([n_tokens - 1], "last token")
        heads = mx.alti_heads if method == "alti" else None
        edges, seconds, drawn = timed(mx.matrices[method], method, outputs, heads, mx.tokens, runs)
        rows.append(row(f"{name}, {method}, {n_tokens} tokens{', heads' if heads is not None else ''}", what,
                        mx.matrices[method].size, edges, seconds, drawn))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--part", choices=("timing", "real", "agreement", "all"), default="timing")
    parser.add_argument("--method", default="alti")
    parser.add_argument("--sentences", type=int, default=16, help="agreement: the first N of bench/sentences.txt")
    parser.add_argument("--models", default="minilm-l6,smollm2-135m", help="agreement: comma-separated")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as bench/mixing: a shared machine's figures hold
    if args.part in ("timing", "all"):
        print("\n".join(timing_rows(args.runs)))
    if args.part in ("real", "all"):
        print("\n".join(real_timing_rows(args.method, args.runs)))
    if args.part in ("agreement", "all"):
        print("\n".join(agreement_rows(args.method, args.sentences, args.models.split(","))))


if __name__ == "__main__":
    main()
