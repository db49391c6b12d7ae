"""Streamlit blocks of the head atlas page: the atlas of head roles, similar heads, and compare.

- atlas: the layers x heads grid coloured by each head's role (attnviz.analysis.roles) on this
  text, on the induction probe, or averaged over a batch table (``python -m attnviz batch``);
  a threshold slider moves the labels; clicking a head opens its map below;
- similar heads: the clustered JS-divergence heatmap with its dendrogram, and the heads most
  like a chosen one, across layers;
- compare: two models (or checkpoints) on this text, or this text against a second one on the
  same model, aligned on words: side-by-side maps, A - B, and a divergence per head.

Each view is a ``draw(captured)`` listed in :data:`VIEWS`; scores and divergences are jobs of
the visitor, cached per result (attnviz.ui.measures).
"""
from __future__ import annotations

import numpy as np
import streamlit as st

import attnviz.batch as batch
import attnviz.families as families
from attnviz.analysis.roles import DEFAULT_THRESHOLD, HeadRoles
from attnviz.analysis.similarity import cluster_heads, queries_within, similar_heads
from attnviz.compare import (
    Aligned,
    align_inputs,
    align_models,
    closest_head,
    same_head_divergence,
    source_stack,
)
from attnviz.models.bundled import BUNDLED
from attnviz.probes import DEFAULT_PERIOD
from attnviz.result import AttentionResult
from attnviz.ui.charts import show_chart
from attnviz.ui.inputs import TEXT
from attnviz.ui.measures import divergence_of, probe_of, roles_of
from attnviz.ui.models import get_model, run_capture
from attnviz.ui.views import Captured, View
from attnviz.viz import heads as viz
from attnviz.viz import text as text_viz

SOURCES = {"text": "this text", "probe": "induction probe", "table": "batch table (.parquet)"}
MAX_TABLE_UPLOAD_MB = 200
MAX_TABLE_FILES = 64
MAX_MORE_TEXTS = 16  # extra texts the similar-heads view averages over
COMPARE_MODES = {"models": "Two models or checkpoints", "inputs": "Two texts, one model"}
OWN = "a folder or hub id…"
DEFAULT_SECOND_TEXT = "The animal didn't cross the river because it was too wide."


# -- caches ------------------------------------------------------------------------------------
@st.cache_data(max_entries=4, show_spinner=False)
def _table(files: tuple[tuple[str, bytes], ...]):
    return batch.read_uploaded(list(files))


