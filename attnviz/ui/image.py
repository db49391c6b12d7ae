"""The views of the image explorer, each a ``draw(captured)`` listed in :data:`VIEWS`: the
CLS token's attention, all heads, all layers, one patch's attention (click the photo), attention
rollout, the prefix tokens' share, and a vision-language model's text over the photo. The
input blocks are in attnviz.ui.inputs, the overlays in attnviz.ui.overlay.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st
from PIL import Image
from streamlit.delta_generator import DeltaGenerator

from attnviz.analysis.tokens import unique_labels
from attnviz.result import AttentionResult
from attnviz.ui.charts import report_button, result_download, show_chart
from attnviz.ui.measures import cls_rollout_of, stats_of
from attnviz.ui.overlay import Style, show_overlay, style_controls
from attnviz.ui.selectors import HEAD_FUSIONS, layer_head
from attnviz.ui.views import Captured, Photo, View
from attnviz.viz import image as viz
from attnviz.viz.heatmap import heatmap
from attnviz.viz.text import head_name


def downloads(captured: Captured) -> None:
    """The .npz of every attention map and the offline report of the result."""
    result, photo = captured.result, captured.photo
    result_download(result, "Attention maps (.npz)", f"{photo.name.rsplit('.', 1)[0]}-attention",
                    help="Every layer's and head's attention as float16 [layers, heads, queries, keys], "
                         "with the picture the model saw; load it with attnviz.AttentionResult.load.")
    report_button(result, key="image_report")


@dataclass(frozen=True)
class Panel:
    """Where an image view draws: ``controls``, the left column (the layer, head and style
    controls already in it; a view adds its own below), and ``shown``, the right one; with the
    ``layer``, ``head`` and overlay ``style`` chosen."""

    controls: DeltaGenerator
    shown: DeltaGenerator
    layer: int
    head: int | str
    style: Style


def panel(captured: Captured) -> Panel:
    """The image views' layout: layer, head and style on the left, the picture on the right."""
    controls, shown = st.columns([1, 3], gap="medium")
    with controls:
        layer, head = layer_head(captured.result, "encoder", key="image_lh")
        style = style_controls()
    return Panel(controls, shown, layer, head, style)


def seen_photo(result: AttentionResult) -> Photo:
    """The picture a vision-language model saw (its processor resized, cropped or tiled the
    photo) as a Photo, so that overlays sit exactly on the image tokens' places; made once per
    result, not on every rerun of the view."""
    return _seen_photo(result.digest, result)


@st.cache_resource(max_entries=4, show_spinner=False)
def _seen_photo(digest: str, _result: AttentionResult) -> Photo:
    return Photo.of(f"{_result.model}-input", _result.image.tobytes(), Image.fromarray(_result.image))


def vision_language_view(captured: Captured) -> None:
    """A text token's attention over the photo's image tokens (on the picture the model saw),
    beside the text tokens' attention over each other, for one layer and head."""
    result = captured.result
    image = {i for cells in result.image_tokens.values() for row in cells for i in row}
    text = [i for i in range(len(result.tokens)) if i not in image]
    controls, shown = st.columns([1, 3], gap="medium")
    with controls:
        layer, head = layer_head(result, "decoder", key="image_vlm")
        query = st.selectbox("Text token (query)", text, index=len(text) - 1, key="image_vlm_query",
                             format_func=lambda i: f"{i}: {result.tokens[i]!r}"
                             + (" (generated)" if i >= result.prompt_len else ""))
        names = list(result.image_tokens)
        grid = st.radio("Image tokens", names, key="image_vlm_grid", horizontal=True) if len(names) > 1 else names[0]
        style = style_controls()
    with shown:
        heat = result.image_heat(grid, layer, head, query)
        photo = seen_photo(result)
        left, right = st.columns(2)
        with left:
            show_overlay(photo, heat, style, key="image_vlm_overlay", width=420,
                         file_name=_stem(result, f"token{query}-{grid}-layer{layer}-{head}"))
            where = "" if grid == "image" else grid + " "
            st.caption(f"Attention of {result.tokens[query]!r} over the {where}image tokens in layer {layer}, "
                       f"{head_name(head)}: {heat.sum():.1%} of its attention goes to them; {_range(heat, style)}.")
        with right:
            a = result.attn["decoder"][layer].astype(np.float32)
            a = a[head] if isinstance(head, int) else getattr(np, head)(a, axis=0)
            labels = unique_labels([result.tokens[i] for i in text])
            show_chart(heatmap(a[np.ix_(text, text)], labels, labels, title="Text tokens over text tokens",
                               zmax=float(a[np.ix_(text, text)].max() or 1.0)),
                       f"{result.model}_text_L{layer}", key="image_vlm_text")
            st.caption("The same layer and head among the text tokens (prompt and generated); the image "
                       "tokens' columns are left out, so rows sum to less than 1.")


