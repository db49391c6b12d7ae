"""The views of the text explorer, each a ``draw(captured)`` listed in :data:`VIEWS`: one head
as a heatmap, every head at once, BertViz-style token lines, and one token through all layers;
with the result's header and the view options above them.

Figures are built for what is on screen (attnviz.viz.text); the CSV of a view's matrix and the
.npz of the whole result are made only when their download button is clicked.
"""
from __future__ import annotations

import streamlit as st

from attnviz.analysis.tokens import last_content_unit
from attnviz.cache import ByteCache
from attnviz.lazy import READ_BYTES
from attnviz.result import AttentionResult
from attnviz.ui import keys
from attnviz.ui.charts import report_button, result_download, show_chart
from attnviz.ui.common import cached_job, job, url_int
from attnviz.ui.selectors import HEAD_FUSIONS, head_select, layer_slider
from attnviz.ui.views import Captured, View
from attnviz.viz import text as viz
from attnviz.viz.heatmap import safe_filename
from attnviz.viz.tiles import tile_px

OVERVIEW_CACHE_BYTES = 64 << 20  # thumbnails of every head: at most [L, H, 64, 64] float32 each
COLOUR_RANGES = ("0 … row max", "0 … 1")
LH_KEY = "text_lh"  # widget keys of the heatmap's layer and head selectors: text_lh_layer, text_lh_head


def result_header(result: AttentionResult) -> None:
    """A one-line summary and the .npz download of the whole result."""
    sizes = " · ".join(f"{s} {result.attn[s].shape[0]} layers × {result.attn[s].shape[1]} heads, "
                       f"{result.attn[s].shape[2]} × {result.attn[s].shape[3]}" for s in result.stacks)
    c1, c2 = st.columns([5, 1], vertical_alignment="center")
    c1.caption(f"{result.model} · {len(result.tokens)} tokens · {sizes} · "
               f"{result.timings.get('total_s', 0.0):.2f} s")
    with c2:
        result_download(result, "Result .npz", f"{result.model}_attention")
        report_button(result, key="text_report")


def view_options() -> viz.TextOptions:
    """Options shared by every view: merge sub-words, hide special tokens, colour range."""
    with st.container(horizontal=True, vertical_alignment="center"):
        merge = st.toggle("Merge sub-words into words", key="text_merge",
                          help="A word's row is the mean of its tokens' rows; a key word gets the sum of "
                               "its tokens' weights. Rows still sum to 1.")
        hide = st.toggle("Hide special tokens", key="text_hide",
                         help="Drop [CLS], [SEP], BOS, </s>, padding… and renormalise each row over the "
                              "other keys (a row that gave everything to them stays 0).")
        colour = st.segmented_control("Colour range", COLOUR_RANGES, default=COLOUR_RANGES[0], key="text_colour",
                                      required=True, help="0 … row max: each row from white to its own "
                                      "strongest weight (patterns show in long texts). 0 … 1: the raw weight.")
    return viz.TextOptions(merge=merge, hide_special=hide, row_max=colour != COLOUR_RANGES[1])


# -- the views -------------------------------------------------------------------------------
def _csv_button(csv: viz.Csv, name: str, label: str = "Matrix .csv", key: str | None = None) -> None:
    st.download_button(label, data=csv, file_name=safe_filename(name) + ".csv", mime="text/csv",
                       on_click="ignore", icon=":material/table:", key=key,
                       help="The numbers of this view at full resolution, rows and columns labelled.")


def _base(result: AttentionResult, stack: str) -> str:
    return f"{result.model}_{stack}"