# -- atlas ---------------------------------------------------------------------------------------
def _roles_source(result: AttentionResult, stack: str) -> tuple[HeadRoles, AttentionResult | None, str]:
    """The scores to show, the result whose heads a click opens (None: none), and a note."""
    model = get_model(result.model)
    options = [k for k in SOURCES if k != "probe" or families.of(model).TOKEN_IDS]
    source = st.radio("Scores from", options, format_func=SOURCES.get, key="heads_source")
    if source == "probe":
        c1, c2 = st.columns(2)
        period = c1.number_input("Tokens in each copy", 4, min(256, model.max_tokens // 2 - 2), DEFAULT_PERIOD,
                                 key="heads_period")
        seed = c2.number_input("Seed", 0, 10_000, 0, key="heads_seed")
        probe, roles = probe_of(model, int(period), int(seed))
        stack = source_stack(probe)
        return roles[stack], probe, (f"{int(period)} random tokens repeated twice (seed {int(seed)}): induction and "
                                     "duplicate_token are measured")
    if source == "table":
        files = st.file_uploader("Batch parts (part-*.parquet from python -m attnviz batch)", type=["parquet"],
                                 accept_multiple_files=True, key="heads_table", max_upload_size=MAX_TABLE_UPLOAD_MB)
        if not files:
            st.info("Upload the part-*.parquet files of a batch run (its --out folder).")
            st.stop()
        table = _table(tuple((f.name, f.getvalue()) for f in files[:MAX_TABLE_FILES]))
        models = sorted(set(table.column("model").to_pylist()))
        chosen = st.selectbox("Model in the table", models, key="heads_table_model") if len(models) > 1 else models[0]
        stacks = sorted(set(table.column("stack").to_pylist()), key=["encoder", "decoder", "cross"].index)
        stack = stack if stack in stacks else stacks[0]
        roles = batch.roles_from_table(table, stack, chosen)
        n = len(set(table.column("input_id").to_pylist()))
        return roles, result if chosen == result.model else None, f"{chosen} · {stack} · mean over {n} inputs"
    return roles_of(result, stack), result, f"{result.model} · {stack} · this text"


def atlas_view(captured: Captured) -> None:
    """The role atlas: the grid coloured by label, a threshold slider, a click opens a head."""
    result, stack = captured.result, captured.stack
    controls, shown = st.columns([1, 3], gap="medium")
    with controls:
        roles, opened, note = _roles_source(result, stack)
        threshold = st.slider("Label threshold", 0.05, 1.0, DEFAULT_THRESHOLD, 0.05, key="heads_threshold",
                              help="A head is labelled with its strongest role when that score reaches this; "
                                   "else 'local' when its local share does; else 'none'.")
        labels = roles.labels(threshold)
        counts = {name: int((labels == name).sum()) for name in viz.ROLE_COLOURS}
        st.markdown(" · ".join(f"**{n}** {name}" for name, n in counts.items() if n))
    n_heads = roles.shape[1]
    selected = st.session_state.get("heads_selected")
    if selected is not None and not (selected[0] < roles.shape[0] and selected[1] < n_heads):
        selected = None
    with shown:
        fig = viz.atlas_figure(roles.scores, labels, title="Head roles", note=note, selected=selected)
        event = show_chart(fig, f"{result.model}_head_roles", key="heads_atlas", on_select="rerun",
                           selection_mode="points")
        points = [p for p in (event.selection.points if event and event.selection else [])
                  if p.get("curve_number") == 1]
        if points:
            selected = divmod(int(points[0]["point_index"]), n_heads)
            st.session_state["heads_selected"] = selected
        if selected is None:
            st.caption("Click a head to open it.")
            return
        layer, head = selected
        st.markdown(f"**Layer {layer}, head {head}**: " + ", ".join(
            f"{name} {v[layer, head]:.3f}" for name, v in roles.scores.items() if not np.isnan(v[layer, head])))
        if opened is None:
            st.caption("The table is of another model than the page's: pick that model to open its heads.")
            return
        head_stack = source_stack(opened) if opened is not result else stack
        fig, _ = text_viz.head_heatmap(opened, head_stack, layer, head, text_viz.TextOptions())
        show_chart(fig, f"{opened.model}_L{layer}_H{head}", key="heads_opened")


# -- similar heads -------------------------------------------------------------------------------
def similar_view(captured: Captured) -> None:
    """The clustered divergence heatmap and the heads most like a chosen one."""
    result, stack = captured.result, captured.stack
    n_layers, n_heads, n_q, n_k = result.shape(stack)
    queries = queries_within(n_layers * n_heads, n_k)
    more = [t.strip() for t in st.text_area(
        "More texts to average over (one per line, optional)", key="heads_more_texts", height=80,
        help="The divergence of two heads is then the mean over this text and these.").splitlines() if t.strip()]
    d = divergence_of(result, stack, queries)
    others = [run_capture(result.model, t) for t in more[:MAX_MORE_TEXTS]]
    if others:
        d = np.mean([d] + [divergence_of(r, stack, queries) for r in others], axis=0)
    clusters = cluster_heads(d, n_heads)
    n_texts = 1 + len(others)
    sampled = f", {queries} evenly spaced queries of each" if n_q > queries else ""
    c1, c2 = st.columns([1, 3], gap="medium")
    with c1:
        chosen = st.selectbox("Heads like", range(n_layers * n_heads), key="heads_like",
                              format_func=clusters.name)
        layer, head = divmod(int(chosen), n_heads)
        k = st.slider("How many", 3, 30, 10, key="heads_like_k")
        near = similar_heads(d, n_heads, layer, head, k)
        st.dataframe({"head": [f"L{l} H{h}" for l, h, _ in near], "JS divergence": [round(v, 4) for _, _, v in near]},
                     hide_index=True, key="heads_like_table")
    with c2:
        fig = viz.clustered_figure(clusters, title="Heads clustered by how alike they attend",
                                   note=f"{result.model} · {stack} · mean JS divergence of their rows (bits) over "
                                        f"{n_texts} text{'s' if n_texts > 1 else ''}{sampled}",
                                   selected=int(chosen))
        show_chart(fig, f"{result.model}_head_similarity", key="heads_clustered")


# -- compare -------------------------------------------------------------------------------------
def _second_model(first: str) -> str:
    """A model B: another bundled text model, or a folder or hub id (a checkpoint)."""
    names = [n for n, m in BUNDLED.items() if families.get(m.family).READS in TEXT]
    default = next((n for n in names if n != first), names[0])
    choice = st.selectbox("Model B", names + [OWN], index=names.index(default), key="compare_model")
    if choice == OWN:
        choice = st.text_input("Folder or hub id of model B", key="compare_own",
                               placeholder="/path/to/checkpoint  or  org/model").strip()
        if not choice:
            st.info("Type the folder of a checkpoint (config.json and *.safetensors) or a hub id.")
            st.stop()
    return choice


def _aligned(result: AttentionResult, text: str) -> Aligned:
    mode = st.radio("Compare", list(COMPARE_MODES), format_func=COMPARE_MODES.get, key="compare_mode")
    model_a = get_model(result.model)
    if mode == "models":
        name_b = _second_model(result.model)
        result_b = run_capture(name_b, text)
        return align_models(model_a, result, get_model(name_b), result_b, text)
    text_b = st.text_input("Text B (the same number of words)", DEFAULT_SECOND_TEXT, key="compare_text")
    result_b = run_capture(result.model, text_b)
    return align_inputs(model_a, result, text, result_b, text_b)


def _head_picker(label: str, shape: tuple[int, ...], key: str) -> tuple[int, int]:
    n_layers, n_heads = shape[:2]
    c1, c2 = st.columns(2)
    layer = c1.number_input(f"{label}: layer", 0, n_layers - 1, 0, key=f"{key}_layer")
    head = c2.number_input(f"{label}: head", 0, n_heads - 1, 0, key=f"{key}_head")
    return int(layer), int(head)


def compare_view(captured: Captured) -> None:
    """Two models (or checkpoints) on this text, or two texts on this model, on common words."""
    controls, shown = st.columns([1, 3], gap="medium")
    with controls:
        aligned = _aligned(captured.result, captured.request.text)
        la, ha = _head_picker("A", aligned.a.shape, "compare_a")
        lb, hb = _head_picker("B", aligned.b.shape, "compare_b")
    a, b = aligned.a[la, ha], aligned.b[lb, hb]
    name_a, name_b = aligned.names
    with shown:
        show_chart(viz.side_by_side(a, b, aligned.labels, aligned.labels,
                                    title_a=f"A {name_a}: L{la} H{ha}", title_b=f"B {name_b}: L{lb} H{hb}",
                                    title="Side by side, on the words both read"), "compare_maps", key="compare_maps")
        show_chart(viz.difference_figure(a - b, aligned.labels, title="A − B (red: A attends more)"),
                   "compare_difference", key="compare_difference")
        if aligned.a.shape[:2] == aligned.b.shape[:2]:
            per_head = same_head_divergence(aligned)
            title = "Each head of A against the same head of B (JS divergence, bits)"
        else:
            per_head, _ = closest_head(aligned)
            title = "Each head of A against its closest head of B (JS divergence, bits)"
        show_chart(viz.head_grid(per_head, title=title, label="JS"), "compare_per_head", key="compare_per_head")
        st.caption("Words are runs of non-space characters; a token belongs to the word holding its last "
                   "character. Keys are summed and queries averaged within a word; special tokens are left "
                   "out and rows renormalised.")


VIEWS = (
    View("atlas", "Atlas", atlas_view),
    View("similar", "Similar heads", similar_view),
    View("compare", "Compare", compare_view),
)