def _range(heat: np.ndarray, style: Style) -> str:
    return (f"weights from {heat.min():.4f} (darkest) to {heat.max():.4f}, brightest from "
            f"{np.quantile(heat, style.top):.4f} (the {style.top * 100:g}th percentile)")


def _stem(result: AttentionResult, what: str) -> str:
    return f"{result.model.replace('/', '_')}-{what}.png"


def cls_view(captured: Captured) -> None:
    """Where the CLS token looks in the chosen layer for the chosen head (or fused heads)."""
    result, p = captured.result, panel(captured)
    layer, head, style = p.layer, p.head, p.style
    with p.shown:
        heat = viz.query_heat(result, layer, head, 0)
        show_overlay(captured.photo, heat, style, key="image_cls", file_name=_stem(result, f"cls-layer{layer}-{head}"))
        st.caption(f"CLS attention in layer {layer}, {head_name(head)}: {_range(heat, style)}; the prefix "
                   f"tokens take the other {1 - heat.sum():.1%}. Hover a patch for its weight.")


def heads_view(captured: Captured) -> None:
    """The CLS attention of every head of the chosen layer, side by side."""
    result, p = captured.result, panel(captured)
    n_heads = result.attn["encoder"].shape[1]
    with p.shown:
        _grid_view(captured.photo, [viz.query_heat(result, p.layer, h, 0) for h in range(n_heads)],
                   [f"head {h}" for h in range(n_heads)], p.head if isinstance(p.head, int) else None, p.style,
                   key="image_heads", what=f"of each head in layer {p.layer}")


def layers_view(captured: Captured) -> None:
    """The CLS attention of the chosen head (or fused heads) in every layer."""
    result, p = captured.result, panel(captured)
    n_layers = result.attn["encoder"].shape[0]
    with p.shown:
        _grid_view(captured.photo, [viz.query_heat(result, l, p.head, 0) for l in range(n_layers)],
                   [f"layer {l}" for l in range(n_layers)], p.layer, p.style,
                   key="image_layers", what=f"of {head_name(p.head)} in every layer")


def _grid_view(photo: Photo, heats: list[np.ndarray], labels: list[str], highlight: int | None, style: Style,
               key: str, what: str) -> None:
    """Overlays of several [rows, cols] maps on the photo as one figure, ``highlight`` outlined."""
    fig = viz.overlay_grid_figure(photo.display, np.stack(heats), labels, style, columns=_columns(len(heats)),
                                  highlight=highlight)
    show_chart(fig, f"{photo.name.rsplit('.', 1)[0]}_{key}", key=key)
    st.caption(f"CLS attention {what}, each map coloured from its own minimum to its {style.top * 100:g}th "
               "percentile. The camera button above the figure saves it as a PNG.")


def _columns(n: int) -> int:
    return 3 if n <= 9 else 4


PATCH_ROW, PATCH_COL = "image_patch_row", "image_patch_col"


def _on_patch_click() -> None:
    """A click on the patch figure selects the patch under it (its point is at (col + .5, row + .5))."""
    points = st.session_state["image_patch"].selection.points
    if points:
        st.session_state[PATCH_ROW] = int(points[0]["y"])
        st.session_state[PATCH_COL] = int(points[0]["x"])


def patch_picker(result: AttentionResult) -> tuple[int, int]:
    """Row and column inputs of the query patch (the centre at first); a click on the patch
    figure sets them."""
    g = result.grid
    for k, n in ((PATCH_ROW, g.rows), (PATCH_COL, g.cols)):
        if k not in st.session_state or st.session_state[k] >= n:
            st.session_state[k] = n // 2
    c1, c2 = st.columns(2)
    row = c1.number_input("Patch row", 0, g.rows - 1, key=PATCH_ROW)
    col = c2.number_input("Patch column", 0, g.cols - 1, key=PATCH_COL)
    return int(row), int(col)


