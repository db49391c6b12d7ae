"""bench/agreement: Abnar & Zuidema (2020)'s faithfulness table on our own agreement model.

1. Trains a 6-layer Build-your-own model (global attention, d_model 64, 4 heads, 16 positions)
   on the agreement task of attnviz.lab.toy_tasks (the verb masked, attractor nouns between
   it and its subject), on one CPU thread, and reports its accuracy on the masked verb over
   fresh sentences, and over those where a noun of the other number stands between subject
   and verb.
2. Over N fresh sentences (default 500; a different seed from training), the Spearman
   correlation with blank-out (the log-probability of the model's verb lost when one word is
   replaced by [MASK]) of: raw attention of each layer (heads averaged, the masked verb's
   row), rollout and exact flow up to each layer; and beside them the context-mixing methods
   that apply to this pre-norm model (attnviz.mixing: attention_norm, alti, value_zeroing;
   GlobEnc is for post-norm layers), each by its last layer and its rollout (docs/mixing.md),
   and the routed share of ALTI's routes at the default threshold (about 5% of the edges
   kept; docs/routes.md), all read at the masked verb's row. Words compared: all but the
   masked verb and the full stops. Prints the table beside the paper's numbers and writes the
   figure docs/agreement-faithfulness.png.

    python bench/agreement.py [--steps 3000] [--inputs 500] [--figure docs/agreement-faithfulness.png]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from attnviz.analysis import faithfulness as faith  # noqa: E402
from attnviz.analysis.flow import FLOW_SCALE, flow_capacities, max_flow_values  # noqa: E402
from attnviz.analysis.routes import routes  # noqa: E402
from attnviz.explain import explain  # noqa: E402
from attnviz.lab.custom import CustomConfig, CustomNet, as_model  # noqa: E402
from attnviz.lab.toy_tasks import MASK, NOUN_PL, NOUN_SG, STOP, batch  # noqa: E402
from attnviz.lab.train import Trainer  # noqa: E402
from attnviz.mixing import mixing  # noqa: E402

PAPER = {"attention L1": 0.69, "attention L3": -0.11, "attention L6": 0.29, "rollout": 0.71, "flow": 0.70}
LENGTH, LAYERS = 16, 6
MIXED = ("attention_norm", "alti", "value_zeroing")  # GlobEnc does not apply to a pre-norm model


def train(steps: int) -> tuple[CustomNet, float]:
    net = CustomNet(CustomConfig(task="agreement", length=LENGTH, d_model=64, n_heads=4, n_layers=LAYERS), seed=0)
    trainer = Trainer(net, seed=0, threads=1)
    started = time.perf_counter()
    trainer.run(steps)
    return net, time.perf_counter() - started


def accuracy(net: CustomNet, x: np.ndarray, y: np.ndarray) -> tuple[float, float, int]:
    """(verb accuracy on all sentences, on those with an attractor of the other number between
    subject and verb, how many those are)."""
    with torch.inference_mode():
        predicted = net(torch.from_numpy(x)).argmax(-1).numpy()
    verb = x == MASK
    right = (predicted[verb] == y[verb])
    nouns = np.where((x == NOUN_SG) | (x == NOUN_PL), x, 0)
    subject = nouns[np.arange(len(x)), ((x == NOUN_SG) | (x == NOUN_PL)).argmax(-1)]
    attracted = np.array([np.any((row != 0) & (row != s)) for row, s in zip(nouns, subject)])
    return float(right.mean()), float(right[attracted].mean()), int(attracted.sum())


def correlations(net: CustomNet, x: np.ndarray) -> dict[str, list[float]]:
    """Per method, the Spearman correlation with blank-out on each sentence."""
    model = as_model(net, "agreement")
    out: dict[str, list[float]] = {}
    for ids in x:
        text = " ".join(str(i) for i in ids)
        e = explain(model, text, methods=("blankout",))
        _, _, attn, _ = net.run(text)  # float32 [layers, heads, n, n], without gradients
        position = int(np.flatnonzero(ids == MASK)[0])
        mix = faith.one_hot(LENGTH, position)
        scored = []
        for layer in range(LAYERS):
            upto = attn[:layer + 1]
            scored += [(f"attention L{layer + 1}", faith.attention_scores(upto, mix)),
                       (f"rollout L{layer + 1}", faith.rollout_scores(upto, mix)),
                       (f"flow L{layer + 1}", faith.flow_scores(upto, mix))]
        mixed = mixing(model, text, methods=MIXED)
        for method in MIXED:
            scored += [(f"{method} L{LAYERS}", mix @ mixed.matrices[method][-1].astype(np.float64)),
                       (f"{method} rollout", mix @ mixed.rollout(method))]
        scored.append(("alti routes (5% of edges)", routes(mixed.matrices["alti"], "alti", position).routed))
        for method, scores in scored:
            out.setdefault(method, []).append(faith.spearman(scores, e.scores["blankout"], e.special))
    return out


def saturated(net: CustomNet, x: np.ndarray, layers: int) -> int:
    """How many sentences give every compared word the full unit of flow (up to ``layers``):
    max-flow is bounded by the one unit the output sends, so those words tie."""
    count = 0
    for ids in x:
        _, _, attn, _ = net.run(" ".join(str(i) for i in ids))
        values = max_flow_values(flow_capacities(attn[:layers]), int(np.flatnonzero(ids == MASK)[0])) / FLOW_SCALE
        words = (ids != MASK) & (ids != STOP)
        count += bool(np.all(values[words] > 1 - 1e-6))
    return count


def figure(summary: dict[str, faith.Agreement], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=120)
    layers = np.arange(1, LAYERS + 1)
    for method, colour in (("attention", "#8c8c8c"), ("rollout", "#1f77b4"), ("flow", "#d62728")):
        mean = [summary[f"{method} L{l}"].mean for l in layers]
        std = [summary[f"{method} L{l}"].std for l in layers]
        ax.errorbar(layers, mean, yerr=std, marker="o", capsize=3, color=colour, label=f"{method} (ours, ± 1 std)")
    ax.scatter([1, 3, 6], [PAPER["attention L1"], PAPER["attention L3"], PAPER["attention L6"]], marker="x", s=60,
               color="#8c8c8c", label="raw attention (paper)", zorder=3)
    ax.scatter([6, 6], [PAPER["rollout"], PAPER["flow"]], marker="*", s=110, color=["#1f77b4", "#d62728"],
               label="rollout, flow (paper)", zorder=3)
    ax.axhline(0, color="#bbb", linewidth=0.8)
    ax.set_xlabel("layer (attention of that layer; rollout and flow up to it)")
    ax.set_ylabel("Spearman with blank-out")
    ax.set_xticks(layers)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4)
    ax.set_title("Subject-verb agreement, 6 layers: which picture follows blank-out", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="training steps of 64 sentences")
    parser.add_argument("--inputs", type=int, default=500, help="held-out sentences to correlate over")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "agreement-faithfulness.png")
    args = parser.parse_args()
    torch.set_num_threads(1)
    net, seconds = train(args.steps)
    x, y = batch("agreement", 2000, LENGTH, np.random.default_rng(2024))
    all_acc, attracted_acc, n_attracted = accuracy(net, x, y)
    print(f"trained {args.steps} steps x 64 sentences in {seconds:.0f} s (one thread); verb accuracy on 2000 fresh "
          f"sentences {all_acc:.3f}, on the {n_attracted} with an attractor of the other number {attracted_acc:.3f}")
    held_out, _ = batch("agreement", args.inputs, LENGTH, np.random.default_rng(7))
    started = time.perf_counter()
    per_method = correlations(net, held_out)
    rows = [{m: per_method[m][i] for m in per_method} for i in range(args.inputs)]
    summary = faith.summarise(rows)
    print(f"{args.inputs} held-out sentences in {time.perf_counter() - started:.0f} s")
    print("| method | ours: mean ± std (inputs) | paper |")
    print("|---|---|---|")
    for method, a in summary.items():
        paper = PAPER.get(method, PAPER.get(method.split()[0]) if method.endswith(f"L{LAYERS}") else None)
        cell = "" if paper is None else f"{paper:+.2f}"
        print(f"| {method} | {a.mean:+.2f} ± {a.std:.2f} ({a.n}) | {cell} |")
    if args.figure:
        figure(summary, args.figure)
        print(f"wrote {args.figure}")
    for layer in range(1, LAYERS + 1):
        ties = sum(math.isnan(v) for v in per_method[f"flow L{layer}"])
        print(f"flow up to layer {layer}: {ties} sentences without a ranking, "
              f"{saturated(net, held_out, layer)} with every word at the full unit of flow")


if __name__ == "__main__":
    main()
