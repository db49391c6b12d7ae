"""Streamlit blocks of the image explorer: the photo input, the input size, the views.

Each view draws what is on screen only: an overlay is computed at display size (at most
``DISPLAY_SIDE`` px a side) and sent as one JPEG inside a plotly figure; the full-resolution
PNG is made only when its download button is clicked.
"""
from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field

import numpy as np
import streamlit as st
from PIL import Image

from attnviz.analysis.flow import rollout
from attnviz.analysis.stats import head_stats
from attnviz.analysis.tokens import unique_labels
from attnviz.errors import AttnvizError
from attnviz.inputs import MAX_IMAGE_SIDE, MAX_IMAGE_UPLOAD_MB, open_image
from attnviz.models.bundled import DEFAULT_IMAGE_MODEL
from attnviz.models.loader import Model
from attnviz.result import AttentionResult
from attnviz.samples import DEFAULT_SAMPLE, SAMPLES, credits, sample_bytes
from attnviz.ui.charts import show_chart
from attnviz.ui.common import remember, url_choice
from attnviz.ui.models import get_model, model_picker, run_capture
from attnviz.ui.selectors import HEAD_FUSIONS, layer_head
from attnviz.viz import image as viz
from attnviz.viz.heatmap import heatmap
from attnviz.viz.image import OverlayStyle as Style
from attnviz.viz.text import head_name

UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"]
SIZE_TARGETS = (112, 224, 336, 448)  # shorter side in px, rounded to whole patches per model
SMALL_SIDE = 32  # photos with a shorter side below this get a warning
VIEWS = {
    "cls": "CLS attention",
    "heads": "All heads",
    "layers": "All layers",
    "patch": "Patch query",
    "rollout": "Rollout",
    "prefix": "Prefix tokens",
}
SOURCE_KEY = "image_source"  # "upload" or "sample": whichever the user touched last


@dataclass(frozen=True)
class Photo:
    """An opened photo: ``image`` upright RGB (at most MAX_IMAGE_SIDE px a side), ``display``
    the same at most viz.DISPLAY_SIDE px a side, ``data`` the bytes it came from, ``notes``
    what was done to it (downscaled, first frame of an animation...)."""

    name: str
    data: bytes
    image: Image.Image
    display: Image.Image
    sha: str
    notes: list[str] = field(default_factory=list)


# -- input --------------------------------------------------------------------------------
@st.cache_resource(max_entries=4, show_spinner=False)
def _open(sha: str, name: str, _data: bytes) -> Photo:
    image = open_image(_data, name)
    notes = []
    with warnings.catch_warnings():  # open_image has already refused bombs
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        header = Image.open(io.BytesIO(_data))  # only the header: size and frames
    frames = getattr(header, "n_frames", 1)
    if frames > 1:
        notes.append(f"{name} holds {frames} frames (an animation or pages): the first one is shown.")
    if max(header.size) > MAX_IMAGE_SIDE:
        notes.append(f"{name} is {header.width} x {header.height} px: downscaled to "
                     f"{image.width} x {image.height} px (at most {MAX_IMAGE_SIDE} px a side).")
    if min(image.size) < SMALL_SIDE:
        notes.append(f"{name} is only {image.width} x {image.height} px: the model sees it scaled up, "
                     "so its attention says little about it.")
    display = image.resize(viz.fit_size(image.size, viz.DISPLAY_SIDE), Image.Resampling.LANCZOS)
    return Photo(name, _data, image, display, sha, notes)


SAMPLE_KEY, PILLS_KEY = "image_sample", "image_sample_pills"


def _use_upload() -> None:
    if st.session_state.get("image_upload"):
        st.session_state[SOURCE_KEY] = "upload"
        st.session_state[PILLS_KEY] = None  # no sample looks chosen while an upload is shown
    else:
        st.session_state[SOURCE_KEY] = "sample"
        st.session_state[PILLS_KEY] = st.session_state[SAMPLE_KEY]