def heatmap_view(captured: Captured) -> None:
    """One layer and head (or heads fused), tokens on both axes; a zoom window when long."""
    result, stack, options = captured.result, captured.stack, captured.options
    c1, c2 = st.columns(2)
    with c1:
        layer = layer_slider(result, stack, LH_KEY)
    with c2:
        head = head_select(result, stack, LH_KEY)
    fig, csv = viz.head_heatmap(result, stack, layer, head, options)
    name = f"{_base(result, stack)}_L{layer}_H{head}"
    show_chart(fig, name, key="text_heatmap")
    q, k = viz.axes(result, stack, options)
    if max(len(q), len(k)) > viz.HEATMAP_MAX:
        st.markdown(f"**Zoom** · any {viz.ZOOM} × {viz.ZOOM} window at full resolution")
        z1, z2 = st.columns(2)
        q0 = z1.slider("First query", 0, max(0, len(q) - viz.ZOOM), 0, key="text_zoom_q")
        k0 = z2.slider("First key", 0, max(0, len(k) - viz.ZOOM), q0 if stack != "cross" else 0,
                       key="text_zoom_k")
        zoom_fig, _ = viz.head_heatmap(result, stack, layer, head, options, zoom=(q0, k0))
        show_chart(zoom_fig, f"{name}_zoom_q{q0}_k{k0}", key="text_zoom")
    _csv_button(csv, name)


def open_in_heatmap(layer: int, head: int) -> None:
    """Switch to the head heatmap showing ``layer`` and ``head`` (a full rerun)."""
    st.query_params[keys.LAYER], st.query_params[keys.HEAD] = str(layer), str(head)
    for key in (f"{LH_KEY}_layer", f"{LH_KEY}_head"):  # the selectors start again from the URL
        st.session_state.pop(key, None)
    st.session_state[keys.VIEW] = VIEWS[0].label
    st.rerun(scope="app")


def overview_view(captured: Captured) -> None:
    """Every layer x head as thumbnails in one image; clicking one opens it in the heatmap."""
    result, stack, options = captured.result, captured.stack, captured.options
    n_layers, n_heads = result.attn[stack].shape[:2]
    layer = url_int(keys.LAYER, n_layers - 1, 0, n_layers - 1)
    fused = st.query_params.get(keys.HEAD, "0") in HEAD_FUSIONS
    selected = None if fused else (layer, url_int(keys.HEAD, 0, 0, n_heads - 1))
    thumbs = thumbnails(result, stack, options)
    fig, csv = viz.overview(result, stack, thumbs, options, selected)
    event = show_chart(fig, f"{_base(result, stack)}_overview", key="text_overview", on_select="rerun",
                  selection_mode="points")
    points = [p for p in (event.selection.points if event else []) if "point_index" in p]
    if points:  # the click targets are in row-major (layer, head) order
        open_in_heatmap(*divmod(int(points[0]["point_index"]), n_heads))
    _csv_button(csv, f"{_base(result, stack)}_overview", "Thumbnails .csv")


OVERVIEWS: ByteCache[viz.Thumbnails] = ByteCache(lambda: OVERVIEW_CACHE_BYTES, lambda t: t.values.nbytes)


def thumbnails(result: AttentionResult, stack: str, options: viz.TextOptions) -> viz.Thumbnails:
    """The overview's thumbnails, computed once per result (named by its digest) and shared by
    sessions (a cache bounded by bytes), as a job of the visitor with a progress bar over the
    layers, each layer a step (the heads of a layer together; see docs/performance.md). Not a
    Streamlit cache: the bar is drawn while the function runs, which Streamlit's caches would
    replay on every hit."""
    n_layers, n_heads = result.attn[stack].shape[:2]
    side = tile_px(n_layers * n_heads, max(result.shape(stack)[2:]))
    need = READ_BYTES + n_layers * n_heads * side * side * 4
    return cached_job(OVERVIEWS, (result.digest, stack, options), "Every head of the model", need,
                      lambda progress: viz.thumbnails(result, stack, options, progress))


