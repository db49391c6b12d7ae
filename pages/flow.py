"""Local or global, and attention flow: which heads look near and which far, how that changes
with depth, and how the input reaches the output through all the layers.

Pick text or image, a model and an input -> capture (cached) -> per-head statistics -> one view:
distance versus depth, layers x heads heatmaps, statistics over many inputs, rollout and exact
flow from one output token, and (text) the layer-by-layer spread of that token.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict

import numpy as np
import streamlit as st

import attnviz
from attnviz.analysis import flow
from attnviz.analysis.stats import GLOBAL_MIN, LOCAL_MIN, average_stats, head_stats
from attnviz.analysis.tokens import display_label, reduce, token_axis
from attnviz.inputs import open_image, read_text
from attnviz.models.bundled import DEFAULT_IMAGE_MODEL, DEFAULT_TEXT_MODEL
from attnviz.samples import SAMPLES, sample_bytes
from attnviz.ui import image as image_ui
from attnviz.ui import text as text_ui
from attnviz.ui.common import friendly_errors, remember, url_choice
from attnviz.ui.models import get_model, model_picker, run_capture
from attnviz.viz import flow as viz
from attnviz.viz import image as image_viz
from attnviz.viz import text as text_viz
from attnviz.viz.heatmap import png_config

KINDS = {"text": "Text", "image": "Image"}
VIEWS = {"depth": "Distance vs depth", "heatmaps": "Heatmaps", "many": "Over many inputs",
         "flow": "Rollout and flow", "spread": "Layer by layer"}
MANY_TEXTS = [  # the default texts of "over many inputs"
    "The animal didn't cross the street because it was too tired.",
    "She gave the book to her brother after she had finished reading it.",
    "Attention lets every token look at every other token, and the model learns where to look.",
    "The committee, which had met every week since March, finally approved the budget.",
    "If it rains tomorrow, the match will be moved to the indoor court near the station.",
    "Researchers found that the new vaccine protected mice against several strains of the virus.",
]
FLOW_CACHE_ENTRIES = 16

st.title("Local or global, and attention flow")
st.markdown("Which heads look **near** and which look **far**, how that changes with depth (the ViT paper's "
            "Fig. 7 for your own model and input), and how the input really reaches the output: raw attention, "
            "rollout and exact attention flow (Abnar & Zuidema 2020) side by side.")


# -- what a result is, for caching ---------------------------------------------------------
def fingerprint(result: attnviz.AttentionResult) -> str:
    """A key naming one result: model, tokens and (images) the pixels the model saw."""
    h = hashlib.sha1(result.model.encode())
    h.update("\x00".join(result.tokens + (result.target_tokens or [])).encode())
    if result.image is not None:
        h.update(result.image.tobytes())
    return h.hexdigest()


@st.cache_data(max_entries=32, show_spinner=False)
def stats_of(key: str, _result: attnviz.AttentionResult, stack: str, window: int):
    return head_stats(_result, stack, window=window)


def remembered(what: tuple, compute):
    """``compute()`` kept per session for the last FLOW_CACHE_ENTRIES ``what`` keys."""
    cache = st.session_state.setdefault("flow_cache", OrderedDict())
    if what not in cache:
        cache[what] = compute()
        while len(cache) > FLOW_CACHE_ENTRIES:
            cache.popitem(last=False)
    cache.move_to_end(what)
    return cache[what]


def exact_flow(key: str, attn: np.ndarray, stack: str, source: int, fusion: str) -> np.ndarray:
    """Exact attention flow (cached per session); a progress bar once it takes over a second."""
    def compute():
        slot, started, bar = st.empty(), time.perf_counter(), []

        def progress(done: float) -> None:
            if bar:
                bar[0].progress(done, text=f"Exact attention flow… {done:.0%}")
            elif time.perf_counter() - started > 1.0:
                bar.append(slot.progress(done, text=f"Exact attention flow… {done:.0%}"))

        try:
            return flow.attention_flow(attn, source, fusion, progress=progress)
        finally:
            slot.empty()

    return remembered(("flow", key, stack, source, fusion), compute)


# -- input ----------------------------------------------------------------------------------
remember("flow_kind", url_choice("kind", list(KINDS), "text"))
kind = st.segmented_control("Input", list(KINDS), format_func=KINDS.get, key="flow_kind", required=True)
st.query_params["kind"] = kind
photo = None
with friendly_errors():
    settings, source_col = st.columns([1, 2], gap="large")
    if kind == "text":
        with settings:
            name = model_picker(text_ui.TEXT_FAMILIES, DEFAULT_TEXT_MODEL)
            model = get_model(name)
        with source_col:
            request = text_ui.text_input(model)
        result = run_capture(name, request.text, pair=request.pair, target=request.target, generate=request.generate)
        for note in request.notes + tuple(result.warnings):
            st.info(note)
        stack = text_ui.stack_picker(result)
    else:
        with settings:
            name = model_picker(("image",), DEFAULT_IMAGE_MODEL)
            size = image_ui.input_size_picker(get_model(name))
        with source_col:
            photo = image_ui.photo_input()
        result = run_capture(name, image=photo.image, image_bytes=photo.data, size=size)
        image_ui.capture_summary(photo, result)
        stack = "encoder"
    key = fingerprint(result)


def thresholds(stats) -> tuple[float, float]:
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


def window_slider(unit: str) -> int:
    return st.slider(f"Window, in {unit}", 0, 8, 2, key="flow_window",
                     help="Attention within this many tokens (text) or patches along rows and columns (images) "
                          "of the query counts as local.")


def show_head(result, stack: str, layer: int, head: int) -> None:
    """The pattern of one head: its heatmap (text) or the CLS attention on the photo."""
    if kind == "text":
        fig, _ = text_viz.head_heatmap(result, stack, layer, head, text_viz.TextOptions())
        st.plotly_chart(fig, key="flow_head_pattern", config=png_config(f"{result.model}_L{layer}_H{head}"))
    else:
        image_ui.show_overlay(photo, image_viz.query_heat(result, layer, head, 0), image_ui.style_controls(),
                              key="flow_head_pattern", file_name=f"{result.model}-cls-layer{layer}-head{head}.png")
        st.caption(f"Where CLS looks in layer {layer}, head {head}.")


# -- the views -------------------------------------------------------------------------------
def depth_view() -> None:
    controls, shown = st.columns([1, 3], gap="medium")
    with controls:
        stats = stats_of(key, result, stack, window_slider(unit_of_window()))
        local_min, global_min = thresholds(stats)
        classes = stats.classes(local_min, global_min)
        st.markdown(" · ".join(f"**{(classes == c).sum()}** {c}" for c in ("local", "mixed", "global")))
    with shown:
        fig = viz.distance_depth(stats, local_min=local_min, global_min=global_min,
                                 title=f"{result.model} · {stack}: one dot per head")
        event = st.plotly_chart(fig, key="flow_depth", on_select="rerun", selection_mode="points",
                                config=png_config(f"{result.model}_distance_depth"))
        st.caption("Colour: entropy over log(number of keys), 0 = one key, 1 = even. Special tokens are left out "
                   "and the rest renormalised; their share is the sink mass. Click a dot to open its head.")
        points = [p for p in (event.selection.points if event and event.selection else []) if p["curve_number"] == 0]
        if points:
            show_head(result, stack, *divmod(points[0]["point_index"], stats.n_heads))


def unit_of_window() -> str:
    return "patches" if kind == "image" else "tokens"


def heatmaps_view() -> None:
    controls, shown = st.columns([1, 3], gap="medium")
    with controls:
        stats = stats_of(key, result, stack, window_slider(unit_of_window()))
        statistic = st.radio("Statistic", list(viz.STATISTICS), format_func=lambda n: viz.stat_label(stats, n),
                             key="flow_statistic")
    with shown:
        title = f"{result.model} · {stack} · {viz.stat_label(stats, statistic)}"
        st.plotly_chart(viz.stat_heatmap(stats, statistic, title), key="flow_heatmap",
                        config=png_config(f"{result.model}_{statistic}"))
        st.download_button("All statistics (.json)", lambda: json.dumps(stats.to_json()),
                           file_name=f"{result.model.replace('/', '_')}-{stack}-stats.json", mime="application/json",
                           on_click="ignore", icon=":material/download:", key="flow_stats_json")


@st.cache_data(max_entries=512, show_spinner=False)
def input_stats(model_name: str, _model, digest: str, _input, size: int | None, stack: str, window: int):
    """Per-head statistics of one of many inputs (a text or a PIL image) to ``_model``."""
    captured = attnviz.capture(_model, _input, size=size) if size else attnviz.capture(_model, _input)
    return head_stats(captured, stack if stack in captured.attn else captured.stacks[0], window=window)


def many_inputs() -> list[tuple[str, str, object]]:
    """(name, digest, input) for every input of the "many" view: the sample photos or the
    example texts by default, or the uploaded files."""
    if kind == "image":
        files = st.file_uploader("Photos (several at once)", type=image_ui.UPLOAD_TYPES, accept_multiple_files=True,
                                 key="flow_many_images")
        pairs = [(f.name, f.getvalue()) for f in files] or [(n, sample_bytes(n)) for n in SAMPLES]
        return [(n, hashlib.sha1(d).hexdigest(), open_image(d, n)) for n, d in pairs]
    files = st.file_uploader("Text files (several at once)", type=["txt", "md"], accept_multiple_files=True,
                             key="flow_many_texts")
    if files:
        texts = [(f.name, read_text(f.getvalue(), f.name)) for f in files]
    else:
        typed = st.text_area("Texts, one per line", "\n".join(MANY_TEXTS), height=150, key="flow_many_typed")
        texts = [(f"line {i + 1}", t) for i, t in enumerate(l for l in typed.splitlines() if l.strip())]
    return [(n, hashlib.sha1(t.encode()).hexdigest(), t) for n, t in texts]


def many_view() -> None:
    controls, shown = st.columns([1, 3], gap="medium")
    with controls:
        window = window_slider(unit_of_window())
        inputs = many_inputs()
    if not inputs:
        st.info("Add a few inputs to average over.")
        return
    model = get_model(name)
    bar = st.progress(0.0, text=f"Statistics of {len(inputs)} inputs…")
    per_input = []
    for i, (_, digest, value) in enumerate(inputs):
        per_input.append(input_stats(name, model, digest, value, size if kind == "image" else None, stack, window))
        bar.progress((i + 1) / len(inputs), text=f"Statistics of {len(inputs)} inputs… {i + 1}/{len(inputs)}")
    bar.empty()
    spread = average_stats(per_input)
    with controls:
        local_min, global_min = thresholds(spread.mean)
    with shown:
        what = "sample photos" if kind == "image" and not st.session_state.get("flow_many_images") else "inputs"
        st.plotly_chart(viz.distance_depth(spread.mean, spread=spread.std, local_min=local_min, global_min=global_min,
                                           title=f"{result.model} · mean over {spread.n} {what}, bars: ± 1 std"),
                        key="flow_many_depth", config=png_config(f"{result.model}_distance_depth_mean"))
        st.caption("The ViT paper averaged 128 images; here every input gets the same model and input size, "
                   "and each head's statistics are averaged over the inputs.")
        statistic = st.selectbox("Heatmap of", list(viz.STATISTICS), format_func=lambda n: viz.stat_label(spread.mean, n),
                                 key="flow_many_statistic")
        st.plotly_chart(viz.stat_heatmap(spread.mean, statistic, f"mean {viz.stat_label(spread.mean, statistic)}"),
                        key="flow_many_heatmap", config=png_config(f"{result.model}_{statistic}_mean"))


def source_picker() -> int:
    """The output token whose sources are traced: CLS (or the last token of a decoder) first."""
    tokens = result.query_tokens(stack)
    default = len(tokens) - 1 if result.is_causal(stack) else 0
    return st.selectbox("From output token", range(len(tokens)), index=default, key=f"flow_source_{stack}",
                        format_func=lambda i: f"{i}: {display_label(tokens[i])}")


def flow_view() -> None:
    if stack == "cross":
        st.info("Rollout and flow follow self-attention down a stack: choose the encoder or the decoder.")
        return
    attn = result.attn[stack]
    controls, shown = st.columns([1, 3], gap="medium")
    with controls:
        source = source_picker()
        fusion = st.selectbox("Heads fused by", flow.FUSIONS, key="flow_fusion")
        if kind == "text":
            merge = st.toggle("Merge sub-words into words", key="flow_merge")
            hide = st.toggle("Hide special tokens", key="flow_hide", help="Renormalise over the other tokens.")
        else:
            style = image_ui.style_controls()
    layers, n = attn.shape[0], attn.shape[-1]
    rolled = remembered(("rollout", key, stack, source, fusion), lambda: flow.rollout(attn, fusion, source=source))
    weights = {"raw attention": flow.last_layer_attention(attn, source, fusion), "rollout": rolled}
    if layers * n * n <= flow.MAX_FLOW_EDGES:
        weights["flow"] = exact_flow(key, attn, stack, source, fusion)
    else:
        with shown:
            st.info(f"Exact flow over {n} tokens and {layers} layers is too big a graph; shown: raw attention and rollout.")
    label = display_label(result.query_tokens(stack)[source])
    with shown:
        if kind == "text":
            axis = token_axis(result.key_tokens(stack), result.key_special(stack), result.key_word_spans(stack),
                              merge=merge, hide_special=hide)
            one = token_axis(["output"], [False], None)
            shares = {m: reduce(w[None, :], one, axis)[0] for m, w in weights.items()}
            fig = viz.token_bars(axis.labels, shares, title=f"How “{label}” (token {source}) draws on the input")
        else:
            fig = viz.method_overlays(photo.display, result.grid, weights, style)
        st.plotly_chart(fig, key="flow_methods", config=png_config(f"{result.model}_flow_from_{source}"))
        st.caption("Raw attention: the last layer only. Rollout: every layer's heads fused, the residual added "
                   "(0.5 A + 0.5 I), rows renormalised, layers multiplied. Flow: the same matrices as capacities "
                   "of a layered graph, max-flow from the output token to each input token, normalised to sum 1.")


def spread_view() -> None:
    if kind != "text" or stack == "cross":
        st.info("The layer-by-layer view is for the self-attention of a text.")
        return
    attn = result.attn[stack]
    controls, shown = st.columns([1, 3], gap="medium")
    with controls:
        source = source_picker()
        fusion = st.selectbox("Heads fused by", flow.FUSIONS, key="flow_spread_fusion")
        top_k = st.slider("Strongest edges per layer", 1, 20, 5, key="flow_top_k")
    edges = flow.rollout_spread(attn, source, fusion, top_k)
    labels = [display_label(t) for t in result.key_tokens(stack)]
    with shown:
        st.plotly_chart(viz.spread_sankey(edges, labels, attn.shape[0],
                                          title=f"How “{labels[source]}” spreads, layer by layer (rollout shares)"),
                        key="flow_sankey", config=png_config(f"{result.model}_spread_{source}"))
        st.caption("Left: the output token; right: the input. An edge from token i to token j across a layer carries "
                   "the share of the output token's rollout that passes from i to j there; only the strongest "
                   "edges of each layer are drawn.")


@st.fragment
def explore() -> None:
    """The chosen view; only this part reruns when its controls change."""
    with friendly_errors():
        remember("flow_view", url_choice("view", list(VIEWS), "depth"))
        view = st.segmented_control("View", list(VIEWS), format_func=VIEWS.get, key="flow_view", required=True)
        st.query_params["view"] = view
        {"depth": depth_view, "heatmaps": heatmaps_view, "many": many_view, "flow": flow_view,
         "spread": spread_view}[view]()


explore()