def _use_sample() -> None:
    if st.session_state[PILLS_KEY] is None:
        if st.session_state.get(SOURCE_KEY) == "upload":
            # No pill shows while an upload does, so this None is stale, not a click: replacing
            # an upload runs the script once with no file (the sample is shown and its pill set)
            # and then with the new file, which can come with the pills' value from before.
            return
        st.session_state[PILLS_KEY] = st.session_state[SAMPLE_KEY]  # a click on the chosen pill: keep it
    st.session_state[SOURCE_KEY] = "sample"
    st.session_state[SAMPLE_KEY] = st.session_state[PILLS_KEY]


def photo_input() -> Photo:
    """An uploader and sample-photo pills; returns the photo chosen last.

    The sample's name goes to the URL (``?sample=``); an upload removes it. Bad files raise
    AttnvizError (the caller shows it); the widgets above it stay usable.
    """
    uploaded = st.file_uploader(
        "Upload a photo", type=UPLOAD_TYPES, key="image_upload", on_change=_use_upload,
        max_upload_size=MAX_IMAGE_UPLOAD_MB,
        help="PNG, JPEG, WebP, BMP, GIF (first frame) or TIFF. EXIF rotation is respected; "
             f"photos larger than {MAX_IMAGE_SIDE} px a side are downscaled.")
    sample = remember(SAMPLE_KEY, url_choice("sample", list(SAMPLES), DEFAULT_SAMPLE))
    if uploaded is None or remember(SOURCE_KEY, "sample") == "sample":
        st.session_state[SOURCE_KEY] = "sample"
        st.session_state[PILLS_KEY] = sample
    st.pills("…or try a sample photo", list(SAMPLES), key=PILLS_KEY, on_change=_use_sample)
    st.caption(f"Sample photos from scikit-image: {credits()}.")
    if st.session_state[SOURCE_KEY] == "upload":
        data, name = uploaded.getvalue(), uploaded.name
        st.query_params.pop("sample", None)
    else:
        data, name = sample_bytes(sample), f"{sample}.png"
        st.query_params["sample"] = sample
    return _open(hashlib.sha256(data).hexdigest(), name, data)


def size_options(model: Model) -> list[int]:
    """Shorter sides (px) the model can take: SIZE_TARGETS rounded to whole patches (to whole
    aligned windows for a windowed model such as Swin)."""
    step = model.image.step
    return sorted({max(1, round(t / step)) * step for t in SIZE_TARGETS})