def patch_view(captured: Captured) -> None:
    """What one patch attends to; click the photo to choose the patch."""
    result, p = captured.result, panel(captured)
    layer, head, style = p.layer, p.head, p.style
    with p.controls:
        row, col = patch_picker(result)
    with p.shown:
        heat = viz.query_heat(result, layer, head, viz.patch_token(result.grid, row, col))
        show_overlay(captured.photo, heat, style, key="image_patch", marker=(row, col), on_select=_on_patch_click,
                     file_name=_stem(result, f"patch-r{row}c{col}-layer{layer}-{head}"))
        st.caption(f"Click the photo to pick a patch. Patch (row {row}, col {col}), outlined in cyan, in layer "
                   f"{layer}, {head_name(head)}: {_range(heat, style)}"
                   + (f"; the prefix tokens take the other {1 - heat.sum():.1%}." if result.grid.prefix else "."))


def rollout_controls() -> tuple[str, float]:
    """Head fusion and discard ratio of the rollout."""
    fusion = st.selectbox("Rollout head fusion", HEAD_FUSIONS, key="image_rollout_fusion",
                          help="How the heads of a layer are combined before the layers are multiplied.")
    discard = st.slider("Discard ratio", 0.0, 0.99, 0.0, 0.01, key="image_rollout_discard",
                        help="Share of the smallest fused weights set to zero in each layer "
                             "(vit-explain's denoising; CLS to CLS is kept). 0 is the paper's rollout.")
    return fusion, discard


def rollout_view(captured: Captured) -> None:
    """Raw CLS attention of the chosen layer and head next to the rollout up to that layer."""
    result, photo, p = captured.result, captured.photo, panel(captured)
    layer, head, style = p.layer, p.head, p.style
    with p.controls:
        fusion, discard = rollout_controls()
    with p.shown:
        weights = cls_rollout_of(result, layer, fusion, discard)
    left, right = p.shown.columns(2)
    with left:
        st.markdown(f"**Raw attention**: CLS in layer {layer}, {head_name(head)}")
        raw = viz.query_heat(result, layer, head, 0)
        show_overlay(photo, raw, style, key="image_raw", width=350,
                     file_name=_stem(result, f"cls-layer{layer}-{head}"))
    with right:
        st.markdown(f"**Rollout** of layers 0 to {layer}, {fusion} of heads, discard {discard:.2f}")
        heat = viz.patch_heat(weights, result.grid)
        show_overlay(photo, heat, style, key="image_rollout", label="rollout", width=350,
                     file_name=_stem(result, f"rollout-layer{layer}-{fusion}-discard{discard:.2f}"))
    p.shown.caption("Rollout (Abnar & Zuidema 2020): each layer's heads fused, the residual added "
                    "(0.5 A + 0.5 I), rows renormalised, and the layers multiplied; shown is how much the "
                    "CLS output draws on each input patch.")


def prefix_view(captured: Captured) -> None:
    """How much attention the prefix tokens (CLS, registers) take, per layer and head, and
    which patches take attention in the chosen layer."""
    result, photo, p = captured.result, captured.photo, panel(captured)
    layer, style = p.layer, p.style
    g = result.grid
    names = ", ".join(result.tokens[:g.prefix])
    with p.shown:
        sink = stats_of(result, "encoder").sink_mass
    left, right = p.shown.columns([2, 3])
    with left:
        show_chart(viz.layer_head_heatmap(sink, title=f"Share of attention on {names}", label="share"),
                   _stem(result, "prefix-share").removesuffix(".png"), key="image_sink")
        st.caption(f"Per layer and head, the share of the patches' attention that goes to the prefix "
                   f"token{'s' * (g.prefix > 1)} ({names}), averaged over the patch queries. "
                   f"Overall: {np.nanmean(sink):.1%}.")
    with right:
        st.markdown(f"**Attention each patch receives** in layer {layer}")
        heat = viz.received_heat(result, layer)
        show_overlay(photo, heat, style, key="image_received", label="received", width=420,
                     file_name=_stem(result, f"received-layer{layer}"))
        st.caption("Mean over heads and patch queries. Bright isolated patches are 'sinks': models "
                   "without registers park attention on a few background patches.")


def _has_cls(captured: Captured) -> bool:
    """An image model's capture with a CLS token: the views that start from it apply."""
    return not captured.result.image_tokens and captured.result.grid.prefix > 0


VIEWS = (
    View("cls", "CLS attention", cls_view, _has_cls),
    View("heads", "All heads", heads_view, _has_cls),
    View("layers", "All layers", layers_view, _has_cls),
    View("patch", "Patch query", patch_view, lambda captured: not captured.result.image_tokens),
    View("rollout", "Rollout", rollout_view, _has_cls),
    View("prefix", "Prefix tokens", prefix_view, _has_cls),
    View("text", "Text over the photo", vision_language_view, lambda captured: bool(captured.result.image_tokens)),
)