def lines_view(captured: Captured) -> None:
    """Token lines (BertViz head view): per-head colours, a token filter, a mass threshold."""
    result, stack, options = captured.result, captured.stack, captured.options
    n_heads = result.attn[stack].shape[1]
    q, k = viz.axes(result, stack, options)
    c1, c2, c3 = st.columns([2, 3, 2])
    with c1:
        layer = layer_slider(result, stack, "text_lines")
    with c2:
        heads = st.multiselect("Heads", list(range(n_heads)), default=list(range(n_heads)), key="text_lines_heads",
                               format_func=lambda h: f"head {h}")
    with c3:
        share = st.slider("Lines covering this share of each row", 0.05, 1.0, 0.7, 0.05, key="text_lines_share",
                          help="Per query, the strongest lines that together reach this share of its weight.")
    t1, t2 = st.columns([3, 2])
    direction = t2.radio("Lines of the token", ("out", "in"), horizontal=True, key="text_lines_dir",
                         format_func={"out": "what it attends to", "in": "what attends to it"}.get)
    axis = q if direction == "out" else k
    token = t1.selectbox("Token", [None, *range(len(axis))], key="text_lines_token",
                         format_func=lambda u: "all tokens" if u is None else f"{u}: {axis.labels[u]}")
    starts = [0, 0]
    if max(len(q), len(k)) > viz.LINES_MAX:
        w1, w2 = st.columns(2)
        starts[0] = w1.slider("First query shown", 0, max(0, len(q) - viz.LINES_MAX), 0, key="text_lines_q0")
        same = stack != "cross"
        starts[1] = starts[0] if same else w2.slider("First key shown", 0, max(0, len(k) - viz.LINES_MAX), 0,
                                                     key="text_lines_k0")
        if token is not None:  # keep the chosen token in view
            i = 0 if direction == "out" else 1
            if not starts[i] <= token < starts[i] + viz.LINES_MAX:
                starts[i] = max(0, min(token - viz.LINES_MAX // 2, len(axis) - viz.LINES_MAX))
                if same:
                    starts[1 - i] = starts[i]
    if not heads:
        st.info("Pick at least one head.")
        return
    fig, csv = viz.token_lines(result, stack, layer, heads, options, share=share, token=token,
                               direction=direction, starts=tuple(starts))
    name = f"{_base(result, stack)}_L{layer}_lines"
    show_chart(fig, name, key="text_lines")
    _csv_button(csv, name, "Lines .csv")


def focus_view(captured: Captured) -> None:
    """Token focus: what one token attends to, and what attends to it, in every layer."""
    result, stack, options = captured.result, captured.stack, captured.options
    q, k = viz.axes(result, stack, options)
    c1, c2, c3 = st.columns([2, 3, 3])
    with c1:
        head = head_select(result, stack, "text_focus")
    with c2:
        query = st.selectbox("Token (query)", range(len(q)), key="text_focus_q",
                             index=last_content_unit(q, result.query_special(stack)),
                             format_func=lambda u: f"{u}: {q.labels[u]}")
    with c3:
        if stack == "cross":
            key = st.selectbox("Source token (key)", range(len(k)), key="text_focus_k",
                               index=last_content_unit(k, result.key_special(stack)),
                               format_func=lambda u: f"{u}: {k.labels[u]}")
        else:
            key = query
    with job("Token focus through every layer", READ_BYTES, key=("focus", result.digest, stack, head, query, key, options)) \
            as update:
        fig_to, fig_by, csv_to, csv_by = viz.token_focus(result, stack, head, options, query=query, key=key,
                                                         progress=update)
    name = f"{_base(result, stack)}_H{head}_focus"
    show_chart(fig_to, f"{name}_q{query}_to", key="text_focus_to")
    show_chart(fig_by, f"{name}_k{key}_by", key="text_focus_by")
    b1, b2 = st.columns(2)
    with b1:
        _csv_button(csv_to, f"{name}_q{query}_to", "Attends to .csv", key="text_focus_csv_to")
    with b2:
        _csv_button(csv_by, f"{name}_k{key}_by", "Attended by .csv", key="text_focus_csv_by")


VIEWS = (
    View("heatmap", "Head heatmap", heatmap_view),
    View("overview", "Model overview", overview_view),
    View("lines", "Token lines", lines_view),
    View("focus", "Token focus", focus_view),
)
