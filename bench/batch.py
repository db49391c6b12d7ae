"""bench/batch: corpus runs, inputs per second for minilm-l6 at 128 tokens with each engine.

Every run writes the same inputs (texts of exactly 128 tokens with [CLS] and [SEP]) to a
fresh folder, side by side in one process:

- ``local, 1 worker``: in this process, one torch thread (the model is loaded before timing);
- ``local, N workers``: N spawned processes, one model and one thread each (their start-up,
  importing torch and loading the model, is inside the time);
- ``ray, N actors``: a local Ray instance started before timing; N actors, one model and one
  thread each (their start-up is inside the time).

Each run is timed end to end (``end to end``) and from its first finished batch to its last
(``steady``: start-up left out; inputs of the first batch not counted). Medians over --runs.

    python bench/batch.py [--inputs 64] [--runs 3] [--workers 2] [--batch-size 8]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attnviz  # noqa: E402
from attnviz.batch import read_table, run_batch  # noqa: E402

WORDS = ("attention model token layer head query key value river bridge morning baker student neighbour "
         "quiet road apple star count paint watch remember forget garden window letter music street").split()


def texts_of(model, n: int, tokens: int = 128) -> list[str]:
    """``n`` different texts that minilm reads as exactly ``tokens`` tokens ([CLS] and [SEP] included)."""
    out = []
    for i in range(n):
        words = [WORDS[(i * 7 + j * (i % 5 + 1)) % len(WORDS)] for j in range(tokens * 2)]
        ids = model.tokenizer(" ".join(words), add_special_tokens=False)["input_ids"][:tokens - 2]
        text = model.tokenizer.decode(ids)
        assert len(model.tokenizer(text)["input_ids"]) == tokens
        out.append(text)
    return out


def timed(run) -> tuple[float, float]:
    """(end-to-end inputs/s, steady inputs/s) of ``run(progress)``."""
    marks = []
    started = time.perf_counter()
    run(lambda done, total, rate: marks.append((time.perf_counter(), done)))
    end = time.perf_counter()
    total = marks[-1][1]
    steady = (total - marks[0][1]) / (marks[-1][0] - marks[0][0]) if len(marks) > 1 else float("nan")
    return total / (end - started), steady


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--inputs", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    model = attnviz.load_model("minilm-l6")
    tmp = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    inputs = tmp / "in.jsonl"
    inputs.write_text("\n".join(json.dumps(t) for t in texts_of(model, args.inputs)) + "\n")
    common = dict(batch_size=args.batch_size)
    reference = None

    def engine_run(name: str, engine: str, workers: int, target):
        nonlocal reference
        results = []
        for r in range(args.runs):
            out = tmp / f"{name.replace(' ', '_').replace(',', '')}_{r}"
            results.append(timed(lambda progress, out=out: run_batch(target, inputs, out, engine=engine, workers=workers,
                                                            progress=progress, **common)))
            table = read_table(out).sort_by([("input_index", "ascending"), ("layer", "ascending"),
                                             ("head", "ascending")])
            same = "" if reference is None else ("same table" if table.equals(reference) else "TABLE DIFFERS")
            reference = reference or table
            shutil.rmtree(out)
        e2e = statistics.median(x for x, _ in results)
        steady = statistics.median(y for _, y in results)
        print(f"| {name} | {e2e:.2f} | {steady:.2f} | {same} |", flush=True)

    print(f"minilm-l6, {args.inputs} inputs of 128 tokens, batches of {args.batch_size}, median of {args.runs} runs")
    print("| engine | inputs/s end to end | inputs/s steady | vs local, 1 worker |")
    print("|---|---:|---:|---|")
    engine_run("local, 1 worker", "local", 1, model)
    engine_run(f"local, {args.workers} workers", "local", args.workers, "minilm-l6")
    import ray

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False,
             runtime_env={"py_modules": [str(Path(attnviz.__file__).parent)]})
    try:
        engine_run(f"ray, {args.workers} actors", "ray", args.workers, "minilm-l6")
    finally:
        ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