def input_size_picker(model: Model) -> int:
    """Select box for the shorter side of the model's input, in the URL as ``?size=``."""
    if model.image is None:
        raise AttnvizError(f"{model.name} is not an image model (its family is {model.family}); this page "
                           "needs an image model such as ViT, DeiT, DINOv2 or a CLIP vision tower.")
    options = size_options(model)
    own = max(1, round(model.image.size / model.image.step)) * model.image.step
    default = own if own in options else options[len(options) // 2]
    current = int(url_choice("size", [str(o) for o in options], str(default)))
    size = st.selectbox(
        "Input size (shorter side)", options, index=options.index(current), key="image_size",
        format_func=lambda s: f"{s} px · {s // model.image.patch} patches",
        help=f"The photo is resized (aspect kept) so that its shorter side is this many pixels, "
             f"each side a whole number of {model.image.patch} px patches. Larger sizes give a "
             "finer grid and take longer (the attention grows with the square of the patches).")
    st.query_params["size"] = str(size)
    return size


def photo_capture(families: tuple[str, ...] = ("image", "vision-language")) -> tuple[Photo, int, AttentionResult]:
    """The image pages' input: model and input size on the left, the photo on the right; then
    the (cached) capture and its one-line summary. Returns the photo, the size (shorter side,
    px) and the result (for a windowed model, the stage picked; for a vision-language model,
    its image and prompt). ``families``: the model families the page shows."""
    settings, source = st.columns([1, 2], gap="large")
    with settings:
        name = model_picker(families, DEFAULT_IMAGE_MODEL)
        model = get_model(name)
        if model.family not in families and not (model.family == "custom" and model.image is not None):
            raise AttnvizError(f"{name} is not an image model (its family is {model.family}); this page shows "
                               f"{' and '.join(families)} models such as ViT, DeiT, DINOv2, Swin or a CLIP vision tower"
                               + (" (open it in the image explorer)." if model.family == "vision-language" else "."))
        if model.family == "vision-language":
            prompt, generate = prompt_box()
        else:
            size = input_size_picker(model)
    with source:
        photo = photo_input()
    if model.family == "vision-language":
        result = run_capture(name, image=photo.image, image_bytes=photo.data, prompt=prompt, generate=generate)
        vision_language_summary(photo, result)
        return photo, 0, result
    result = run_capture(name, image=photo.image, image_bytes=photo.data, size=size)
    stage = stage_picker(result) if result.grids else None
    result = result.for_stage(stage) if stage else result
    capture_summary(photo, result, stage)
    return photo, size, result


DEFAULT_PROMPT = "What is in the picture?"
VLM_GENERATE = 8  # tokens generated by default after the prompt (at most GENERATE_CAP)


def prompt_box() -> tuple[str, int]:
    """The prompt a vision-language model reads with the photo, and how many tokens it writes on."""
    prompt = st.text_input("Prompt", DEFAULT_PROMPT, key="image_prompt", max_chars=500,
                           help="Read after the photo's image tokens; the model's attention from each prompt and "
                                "generated token over the photo is shown.")
    generate = st.number_input("Tokens to generate", 0, 64, VLM_GENERATE, key="image_generate",
                               help="Greedy tokens the model writes after the prompt (0: the prompt alone).")
    return prompt, int(generate)


def vision_language_summary(photo: Photo, result: AttentionResult) -> None:
    """One line on what a vision-language model read: the picture, its image tokens, the text."""
    h, w = result.image.shape[:2]
    grids = " + ".join(f"{name} {len(cells)} x {len(cells[0])}" for name, cells in result.image_tokens.items())
    n_image = sum(len(cells) * len(cells[0]) for cells in result.image_tokens.values())
    st.caption(f"**{photo.name}** ({photo.image.width} x {photo.image.height} px) → {result.model} saw {w} x {h} px "
               f"as {n_image} image tokens ({grids}), then {len(result.tokens) - n_image} text tokens "
               f"({len(result.tokens) - result.prompt_len} generated) · forward pass "
               f"{result.timings.get('forward_s', 0):.2f} s")
    for note in photo.notes + result.warnings:
        st.info(note)


def seen_photo(result: AttentionResult) -> Photo:
    """The picture a vision-language model saw (its processor resized, cropped or tiled the
    photo) as a Photo, so that overlays sit exactly on the image tokens' places."""
    image = Image.fromarray(result.image)
    data = result.image.tobytes()
    display = image.resize(viz.fit_size(image.size, viz.DISPLAY_SIDE), Image.Resampling.LANCZOS)
    return Photo(f"{result.model}-input", data, image, display, hashlib.sha256(data).hexdigest())


def vision_language_view(result: AttentionResult) -> None:
    """A text token's attention over the photo's image tokens (on the picture the model saw),
    beside the text tokens' attention over each other, for one layer and head."""
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


def stage_picker(result: AttentionResult) -> str:
    """For a windowed model (Swin): which stage to show (its stack name). Each stage has its
    own grid (2 x 2 patches merge between stages) and its own heads."""
    stages = result.stacks
    stage = st.segmented_control(
        "Stage", stages, key="image_stage", default=stages[0], required=True,
        format_func=lambda s: f"{s} · {result.grids[s].rows} x {result.grids[s].cols}",
        help="Swin attends within windows of patches, shifted every second block, and merges 2 x 2 "
             "patches between stages. Each token's attention over its window is shown in place on the "
             "photo; outside its window it is zero.") or stages[0]
    return stage


def capture_summary(photo: Photo, result: AttentionResult, stage: str | None = None) -> None:
    """One line on what the model saw (at ``stage`` of a windowed model), then any notes and warnings."""
    g = result.grid
    h, w = result.image.shape[:2]
    prefix = (f" + {g.prefix} prefix token{'s' * (g.prefix > 1)} ({', '.join(result.tokens[:g.prefix])})"
              if g.prefix else ", no prefix token")
    st.caption(f"**{photo.name}** ({photo.image.width} x {photo.image.height} px) → {result.model}"
               f"{f' {stage}' if stage else ''} saw "
               f"{w} x {h} px: {g.rows} x {g.cols} patches of {g.patch_px} px{prefix} · forward pass "
               f"{result.timings.get('forward_s', 0):.2f} s")
    for note in photo.notes + result.warnings:
        st.info(note)


# -- view controls ------------------------------------------------------------------------
def view_picker(result: AttentionResult | None = None) -> str:
    """The view, from and to the URL (``?view=``). A model without a CLS token (SigLIP, Swin)
    has only the patch query view: the others start from the CLS token."""
    views = list(VIEWS) if result is None or result.grid.prefix else ["patch"]
    remember("image_view", url_choice("view", views, views[0]))
    if st.session_state["image_view"] not in views:
        st.session_state["image_view"] = views[0]
    view = st.segmented_control("View", views, format_func=VIEWS.get, key="image_view_box",
                                default=st.session_state["image_view"], required=True)
    st.session_state["image_view"] = view
    st.query_params["view"] = view
    return view


def style_controls() -> Style:
    """Opacity, colour map and top percentile of the overlays (remembered for the session)."""
    style = remember("image_style", Style())
    opacity = st.slider("Opacity", 0.0, 1.0, style.opacity, 0.05, key="_image_opacity",
                        help="0 shows the photo only, 1 the attention colours only.")
    colormap = st.selectbox("Colour map", viz.COLORMAPS, index=viz.COLORMAPS.index(style.colormap),
                            key="_image_colormap")
    top = st.slider("Brightest at percentile", 90.0, 100.0, style.top * 100, 0.5, key="_image_top",
                    help="Patches above this percentile of a map get the brightest colour, so that one "
                         "patch that soaks up attention does not leave the rest dark. 100: the maximum.")
    st.session_state["image_style"] = Style(opacity, colormap, top / 100)
    return st.session_state["image_style"]


# -- showing overlays ---------------------------------------------------------------------
def show_overlay(photo: Photo, heat: np.ndarray, style: Style, *, key: str, file_name: str,
                 marker: tuple[int, int] | None = None, label: str = "weight", on_select=None,
                 width: int = 700) -> None:
    """An overlay of ``heat[row, col]`` as a hoverable figure about ``width`` px wide, with a
    download button for the PNG at the photo's full resolution. ``on_select`` makes its
    patches clickable."""
    picture = viz.heat_overlay(photo.display, heat, style, marker=marker)
    height = min(640, max(160, round(width * photo.image.height / photo.image.width)))
    fig = viz.overlay_figure(picture, heat, label=label, height=height)
    selecting = {} if on_select is None else dict(on_select=on_select, selection_mode="points")
    show_chart(fig, file_name.removesuffix(".png"), key=key, **selecting)

    def full_png() -> bytes:
        return viz.png_bytes(viz.heat_overlay(photo.image, heat, style, marker=marker))

    st.download_button(f"PNG, {photo.image.width} x {photo.image.height} px", full_png, file_name=file_name,
                       mime="image/png", key=f"{key}_png", on_click="ignore", icon=":material/download:")


def _range(heat: np.ndarray, style: Style) -> str:
    return (f"weights from {heat.min():.4f} (darkest) to {heat.max():.4f}, brightest from "
            f"{np.quantile(heat, style.top):.4f} (the {style.top * 100:g}th percentile)")


def _stem(result: AttentionResult, what: str) -> str:
    return f"{result.model.replace('/', '_')}-{what}.png"


def cls_view(result: AttentionResult, photo: Photo, layer: int, head: int | str, style: Style) -> None:
    """Where the CLS token looks in ``layer`` for ``head`` (or fused heads)."""
    heat = viz.query_heat(result, layer, head, 0)
    show_overlay(photo, heat, style, key="image_cls", file_name=_stem(result, f"cls-layer{layer}-{head}"))
    st.caption(f"CLS attention in layer {layer}, {head_name(head)}: {_range(heat, style)}; the prefix "
               f"tokens take the other {1 - heat.sum():.1%}. Hover a patch for its weight.")


def heads_view(result: AttentionResult, photo: Photo, layer: int, head: int | str, style: Style) -> None:
    """The CLS attention of every head of ``layer``, side by side."""
    n_heads = result.attn["encoder"].shape[1]
    _grid_view(photo, [viz.query_heat(result, layer, h, 0) for h in range(n_heads)],
               [f"head {h}" for h in range(n_heads)], head if isinstance(head, int) else None, style,
               key="image_heads", what=f"of each head in layer {layer}")


def layers_view(result: AttentionResult, photo: Photo, layer: int, head: int | str, style: Style) -> None:
    """The CLS attention of ``head`` (or fused heads) in every layer."""
    n_layers = result.attn["encoder"].shape[0]
    _grid_view(photo, [viz.query_heat(result, l, head, 0) for l in range(n_layers)],
               [f"layer {l}" for l in range(n_layers)], layer, style,
               key="image_layers", what=f"of {head_name(head)} in every layer")


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


def patch_view(result: AttentionResult, photo: Photo, layer: int, head: int | str, style: Style,
               patch: tuple[int, int]) -> None:
    """What one patch attends to; click the photo to choose the patch."""
    row, col = patch
    heat = viz.query_heat(result, layer, head, viz.patch_token(result.grid, row, col))
    show_overlay(photo, heat, style, key="image_patch", marker=patch, on_select=_on_patch_click,
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


@st.cache_data(max_entries=16, show_spinner=False)
def _rollout_cls(key: str, _result: AttentionResult, layer: int, fusion: str, discard: float) -> np.ndarray:
    """Row 0 (CLS) of the rollout through layers 0..layer: [keys]."""
    return rollout(_result.attn["encoder"], fusion, discard, source=0, layers=layer + 1)


def rollout_view(result: AttentionResult, photo: Photo, layer: int, head: int | str, style: Style,
                 fusion: str, discard: float) -> None:
    """Raw CLS attention of the chosen layer and head next to the rollout up to that layer."""
    with st.spinner("Rolling out…"):
        weights = _rollout_cls(result.digest, result, layer, fusion, discard)
    left, right = st.columns(2)
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
    st.caption("Rollout (Abnar & Zuidema 2020): each layer's heads fused, the residual added "
               "(0.5 A + 0.5 I), rows renormalised, and the layers multiplied; shown is how much the "
               "CLS output draws on each input patch.")


@st.cache_data(max_entries=8, show_spinner=False)
def _sink_mass(key: str, _result: AttentionResult) -> np.ndarray:
    return head_stats(_result, "encoder").sink_mass


def prefix_view(result: AttentionResult, photo: Photo, layer: int, style: Style) -> None:
    """How much attention the prefix tokens (CLS, registers) take, per layer and head, and
    which patches take attention in ``layer``."""
    g = result.grid
    names = ", ".join(result.tokens[:g.prefix])
    with st.spinner("Measuring…"):
        sink = _sink_mass(result.digest, result)
    left, right = st.columns([2, 3])
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
