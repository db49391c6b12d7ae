"""bench/explain: how long `attnviz.explain` takes, method by method, and what blank-out costs.

1. minilm-l6 on a 128-token text (6 layers, 12 heads) and dinov2-small on a photo at 224 px
   (257 tokens, 12 layers, 6 heads): the median time of `explain(model, input,
   methods=(m,))` for each default method m alone (so each includes its own forward pass), and
   of the seven before context mixing together, next to one plain forward pass of the model with attention outputs.
2. Blank-out runs n + 1 forward passes (the input, then each token or patch replaced), in
   batches of at most attnviz.explain.BATCH_BYTES: the table gives the passes, the time per
   token, and the ratio to one plain forward pass.
3. ``--memory``: the peak memory of the command line's explain on smollm2-135m with a text of
   over 512 tokens (cut to 512; the default methods: the seven, then attention_norm, globenc
   and alti), ``python -m attnviz explain --model
   smollm2-135m --text <text> --json``, each run a fresh process whose peak resident set
   (ru_maxrss, from wait4) is read when it ends; a watchdog stops a run above ``--kill-gb``.
   Profiles: ``local`` (the environment as it is, less attnviz's hosted settings) and
   ``hosted`` (the Dockerfile's: ATTNVIZ_HOSTED=1, ATTNVIZ_MAX_TOKENS=8192, MALLOC_ARENA_MAX=2,
   MALLOC_MMAP_THRESHOLD_=4194304). Beside it: attnviz.explain.explain_bytes for the input
   (the estimate the server admits explain by) and the model's weights. The bound is 3 GB.
   The command runs 513 + 97 passes of the model over 512 tokens: tens of minutes on a quiet
   2-core machine. ``--phases`` measures the same input phase by phase instead, each phase in
   its own fresh process (peak RSS from wait4, and the RSS of the loaded model before it), the
   batched phases (integrated gradients, blank-out) stopped through explain's progress
   callback after their first PHASE_BATCHES batches: every batch has the same size, so the
   later ones peak the same. The command's peak is the largest phase's, as the phases run one
   after another.

    python bench/explain.py [--runs 3]
    python bench/explain.py --memory [--phases [--only PHASE]] [--profile local hosted] [--runs 1] [--bound-gb 3]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from flow import median_s  # noqa: E402
from PIL import Image  # noqa: E402

import attnviz  # noqa: E402
from attnviz.explain import (  # noqa: E402
    ATTENTION_METHODS,
    BATCH_BYTES,
    CLASSIC_METHODS,
    DEFAULT_METHODS,
    IG_STEPS,
    MAX_TOKENS,
    MIXING_ROWS,
    explain,
    explain_bytes,
    footprint,
)
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
    for method in DEFAULT_METHODS + ("all seven",):
        methods = CLASSIC_METHODS if method == "all seven" else (method,)
        wall, cpu = median_s(lambda methods=methods: explain(model, input, size=size, methods=methods), runs)
        note = ""
        if method == "blankout":
            passes = n + 1
            fp = footprint(model)
            batch = fp.batch(fp.forward(n), passes)
            note = (f"{passes} passes in {-(-passes // batch)} batches of {batch} (at most {BATCH_BYTES / 1e6:.0f} MB "
                    f"each): {wall / n * 1e3:.1f} ms a token, {wall / forward:.0f}× one forward")
        elif method == "integrated_gradients":
            note = f"{IG_STEPS} steps, forward + backward each: {wall / forward:.0f}× one forward"
        rows.append(f"| {name}, {n} tokens | {method} | {wall:.2f} s ({cpu:.2f} s CPU) | {note} |")
    return rows


# -- 3. memory ---------------------------------------------------------------------------------
MEMORY_MODEL = "smollm2-135m"
HOSTED_ENV = {"ATTNVIZ_HOSTED": "1", "ATTNVIZ_MAX_TOKENS": "8192", "MALLOC_ARENA_MAX": "2",
              "MALLOC_MMAP_THRESHOLD_": "4194304"}  # the Dockerfile's
PHASES = {"attention pass: attention, rollout, flow, attn_x_grad": ATTENTION_METHODS,
          "input x gradient": ("grad_x_input",), "integrated gradients": ("integrated_gradients",),
          "blank-out": ("blankout",),
          "context mixing: attention_norm, globenc, alti, routes": tuple(m for m in DEFAULT_METHODS if m in MIXING_ROWS)}
PHASE_BATCHES = 3  # batches of a batched phase run before it is stopped


class Enough(Exception):
    """Raised from explain's progress callback to stop a phase after its first batches."""


