"""The views of the local/global and flow page, each a ``draw(captured)`` listed in
:data:`VIEWS`, on a captured text or photo:

- distance vs depth: one dot per head, its mean attention distance against its layer;
- heatmaps: one per-head statistic as a layers x heads heatmap;
- over many inputs: the same statistics averaged over several texts or photos;
- rollout and flow: raw attention, rollout and exact attention flow from one output token;
- layer by layer (text): how that token's rollout spreads through the layers, as a Sankey;
- routes: the information-flow routes of a context-mixing method to an output (docs/routes.md),
  for the models context mixing covers; a node clicked opens its layer's heatmap or overlay.

Per-head statistics are jobs cached across sessions (attnviz.ui.measures); rollout and exact flow per
session (:func:`remembered`), so that moving a control reruns the chart, never the model; context
mixing across sessions by the capture's digest and the methods (attnviz.ui.mixing, bounded by bytes).
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

import attnviz
import attnviz.families as families
from attnviz.analysis import flow
from attnviz.analysis import routes as routes_analysis
from attnviz.analysis.mixing import RESIDUAL_LEFT_OUT
from attnviz.analysis.stats import GLOBAL_MIN, LOCAL_MIN, HeadStats, average_stats, head_stats, head_stats_bytes
from attnviz.analysis.tokens import display_label
from attnviz.batch import read_uploaded, spread_from_table
from attnviz.capture import estimate_bytes, input_tokens
from attnviz.errors import AttnvizError
from attnviz.explain import default_output_rows
from attnviz.families import family_of
from attnviz.inputs import MAX_IMAGE_UPLOAD_MB, MAX_TEXT_UPLOAD_MB, open_image, read_text
from attnviz.mixing import head_contributions
from attnviz.result import AttentionResult
from attnviz.samples import SAMPLES, sample_bytes
from attnviz.ui import keys
from attnviz.ui.charts import show_chart
from attnviz.ui.common import job, url_choice, url_int
from attnviz.ui.inputs import MANY_TEXTS, UPLOAD_TYPES
from attnviz.ui.measures import READING_BYTES, stats_of
from attnviz.ui.mixing import SHOW, mixing_of
from attnviz.ui.mixing import refusal as mixing_refusal
from attnviz.ui.models import get_model
from attnviz.ui.overlay import show_overlay, style_controls
from attnviz.ui.views import Captured, View
from attnviz.viz import flow as viz
from attnviz.viz import image as image_viz
from attnviz.viz import routes as routes_viz
from attnviz.viz import text as text_viz
from attnviz.viz.heatmap import safe_filename

FLOW_CACHE_ENTRIES = 16  # rollouts and exact flows kept per session
MAX_MANY_INPUTS = 128  # files read by "over many inputs" (the ViT paper averaged 128 images)
MAX_TABLE_UPLOAD_MB = 200  # a batch table's parts, uploaded to "over many inputs"
MATRICES = {"attention": "Attention weights", **{m: label for m, label in SHOW.items() if m not in ("attention", "value_norm")}}
METHOD_KEY = "flow_method"  # widget key of the matrix carried by the rollout and flow views
ROUTE_METHODS = ("alti", "attention_norm", "globenc", "value_zeroing", "attention")  # alti first: the default


# -- caches -----------------------------------------------------------------------------------
@st.cache_data(max_entries=512, show_spinner=False)
def input_stats(model_name: str, _model, digest: str, _input, size: int | None, stack: str, window: int,
                stage: str | None = None) -> HeadStats:
    """Per-head statistics of one of many inputs (a text or a PIL image, named by its
    ``digest``) to ``_model``; ``stack`` when the model has it, else its first stack; for a
    windowed model (Swin), its ``stage`` (the one picked on the page)."""
    captured = attnviz.capture(_model, _input, size=size) if size else attnviz.capture(_model, _input)
    if captured.grids:
        captured = captured.for_stage(stage if stage in captured.grids else captured.stacks[0])
    return head_stats(captured, stack if stack in captured.attn else captured.stacks[0], window=window)


def remembered(what: tuple, compute):
    """``compute()`` kept per session for the last FLOW_CACHE_ENTRIES ``what`` keys."""
    cache = st.session_state.setdefault("flow_cache", OrderedDict())
    if what not in cache:
        cache[what] = compute()
        while len(cache) > FLOW_CACHE_ENTRIES:
            cache.popitem(last=False)
    cache.move_to_end(what)
    return cache[what]


def streamed_job(what: str, key: tuple, attn, compute):
    """``compute(progress)``, a rollout from one token read a block of rows at a time (every
    row of every head on a long text), run as a job of the visitor (ui.common.job) admitted for
    its working memory."""
    need = READING_BYTES + flow.rollout_bytes(attn.shape[1], attn.shape[-1], streamed=True)
    with job(what, need, key=key) as update:
        return compute(update)


def exact_flow(key: str, picked: "Traced", stack: str) -> np.ndarray:
    """Exact flow from the traced token to every input token through the picked matrices:
    [keys], summing to 1 (cached per session); a progress bar once it takes over a second."""
    def compute():
        layers, _, n, _ = picked.attn.shape
        need = flow.FLOW_BYTES_PER_EDGE * layers * n * n
        with job("Exact flow", need, key=("flow", key, stack, picked.source, picked.fusion, picked.method)) as update:
            return flow.attention_flow(picked.attn, picked.source, picked.fusion, progress=update,
                                       residual=picked.residual)

    return remembered(("flow", key, stack, picked.source, picked.fusion, picked.method), compute)


# -- controls ---------------------------------------------------------------------------------
def window_slider(kind: str) -> int:
    """The local window: tokens (text) or patches along rows and columns (images)."""
    unit = "patches" if kind == "image" else "tokens"
    return st.slider(f"Window, in {unit}", 0, 8, 2, key="flow_window",
                     help="Attention within this many tokens (text) or patches along rows and columns (images) "
                          "of the query counts as local.")


def thresholds(stats: HeadStats) -> tuple[float, float]:
    """Sliders of the local and global thresholds, with what they mean for this input."""
    local_min = st.slider("Local: share within the window at least", 0.0, 1.0, LOCAL_MIN, 0.05, key="flow_local_min",
                          help="A head is local when at least this share of its attention (special tokens left out, "
                               "the rest renormalised) stays within the window around the query.")
    global_min = st.slider("Global: distance / uniform head's at least", 0.0, 1.5, GLOBAL_MIN, 0.05,
                           key="flow_global_min",
                           help=f"A head that is not local is global when its mean distance is at least this share of "
                                f"the distance of a head that attends evenly ({stats.uniform_distance:.1f} "
                                f"{stats.distance_unit} here); the rest are mixed.")
    return local_min, global_min


@dataclass(frozen=True)
class Traced:
    """What the views that follow one output token down a stack draw: the ``controls`` and
    ``shown`` columns, the ``source`` token, the ``method`` whose matrices are carried
    (attention, or a context-mixing method of attnviz.mixing), ``attn`` the stack they are
    read from (the attention ``[layers, heads, n, n]``, or the method's ``[layers, 1, n, n]``),
    how heads are fused, and ``residual``: whether each layer gets the residual added
    (0.5 A + 0.5 I, for attention and attention_norm) or is taken as it is."""

    controls: DeltaGenerator
    shown: DeltaGenerator
    source: int
    method: str
    attn: object
    fusion: str
    residual: bool


def method_picker(captured: Captured) -> str:
    """The matrix the rollout and flow views carry (``?method=``): attention or a per-layer
    context-mixing method."""
    default = url_choice(keys.METHOD, list(MATRICES), "attention")
    if st.session_state.get(METHOD_KEY) not in MATRICES:
        st.session_state[METHOD_KEY] = default
    method = st.selectbox("Matrix carried", list(MATRICES), format_func=MATRICES.get, key=METHOD_KEY,
                          help="What each layer's matrix is: the attention weights (heads fused), or how much each "
                               "token's output of the layer takes from each token of its input by a context-mixing "
                               "method (docs/mixing.md). Attention and attention-norm get the residual added "
                               "(0.5 M + 0.5 I); ALTI, GlobEnc and value zeroing contain it already.")
    st.query_params[keys.METHOD] = method
    return method


def _one_token(captured: Captured, fusion_key: str, refusal: str) -> Traced | None:
    """The layout and controls of the views that follow one output token down a stack; None,
    with ``refusal`` said, on cross-attention, which is no stack to follow."""
    if captured.stack == "cross":
        st.info(refusal)
        return None
    controls, shown = st.columns([1, 3], gap="medium")
    with controls:
        source = source_picker(captured.result, captured.stack)
        method = method_picker(captured)
        why = None if method == "attention" else mixing_refusal(captured, method)
        if why:
            st.info(why)
            method = "attention"
        fusion = st.selectbox("Heads fused by", flow.FUSIONS, key=fusion_key, disabled=method != "attention",
                              help=None if method == "attention" else "A mixing method has one matrix per layer.")
    if method == "attention":
        return Traced(controls, shown, source, method, captured.result.attn[captured.stack], fusion, True)
    matrices = mixing_of(captured, method).matrices[method]
    return Traced(controls, shown, source, method, matrices[:, None], "mean", method in RESIDUAL_LEFT_OUT)


def source_picker(result: AttentionResult, stack: str) -> int:
    """The output token whose sources are traced: CLS (or the last token of a decoder) first."""
    tokens = result.query_tokens(stack)
    default = len(tokens) - 1 if result.is_causal(stack) else 0
    return st.selectbox("From output token", range(len(tokens)), index=default, key=f"flow_source_{stack}",
                        format_func=lambda i: f"{i}: {display_label(tokens[i])}")


def many_inputs(kind: str) -> list[tuple[str, str, object]]:
    """(name, digest, input) for every input of the "many" view: the sample photos or the
    example texts by default, or the uploaded files."""
    if kind == "image":
        files = st.file_uploader("Photos (several at once)", type=UPLOAD_TYPES, accept_multiple_files=True,
                                 key="flow_many_images", max_upload_size=MAX_IMAGE_UPLOAD_MB)[:MAX_MANY_INPUTS]
        pairs = [(f.name, f.getvalue()) for f in files] or [(n, sample_bytes(n)) for n in SAMPLES]
        return [(n, hashlib.sha1(d).hexdigest(), open_image(d, n)) for n, d in pairs]
    files = st.file_uploader("Text files (several at once)", type=["txt", "md"], accept_multiple_files=True,
                             key="flow_many_texts", max_upload_size=MAX_TEXT_UPLOAD_MB)[:MAX_MANY_INPUTS]
    if files:
        texts = [(f.name, read_text(f.getvalue(), f.name)) for f in files]
    else:
        typed = st.text_area("Texts, one per line", "\n".join(MANY_TEXTS), height=150, key="flow_many_typed")
        texts = [(f"line {i + 1}", t) for i, t in enumerate(l for l in typed.splitlines() if l.strip())]
    return [(n, hashlib.sha1(t.encode()).hexdigest(), t) for n, t in texts]


def show_head(captured: Captured, layer: int, head: int) -> None:
    """The pattern of one head: its heatmap (text) or the CLS attention on the photo."""
    result = captured.result
    if captured.kind == "text":
        fig, _ = text_viz.head_heatmap(result, captured.stack, layer, head, text_viz.TextOptions())
        show_chart(fig, f"{result.model}_L{layer}_H{head}", key="flow_head_pattern")
    else:
        show_overlay(captured.photo, image_viz.query_heat(result, layer, head, 0), style_controls(),
                     key="flow_head_pattern", file_name=safe_filename(f"{result.model}-cls-layer{layer}-head{head}") + ".png")
        st.caption(f"Where CLS looks in layer {layer}, head {head}.")


# -- the views --------------------------------------------------------------------------------
def depth_view(captured: Captured) -> None:
    """Mean attention distance against depth, one dot per head, shaped by its class (local,
    mixed, global) and coloured by its entropy; a click on a dot shows that head below."""
    result, stack = captured.result, captured.stack
    controls, shown = st.columns([1, 3], gap="medium")
    with controls:
        stats = stats_of(result, stack, window_slider(captured.kind))
        local_min, global_min = thresholds(stats)
        classes = stats.classes(local_min, global_min)
        st.markdown(" · ".join(f"**{(classes == c).sum()}** {c}" for c in ("local", "mixed", "global")))
    with shown:
        fig = viz.distance_depth(stats, local_min=local_min, global_min=global_min,
                                 title=f"{result.model} · {stack}: one dot per head")
        event = show_chart(fig, f"{result.model}_distance_depth", key="flow_depth", on_select="rerun",
                           selection_mode="points")
        st.caption("Colour: entropy over log(number of keys), 0 = one key, 1 = even. Special tokens are left out "
                   "and the rest renormalised; their share is the sink mass. Click a dot to open its head.")
        points = [p for p in (event.selection.points if event and event.selection else []) if p["curve_number"] == 0]
        if points:  # the dots are in row-major (layer, head) order
            show_head(captured, *divmod(points[0]["point_index"], stats.n_heads))
        if captured.kind == "image":
            beside_view(captured, stats.window, local_min, global_min)


def beside_view(captured: Captured, window: int, local_min: float, global_min: float) -> None:
    """The same photo through another bundled image model, its distance against depth below
    (e.g. a windowed Swin beside DINOv2, whose heads reach across the photo from the first
    layers). Both in pixels of the model's input, so the two can be read on one scale."""
    from attnviz.models.bundled import BUNDLED, DEFAULT_IMAGE_MODEL

    others = [n for n, m in BUNDLED.items() if families.get(m.family).READS == "image" and n != captured.result.model]
    if not others or captured.photo is None:
        return
    own = captured.result.model not in BUNDLED  # e.g. a Swin folder: shown beside DINOv2 at first
    other = st.selectbox("Beside it, the same photo through", ["nothing"] + others, key="flow_beside",
                         index=1 + others.index(DEFAULT_IMAGE_MODEL) if own and DEFAULT_IMAGE_MODEL in others else 0,
                         help="Another image model at its own input size; mean distances are in pixels of "
                              "each model's input.")
    if other == "nothing":
        return
    model = get_model(other)
    stats = input_stats(other, model, captured.photo.sha, captured.photo.image, None, "encoder", window)
    show_chart(viz.distance_depth(stats, local_min=local_min, global_min=global_min,
                                  title=f"{other} · the same photo: one dot per head"),
               f"{other}_distance_depth", key="flow_beside_depth")


def heatmaps_view(captured: Captured) -> None:
    """One per-head statistic as a layers x heads heatmap, and all of them as JSON."""
    result, stack = captured.result, captured.stack
    controls, shown = st.columns([1, 3], gap="medium")
    with controls:
        stats = stats_of(result, stack, window_slider(captured.kind))
        statistic = st.radio("Statistic", list(viz.STATISTICS), format_func=lambda n: viz.stat_label(stats, n),
                             key="flow_statistic")
    with shown:
        title = f"{result.model} · {stack} · {viz.stat_label(stats, statistic)}"
        show_chart(viz.stat_heatmap(stats, statistic, title), f"{result.model}_{statistic}", key="flow_heatmap")
        st.download_button("All statistics (.json)", lambda: json.dumps(stats.to_json()),
                           file_name=safe_filename(f"{result.model}-{stack}-stats") + ".json", mime="application/json",
                           on_click="ignore", icon=":material/download:", key="flow_stats_json")


def many_view(captured: Captured) -> None:
    """Each head's statistics averaged over many inputs (the sample photos, example texts or
    uploads) run through the same model at the same input size: distance vs depth with
    ± 1 std bars, and a heatmap of one mean statistic."""
    kind, result = captured.kind, captured.result
    controls, shown = st.columns([1, 3], gap="medium")
    with controls:
        window = window_slider(kind)
        tables = st.file_uploader("…or a batch table (part-*.parquet of python -m attnviz batch)", type=["parquet"],
                                  accept_multiple_files=True, key="flow_many_table", max_upload_size=MAX_TABLE_UPLOAD_MB)
        inputs = [] if tables else many_inputs(kind)
    if tables:
        spread = table_spread(tables, captured)
    elif not inputs:
        st.info("Add a few inputs to average over.")
        return
    else:
        model = get_model(result.model)
        per_input = []
        size = captured.size or None

        def input_bytes(value) -> int:  # an input's capture, and the statistics read over it while it is held
            n = input_tokens(model, value, size=size)
            return estimate_bytes(model, value, size=size) + READING_BYTES + head_stats_bytes(n, n)

        need = max(input_bytes(value) for _, _, value in inputs)
        key = ("flow_many", result.model, captured.size, captured.stack, window, tuple(d for _, d, _ in inputs))
        with job(f"Statistics of {len(inputs)} inputs", need, key=key) as update:  # one job, an input a step
            for i, (_, digest, value) in enumerate(inputs):
                per_input.append(input_stats(result.model, model, digest, value, captured.size, captured.stack, window,
                                             captured.stage))
                update((i + 1) / len(inputs), f"Statistics of {len(inputs)} inputs… {i + 1}/{len(inputs)}")
        spread = average_stats(per_input)
    with controls:
        local_min, global_min = thresholds(spread.mean)
    with shown:
        what = "sample photos" if kind == "image" and not st.session_state.get("flow_many_images") else "inputs"
        show_chart(viz.distance_depth(spread.mean, spread=spread.std, local_min=local_min, global_min=global_min,
                                      title=f"{result.model} · mean over {spread.n} {what}, bars: ± 1 std"),
                   f"{result.model}_distance_depth_mean", key="flow_many_depth")
        st.caption("The ViT paper averaged 128 images; here every input gets the same model and input size, "
                   "and each head's statistics are averaged over the inputs.")
        statistic = st.selectbox("Heatmap of", list(viz.STATISTICS), format_func=lambda n: viz.stat_label(spread.mean, n),
                                 key="flow_many_statistic")
        show_chart(viz.stat_heatmap(spread.mean, statistic, f"mean {viz.stat_label(spread.mean, statistic)}"),
                   f"{result.model}_{statistic}_mean", key="flow_many_heatmap")


def table_spread(files, captured: Captured):
    """The statistics of a batch table (uploaded parts), averaged: the page's model and stack
    when the table has them, else its own; its window is the one the batch used."""
    table = read_uploaded([(f.name, f.getvalue()) for f in files[:MAX_MANY_INPUTS]])
    models = set(table.column("model").to_pylist())
    stacks = set(table.column("stack").to_pylist())
    model = captured.result.model if captured.result.model in models else sorted(models)[0]
    stack = captured.stack if captured.stack in stacks else sorted(stacks)[0]
    spread = spread_from_table(table, stack, model)
    st.caption(f"{model} · {stack} · {spread.n} inputs of the batch table, window {spread.mean.window} "
               f"{spread.mean.window_unit} (as the batch ran)")
    return spread


def flow_view(captured: Captured) -> None:
    """How one output token draws on the input, by three methods side by side: raw attention
    of the last layer, rollout, and exact attention flow (when the graph is small enough);
    bars per token (text) or overlays on the photo (images)."""
    kind, result, stack, key = captured.kind, captured.result, captured.stack, captured.key
    picked = _one_token(captured, "flow_fusion",
                        "Rollout and flow follow self-attention down a stack: choose the encoder or the decoder.")
    if picked is None:
        return
    controls, shown, source, fusion, attn = picked.controls, picked.shown, picked.source, picked.fusion, picked.attn
    with controls:
        if kind == "text":
            merge = st.toggle("Merge sub-words into words", key="flow_merge")
            hide = st.toggle("Hide special tokens", key="flow_hide", help="Renormalise over the other tokens.")
        else:
            style = style_controls()
    layers, n = attn.shape[0], attn.shape[-1]
    rolled = remembered(("rollout", key, stack, source, fusion, picked.method), lambda: streamed_job(
        "Rollout", ("rollout", key, stack, source, fusion, picked.method), attn,
        lambda progress: flow.rollout(attn, fusion, source=source, residual=picked.residual, progress=progress)))
    last = "raw attention" if picked.method == "attention" else f"last layer's {picked.method}"
    weights = {last: flow.last_layer_attention(attn, source, fusion), "rollout": rolled}
    if layers * n * n <= flow.MAX_FLOW_EDGES:
        weights["flow"] = exact_flow(key, picked, stack)
    else:
        with shown:
            st.info(f"Exact flow over {n} tokens and {layers} layers is too big a graph; shown: raw attention and rollout.")
    with shown:
        if kind == "text":
            fig = viz.method_figure(result, stack, source, weights, merge=merge, hide_special=hide)
        else:
            fig = viz.method_figure(result, stack, source, weights, photo=captured.photo.display, style=style)
        show_chart(fig, f"{result.model}_flow_from_{source}", key="flow_methods")
        st.caption("Raw attention: the last layer only. Rollout: every layer's heads fused, the residual added "
                   "(0.5 A + 0.5 I), rows renormalised, layers multiplied. Flow: the same matrices as capacities "
                   "of a layered graph, max-flow from the output token to each input token, normalised to sum 1."
                   if picked.method == "attention" else
                   f"Carried: {MATRICES[picked.method]}, one matrix per layer"
                   + (" with the residual added (0.5 M + 0.5 I)" if picked.residual else " as it is (it contains the "
                      "residual)") + ". Rollout: the layers multiplied; flow: max-flow with them as capacities.")


def spread_view(captured: Captured) -> None:
    """(Text self-attention) how one output token's rollout passes between tokens layer by
    layer, as a Sankey of the strongest edges of each layer."""
    result, stack = captured.result, captured.stack
    picked = _one_token(captured, "flow_spread_fusion", "The layer-by-layer view is for the self-attention of a text.")
    if picked is None:
        return
    controls, shown, source, fusion, attn = picked.controls, picked.shown, picked.source, picked.fusion, picked.attn
    with controls:
        top_k = st.slider("Strongest edges per layer", 1, 20, 5, key="flow_top_k")
    what = ("spread", captured.key, stack, source, fusion, top_k, picked.method)
    edges = remembered(what, lambda: streamed_job(
        "Rollout, layer by layer", what, attn,
        lambda progress: flow.rollout_spread(attn, source, fusion, top_k, residual=picked.residual, progress=progress)))
    labels = [display_label(t) for t in result.key_tokens(stack)]
    with shown:
        show_chart(viz.spread_sankey(edges, labels, attn.shape[0],
                                     title=f"How “{labels[source]}” spreads, layer by layer (rollout shares"
                                           + ("" if picked.method == "attention" else f", {picked.method}") + ")"),
                   f"{result.model}_spread_{source}", key="flow_sankey")
        st.caption("Left: the output token; right: the input. An edge from token i to token j across a layer carries "
                   "the share of the output token's rollout that passes from i to j there; only the strongest "
                   "edges of each layer are drawn.")


def routes_view(captured: Captured) -> None:
    """Information-flow routes (docs/routes.md): the token x layer edges of a context-mixing
    method that carry at least a threshold and reach the chosen output, as a layered graph;
    clicking a node opens that layer's heatmap (text) or overlay (photo) for its token."""
    result = captured.result
    if captured.stack != result.stacks[0]:
        st.info("Routes follow context mixing through the first self-attention stack: choose it above.")
        return
    try:
        family_of(get_model(result.model)).anatomy(get_model(result.model))
    except AttnvizError as e:
        st.info(f"Routes follow context mixing, which does not apply here: {e}")
        return
    controls, shown = st.columns([1, 3], gap="medium")
    with controls:
        method = st.selectbox("Mixing method", ROUTE_METHODS, key="flow_routes_method",
                              help="Whose per-layer matrices the routes follow (docs/mixing.md); ALTI, as in "
                                   "Ferrando & Voita 2024, by default.")
    why = mixing_refusal(captured, method) if method != "attention" else None
    if why:
        st.info(why)
        return
    mixed = mixing_of(captured, method)
    tokens, n = mixed.tokens, len(mixed.tokens)
    default_rows = default_output_rows(get_model(result.model), tokens)
    what = "every token (mean)" if len(default_rows) > 1 else f"{default_rows[0]}: {display_label(tokens[default_rows[0]])}"
    with controls:
        output = st.selectbox("Output", ["default", "pooled", *range(n)], key=f"flow_routes_output_{captured.key}",
                              format_func=lambda o: (f"as explain's ({what})" if o == "default" else
                                                     "every token (mean)" if o == "pooled" else
                                                     f"{o}: {display_label(tokens[o])}"))
    rows = default_rows if output == "default" else list(range(n)) if output == "pooled" else [output]
    matrices = mixed.method_matrices(method)
    start = routes_analysis.default_threshold(routes_analysis.layer_matrices(matrices, method), np.array(rows),
                                              max_edges=routes_viz.MAX_DRAWN_EDGES)
    with controls:
        threshold = st.slider("Threshold (least weight of a kept edge)", 0.001, 1.0, max(0.001, round(start, 3)),
                              0.001, format="%.3f", key=f"flow_routes_threshold_{captured.key}_{method}_{output}",
                              help="It starts where about 5% of the layers x tokens x tokens edges are kept "
                                   f"(at most {routes_viz.MAX_DRAWN_EDGES:,}, which can be drawn).")
    heads = head_contributions(mixed, method, result if mixed.digest == result.digest else None)
    found = routes_analysis.routes(matrices, method, rows, threshold=threshold, heads=heads)
    target = "every token (mean)" if len(rows) > 1 else f"token {rows[0]} ({display_label(tokens[rows[0]])})"
    with shown:
        try:
            fig = routes_viz.routes_figure(found, tokens, title=f"{result.model} · {method} routes to {target}",
                                           photo=captured.photo.display if captured.kind == "image" else None,
                                           grid=mixed.grid if captured.kind == "image" else None)
        except AttnvizError as e:
            st.info(str(e))
            return
        event = show_chart(fig, f"{result.model}_{method}_routes", key="flow_routes", on_select="rerun",
                           selection_mode="points")
        st.caption("Rows: the input (bottom) and each layer's output; columns: tokens (those no kept edge touches "
                   "collapsed). Edge width: its weight; grey, a token to itself (the residual); node colour: its "
                   "share of the output. Hover an edge for the heads that carry it"
                   f"{'' if heads is not None else f' ({method} has no per-head values here)'}; click a node to "
                   "open its layer.")
        nodes = next(i for i, trace in enumerate(fig.data) if trace.name == routes_viz.NODES)
        picked = [p for p in (event.selection.points if event and event.selection else []) if p["curve_number"] == nodes]
        if picked:
            node_layer, node_token = np.nonzero(found.kept_nodes)
            index = picked[0]["point_index"]
            # node [l, t] is the output of layer l (1-based): 0-based layer l - 1 mixed it (the input: layer 0)
            st.query_params[keys.LAYER] = str(max(int(node_layer[index]) - 1, 0))
            st.query_params[keys.TOKEN] = str(int(node_token[index]))
        if keys.TOKEN in st.query_params:
            show_node(captured, url_int(keys.LAYER, 0, 0, found.n_layers - 1), url_int(keys.TOKEN, 0, 0, n - 1))


def show_node(captured: Captured, layer: int, token: int) -> None:
    """A routes node opened: ``layer``'s attention (heads' mean) as a heatmap with ``token``'s
    row named (text), or where ``token`` looks on the photo (images)."""
    result = captured.result
    label = display_label(result.key_tokens(captured.stack)[token])
    if captured.kind == "text":
        options = text_viz.TextOptions()
        n = len(text_viz.axes(result, captured.stack, options)[0])
        first = 0 if n <= text_viz.HEATMAP_MAX else min(max(token - text_viz.ZOOM // 2, 0), n - text_viz.ZOOM)
        fig, _ = text_viz.head_heatmap(result, captured.stack, layer, "mean", options,
                                       zoom=None if n <= text_viz.HEATMAP_MAX else (first, first))
        fig.add_shape(type="rect", xref="paper", x0=0, x1=1, y0=token - first - 0.5, y1=token - first + 0.5,
                      line=dict(color="#d62728", width=2))
        show_chart(fig, f"{result.model}_L{layer}_mean_token{token}", key="flow_routes_node")
        st.caption(f"Layer {layer} (0-based), heads' mean; framed in red: the row of token {token} ({label}).")
    else:
        show_overlay(captured.photo, image_viz.query_heat(result, layer, "mean", token), style_controls(),
                     key="flow_routes_node",
                     file_name=safe_filename(f"{result.model}-layer{layer}-token{token}") + ".png")
        st.caption(f"Where token {token} ({label}) looks in layer {layer} (0-based), heads' mean.")


VIEWS = (
    View("depth", "Distance vs depth", depth_view),
    View("heatmaps", "Heatmaps", heatmaps_view),
    View("many", "Over many inputs", many_view),
    View("flow", "Rollout and flow", flow_view),
    View("spread", "Layer by layer", spread_view, lambda captured: captured.kind == "text"),
    View("routes", "Routes", routes_view),
)
