"""bench/train: how long "Build your own" takes to learn its toy tasks on the CPU.

First the default design of the page (reverse, global attention, 2 layers x 4 heads,
d_model 64, 12 digits, batches of 64, AdamW 3e-3): training seconds and steps until the token
accuracy on 512 held-out inputs reaches 95% (checked every 10 steps; the checks are not
counted), for several seeds, on one CPU thread (the trainer's default) and on two. Target: at
most 60 s on 2 CPU cores.

Then every task with every kind of attention at the default sizes, one seed, up to 60 s each.

Then the classifiers (``--part classifiers``), each at the sizes the app and ``python -m attnviz
train`` use, one thread: training seconds and steps until the held-out accuracy reaches 95%
(checked every 25 steps for text, 50 for images; the checks are not counted), and the
attention's mass on the rationale of the held-out reviews against uniform attention's.
Targets on 2 CPU cores: sentiment with lstm-attention >= 95% with rationale mass >= 3 x
chance in under 60 s; digits with vit >= 95% in under 120 s; attention-lstm and transformer on
sentiment are reported as they come.

    python bench/train.py [--seeds 3] [--budget 60] [--part toy|classifiers|all]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch  # noqa: E402

from attnviz.lab import tasks  # noqa: E402
from attnviz.lab.custom import ATTENTIONS, CustomConfig, CustomNet  # noqa: E402
from attnviz.lab.toy_tasks import TASKS  # noqa: E402
from attnviz.lab.train import Trainer, evaluate, evaluate_classifier  # noqa: E402

TARGET = 0.95
CHECK_EVERY = 10


def time_to_target(config: CustomConfig, seed: int, threads: int, budget: float) -> tuple[float, int, float]:
    """(training seconds, steps, held-out accuracy) when the accuracy first reaches TARGET, or
    when ``budget`` seconds of training are spent."""
    trainer = Trainer(CustomNet(config, seed=seed), seed=seed, threads=threads)
    accuracy = 0.0
    while trainer.seconds < budget:
        trainer.run(CHECK_EVERY)
        accuracy = evaluate(trainer.net)
        if accuracy >= TARGET:
            break
    return trainer.seconds, len(trainer.history), accuracy


CLASSIFIERS = [("sentiment", "lstm-attention", 60.0), ("sentiment", "attention-lstm", 60.0),
               ("sentiment", "transformer", 60.0), ("digits", "vit", 120.0)]


def classifier_to_target(task: str, arch: str, seed: int, budget: float) -> dict:
    """Train ``arch`` on ``task`` until the held-out accuracy reaches TARGET or ``budget``
    seconds of training are spent; what it reached then."""
    started = time.perf_counter()
    data = tasks.load_data(task, seed)
    net = tasks.build(arch, data, seed)
    trainer = tasks.trainer(arch, net, data, seed)
    every = 50 if data.kind == "image" else 25
    while trainer.seconds < budget:
        trainer.run(every)
        done = evaluate_classifier(net, data)
        if done.accuracy >= TARGET:
            break
    return {"steps": len(trainer.history), "seconds": trainer.seconds, "accuracy": done.accuracy,
            "rationale": done.rationale_mass, "chance": done.chance_mass, "wall": time.perf_counter() - started}


def classifiers(seeds: int) -> None:
    print(f"Classifiers, one thread, until {TARGET:.0%} held-out accuracy or the budget:")
    print(f"{'task':<10} {'arch':<15} {'seed':>4} {'steps':>5} {'seconds':>7} {'held-out':>8} "
          f"{'rationale':>9} {'uniform':>7} {'ratio':>5}  reached")
    for task, arch, budget in CLASSIFIERS:
        times = []
        for seed in range(seeds):
            r = classifier_to_target(task, arch, seed, budget)
            ratio = r["rationale"] / r["chance"] if r["rationale"] is not None else None
            ok = r["accuracy"] >= TARGET and (ratio is None or ratio >= 3)
            times.append(r["seconds"] if ok else float("inf"))
            mass = (f"{r['rationale']:>9.1%} {r['chance']:>7.1%} {ratio:>5.1f}" if ratio is not None
                    else f"{'':>9} {'':>7} {'':>5}")
            print(f"{task:<10} {arch:<15} {seed:>4} {r['steps']:>5} {r['seconds']:>7.1f} {r['accuracy']:>8.1%} "
                  f"{mass}  {'yes' if ok else 'no'}  ({r['wall']:.0f} s wall)", flush=True)
        print(f"{task:<10} {arch:<15} median training seconds to target: {statistics.median(times):.1f} "
              f"(budget {budget:.0f} s)\n", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds of training per run at most")
    parser.add_argument("--part", choices=("toy", "classifiers", "all"), default="all")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    if args.part in ("classifiers", "all"):
        classifiers(args.seeds)
    if args.part == "classifiers":
        return

    default = CustomConfig()
    print(f"Default design: {default}")
    print(f"{'threads':>7}  {'seed':>4}  {'steps':>5}  {'seconds':>7}  {'held-out':>8}")
    for threads in (1, 2):
        times = []
        for seed in range(args.seeds):
            seconds, steps, accuracy = time_to_target(default, seed, threads, args.budget)
            times.append(seconds if accuracy >= TARGET else float("inf"))
            print(f"{threads:>7}  {seed:>4}  {steps:>5}  {seconds:>7.1f}  {accuracy:>8.1%}")
        print(f"{threads:>7}  median time to {TARGET:.0%}: {statistics.median(times):.1f} s "
              f"(target <= 60 s)\n")

    print(f"Every task and attention, seed 0, one thread, up to {args.budget:.0f} s of training:")
    print(f"{'task':<10} {'attention':<9} {'steps':>5}  {'seconds':>7}  {'held-out':>8}  reached")
    for task in TASKS:
        for attention in ATTENTIONS:
            started = time.perf_counter()
            seconds, steps, accuracy = time_to_target(CustomConfig(task=task, attention=attention), 0, 1, args.budget)
            print(f"{task:<10} {attention:<9} {steps:>5}  {seconds:>7.1f}  {accuracy:>8.1%}  "
                  f"{'yes' if accuracy >= TARGET else 'no'}  ({time.perf_counter() - started:.0f} s wall)")


if __name__ == "__main__":
    main()