def long_text(model) -> str:
    """TEXT repeated to well over MAX_TOKENS tokens (explain cuts it to MAX_TOKENS)."""
    text = TEXT
    while len(model.tokenizer(text)["input_ids"]) < MAX_TOKENS + 64:
        text += " " + TEXT
    return text


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))
    except (OSError, StopIteration):
        return 0


def peak_run(cmd: list[str], env: dict, kill_bytes: int) -> tuple[int, float, int, bool]:
    """(peak RSS in bytes from wait4's ru_maxrss, wall seconds, exit status, killed by the
    watchdog) of ``cmd`` as a fresh process."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=Path(__file__).parents[1])
    killed, done = threading.Event(), threading.Event()

    def watch() -> None:  # reads /proc only: reaping the child is wait4's, below
        while not done.wait(0.05):
            if rss_bytes(proc.pid) > kill_bytes:
                killed.set()
                proc.kill()

    threading.Thread(target=watch, daemon=True).start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss * 1024, time.perf_counter() - started, proc.returncode, killed.is_set()


def memory_rows(profiles: list[str], runs: int, bound_gb: float, kill_gb: float) -> tuple[list[str], bool]:
    model = attnviz.load_model(MEMORY_MODEL)
    text = long_text(model)
    estimate = explain_bytes(model, MAX_TOKENS)
    weights = sum(p.numel() for p in model.net.parameters()) * 4
    cmd = [sys.executable, "-m", "attnviz", "explain", "--model", MEMORY_MODEL, "--text", text, "--json"]
    rows, ok = [], True
    for profile in profiles:
        env = {k: v for k, v in os.environ.items() if k not in HOSTED_ENV}
        env.update(HOSTED_ENV if profile == "hosted" else {})
        for run in range(runs):
            peak, wall, code, killed = peak_run(cmd, env, int(kill_gb * 1e9))
            passed = code == 0 and not killed and peak <= bound_gb * 1e9
            ok &= passed
            outcome = "killed" if killed else ("ok" if code == 0 else f"exit {code}")
            rows.append(f"| {profile} | {run + 1} | {MAX_TOKENS} of {len(model.tokenizer(text)['input_ids'])} | "
                        f"{peak / 1e9:.2f} GB | {wall:.0f} s | {outcome} | {weights / 1e9:.2f} GB + "
                        f"{estimate / 1e9:.2f} GB | {'yes' if passed else 'NO'} |")
            print(rows[-1], flush=True)
    return rows, ok


def phase_child(methods: tuple[str, ...], out: Path) -> None:
    """In a fresh process: explain the long text by ``methods``, a batched phase stopped after
    PHASE_BATCHES batches; writes the RSS of the loaded model (before explain) to ``out``."""
    model = attnviz.load_model(MEMORY_MODEL)
    text = long_text(model)
    loaded = rss_bytes(os.getpid())
    batches = 0

    def progress(fraction: float, message: str) -> None:
        nonlocal batches
        if message.startswith(("Integrated gradients", "Blank-out")):
            batches += 1
            if batches > PHASE_BATCHES:  # the progress of a batch comes before it runs
                raise Enough

    try:
        explain(model, text, methods=methods, progress=progress)
    except Enough:
        pass
    out.write_text(json.dumps({"loaded": loaded}))


def phase_rows(profiles: list[str], bound_gb: float, kill_gb: float, only: str | None = None) -> tuple[list[str], bool]:
    import tempfile

    model = attnviz.load_model(MEMORY_MODEL)
    rows, ok = [], True
    for profile in profiles:
        env = {k: v for k, v in os.environ.items() if k not in HOSTED_ENV}
        env.update(HOSTED_ENV if profile == "hosted" else {})
        peaks = []
        for name, methods in PHASES.items():
            if only is not None and not name.startswith(only):
                continue
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "loaded.json"
                cmd = [sys.executable, __file__, "--phase-child", ",".join(methods), "--out", str(out)]
                peak, wall, code, killed = peak_run(cmd, env, int(kill_gb * 1e9))
                loaded = json.loads(out.read_text())["loaded"] if code == 0 and out.exists() else 0
            peaks.append(peak)
            ok &= code == 0 and not killed
            outcome = "killed" if killed else ("ok" if code == 0 else f"exit {code}")
            rows.append(f"| {profile} | {name} | {peak / 1e9:.2f} GB | {(peak - loaded) / 1e9:.2f} GB | "
                        f"{explain_bytes(model, MAX_TOKENS, methods) / 1e9:.2f} GB | {wall:.0f} s | {outcome} |")
            print(rows[-1], flush=True)
        passed = max(peaks) <= bound_gb * 1e9
        ok &= passed
        if only is not None:
            continue
        rows.append(f"| {profile} | **the command (the largest phase)** | **{max(peaks) / 1e9:.2f} GB** | | "
                    f"{explain_bytes(model, MAX_TOKENS) / 1e9:.2f} GB | | {'within' if passed else 'OVER'} "
                    f"{bound_gb:g} GB |")
        print(rows[-1], flush=True)
    return rows, ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=None, help="runs per row (timing: 3, memory: 1)")
    parser.add_argument("--memory", action="store_true", help="the peak memory of the explain command (section 3)")
    parser.add_argument("--profile", nargs="+", choices=("local", "hosted"), default=["local", "hosted"])
    parser.add_argument("--bound-gb", type=float, default=3.0)
    parser.add_argument("--kill-gb", type=float, default=8.0, help="stop a run whose RSS passes this")
    parser.add_argument("--phases", action="store_true", help="with --memory: phase by phase, batched phases stopped early")
    parser.add_argument("--only", choices=[name.split(":")[0] for name in PHASES],
                        help="with --phases: this phase alone (no row for the command)")
    parser.add_argument("--phase-child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase_child:
        phase_child(tuple(args.phase_child.split(",")), args.out)
        return 0
    if args.memory and args.phases:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {MEMORY_MODEL}, a text cut to "
              f"{MAX_TOKENS} tokens; each phase a fresh process, batched ones stopped after {PHASE_BATCHES} batches")
        print("| profile | phase | peak RSS | above the loaded model | explain_bytes | wall | outcome |")
        print("|---|---|---|---|---|---|---|", flush=True)
        _, ok = phase_rows(args.profile, args.bound_gb, args.kill_gb, args.only)
        return 0 if ok else 1
    if args.memory:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; `python -m attnviz explain --model "
              f"{MEMORY_MODEL} --text <over {MAX_TOKENS} tokens> --json`, a fresh process per run")
        print("| profile | run | tokens | peak RSS | wall | outcome | weights + explain_bytes | within "
              f"{args.bound_gb:g} GB |")
        print("|---|---|---|---|---|---|---|---|", flush=True)
        _, ok = memory_rows(args.profile, args.runs or 1, args.bound_gb, args.kill_gb)
        return 0 if ok else 1
    runs = args.runs or 3
    text = text_128(attnviz.load_model("minilm-l6"))
    photo = Image.open(io.BytesIO(sample_bytes("astronaut"))).convert("RGB")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {runs} runs")
    print("| model, input | method | time (median) | notes |")
    print("|---|---|---|---|", flush=True)
    for rows in (rows_for("minilm-l6", text, runs), rows_for("dinov2-small", photo, runs, size=224)):
        for row in rows:
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
