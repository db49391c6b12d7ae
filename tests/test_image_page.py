"""The image explorer page, run through the app with a real photo and the real dinov2-small
(the tests of URL state, uploads, style controls and downloads on a tiny random ViT,
tests/conftest.py's tiny_models).

The overlays travel as JPEGs inside plotly figures, with one (invisible) point per patch whose
hover text is the patch's weight: the tests decode both and compare the weights with a capture
made here, outside the app.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from apptest_tools import array, assert_clean, figures, open_page, pictures
from PIL import Image
from streamlit.testing.v1 import AppTest

import attnviz
from attnviz.analysis.flow import fuse_heads, rollout
from attnviz.analysis.stats import head_stats
from attnviz.inputs import open_image
from attnviz.samples import DEFAULT_SAMPLE
from attnviz.ui import image as image_ui

PAGE = "pages/image.py"
VIEWS = ["cls", "heads", "layers", "patch", "rollout", "prefix"]
WEIGHT_ATOL = 1e-4  # hover texts have 4 decimals; app and test run the model separately


# -- helpers ------------------------------------------------------------------------------
def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def upload(at: AppTest, name: str, data: bytes, mime: str = "image/png") -> AppTest:
    return at.file_uploader(key="image_upload").set_value((name, data, mime)).run()


def show(at: AppTest, view: str) -> AppTest:
    """Open the view named ``view`` in the URL (its tab, as a click on it does)."""
    at.session_state["image_view"] = next(v.label for v in image_ui.VIEWS if v.key == view)
    return at.run()


def weights(fig: dict) -> np.ndarray:
    """The per-patch values shown on hover, in row-major patch order."""
    (points,) = [t for t in fig["data"] if t["type"] == "scatter"]
    return np.array([float(v) for v in points["text"]])


@pytest.fixture(scope="module")
def cat_png(photo) -> bytes:
    return encode(photo)


@pytest.fixture(scope="module")
def result(dinov2, cat_png):
    """The capture the page makes of the uploaded cat at 224 px, made here independently."""
    return attnviz.capture(dinov2, open_image(cat_png), size=224)


@pytest.fixture(scope="module")
def cat_page(cat_png) -> AppTest:
    return upload(open_page(PAGE), "cat.png", cat_png)


def open_tiny(**params: str) -> AppTest:
    """The page on the tiny random ViT ("test-vit", 8 px patches) at 112 px."""
    return open_page(PAGE, model="test-vit", size="112", **params)


@pytest.fixture
def tiny_cat_page(cat_png, tiny_models) -> AppTest:
    return upload(open_tiny(), "cat.png", cat_png)


# -- the views ----------------------------------------------------------------------------
def test_every_view_renders_overlays_with_the_photos_aspect_ratio(cat_page, photo):
    at = cat_page
    aspect = photo.width / photo.height
    for view in VIEWS:
        show(at, view)
        assert_clean(at)
        assert at.query_params["view"] == view
        figs = figures(at)
        overlays = [p for f in figs for p in pictures(f)]
        assert overlays, f"view {view} shows no overlay"
        for picture in overlays:
            assert abs(picture.width / picture.height - aspect) < 0.01, (view, picture.size)
    show(at, "heads")
    assert len(pictures(figures(at)[0])) == 6  # dinov2-small: 6 heads
    show(at, "layers")
    assert len(pictures(figures(at)[0])) == 12


def test_cls_overlay_shows_the_captured_weights_and_follows_layer_and_head(cat_page, result):
    at = show(cat_page, "cls")
    attn = result.attn["encoder"].astype(np.float64)
    grid = result.grid

    def current():
        (fig,) = figures(at)
        (picture,) = pictures(fig)
        return weights(fig), np.asarray(picture)

    at.slider(key="image_lh_layer").set_value(11).run()
    at.selectbox(key="image_lh_head").set_value(0).run()
    values, last = current()
    assert values.shape == (grid.rows * grid.cols,)
    np.testing.assert_allclose(values, attn[11, 0, 0, 1:], atol=WEIGHT_ATOL)

    at.slider(key="image_lh_layer").set_value(5).run()
    assert_clean(at)
    values, picture = current()
    np.testing.assert_allclose(values, attn[5, 0, 0, 1:], atol=WEIGHT_ATOL)
    assert np.abs(picture.astype(int) - last).mean() > 2, "changing the layer left the overlay as it was"
    assert at.query_params["layer"] == "5"

    at.selectbox(key="image_lh_head").set_value(3).run()
    values, changed = current()
    np.testing.assert_allclose(values, attn[5, 3, 0, 1:], atol=WEIGHT_ATOL)
    assert np.abs(changed.astype(int) - picture).mean() > 2, "changing the head left the overlay as it was"
    assert at.query_params["head"] == "3"

    at.selectbox(key="image_lh_head").set_value("max").run()
    values, _ = current()
    np.testing.assert_allclose(values, fuse_heads(attn[5], "max")[0, 1:], atol=WEIGHT_ATOL)


def test_patch_query_shows_the_patchs_row_and_marks_it(cat_page, result):
    at = show(cat_page, "patch")
    at.slider(key="image_lh_layer").set_value(11).run()
    at.selectbox(key="image_lh_head").set_value(2).run()
    grid = result.grid
    row, col = 3, 17
    at.number_input(key="image_patch_row").set_value(row).run()
    at.number_input(key="image_patch_col").set_value(col).run()
    assert_clean(at)
    (fig,) = figures(at)
    token = grid.prefix + row * grid.cols + col
    np.testing.assert_allclose(weights(fig), result.attn["encoder"][11, 2, token, 1:].astype(np.float64),
                               atol=WEIGHT_ATOL)
    # the cyan outline sits on the patch: its pixels' centre is the patch's centre
    (picture,) = pictures(fig)
    rgb = np.asarray(picture).astype(int)
    cyan = (rgb[..., 0] < 90) & (rgb[..., 1] > 200) & (rgb[..., 2] > 200)
    ys, xs = np.nonzero(cyan)
    assert len(xs) > 20
    assert abs(xs.mean() / picture.width - (col + 0.5) / grid.cols) < 0.3 / grid.cols
    assert abs(ys.mean() / picture.height - (row + 0.5) / grid.rows) < 0.3 / grid.rows


def test_rollout_next_to_raw_attention_matches_the_analysis(cat_page, result):
    at = show(cat_page, "rollout")
    at.slider(key="image_lh_layer").set_value(11).run()
    at.selectbox(key="image_lh_head").set_value(0).run()
    attn = result.attn["encoder"]
    raw, rolled = figures(at)
    np.testing.assert_allclose(weights(raw), attn[11, 0, 0, 1:].astype(np.float64), atol=WEIGHT_ATOL)
    np.testing.assert_allclose(weights(rolled), rollout(attn, "mean", 0.0, source=0)[1:], atol=WEIGHT_ATOL)

    at.selectbox(key="image_rollout_fusion").set_value("max").run()
    at.slider(key="image_rollout_discard").set_value(0.5).run()
    at.slider(key="image_lh_layer").set_value(7).run()
    assert_clean(at)
    _, rolled = figures(at)
    np.testing.assert_allclose(weights(rolled), rollout(attn[:8], "max", 0.5, source=0)[1:], atol=WEIGHT_ATOL)


def test_prefix_view_shows_each_heads_sink_mass(cat_page, result):
    at = show(cat_page, "prefix")
    assert_clean(at)
    sink, received = figures(at)
    (heatmap,) = sink["data"]
    np.testing.assert_allclose(array(heatmap["z"]).astype(np.float64), head_stats(result).sink_mass, atol=1e-3)
    assert pictures(received)


def test_style_controls_change_the_overlay(tiny_cat_page):
    at = show(tiny_cat_page, "cls")
    before = np.asarray(pictures(figures(at)[0])[0]).astype(int)
    at.slider(key="_image_opacity").set_value(0.0).run()
    photo_only = np.asarray(pictures(figures(at)[0])[0]).astype(int)
    at.slider(key="_image_opacity").set_value(0.8).run()
    at.selectbox(key="_image_colormap").set_value("Viridis").run()
    after = np.asarray(pictures(figures(at)[0])[0]).astype(int)
    assert np.abs(before - photo_only).mean() > 5 and np.abs(before - after).mean() > 5


def test_the_url_chooses_sample_view_layer_and_head(tiny_models):
    at = open_tiny(sample="astronaut", view="layers", layer="1", head="2")
    assert_clean(at)
    assert any("astronaut.png" in c.value for c in at.caption)
    assert at.slider(key="image_lh_layer").value == 1
    assert at.selectbox(key="image_lh_head").value == 2
    (fig,) = figures(at)
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    assert titles[1] == "<b>layer 1</b>" and titles[0] == "layer 0"
    for name in ("model", "layer", "head", "view", "size", "sample"):
        assert name in at.query_params


def test_replacing_an_upload_shows_the_new_photo(photo, tiny_models):
    """Choosing another photo while one is shown: the browser removes the first file (a run
    with no file shows the sample photo and selects its pill), then sends the new file with
    the pills' value from before that run (none selected). The new photo must be shown; it was
    the sample (found by bench/load.py, seen in chromium)."""
    at = upload(open_tiny(), "first.png", encode(photo))
    at.file_uploader(key="image_upload").set_value(None).run()
    assert at.button_group(key="image_sample_pills").value == DEFAULT_SAMPLE
    at.file_uploader(key="image_upload").set_value(("second.png", encode(photo.crop((0, 0, 300, 240))), "image/png"))
    at.button_group(key="image_sample_pills").set_value(None)  # the browser's stale value
    at.run()
    assert_clean(at)
    assert any(c.value.startswith("**second.png** (300 x 240 px)") for c in at.caption), [c.value for c in at.caption]
    assert at.button_group(key="image_sample_pills").value is None
    assert "sample" not in at.query_params


def test_input_size_and_model_set_the_patch_grid():
    at = open_page(PAGE, sample="cat", size="112")
    assert_clean(at)
    assert any("8 x 12 patches of 14 px" in c.value for c in at.caption)  # 451 x 300 at 112 px
    at.selectbox(key="_model_box").set_value("clip-vit-b16").run()
    assert_clean(at)
    assert at.query_params["model"] == "clip-vit-b16"
    assert any("clip-vit-b16 saw 176 x 112 px: 7 x 11 patches of 16 px" in c.value for c in at.caption)
    (fig,) = figures(at)
    assert weights(fig).shape == (7 * 11,)


def test_a_text_model_folder_gets_a_clear_message(tiny_models):
    at = open_page(PAGE, model=str(tiny_models["test-bert"]))
    assert not at.exception, at.exception
    assert len(at.error) == 1 and "is not an image model" in at.error[0].value


def test_downloads_are_offered(tiny_cat_page):
    at = show(tiny_cat_page, "cls")
    labels = [b.label for b in at.download_button]
    assert "Attention maps (.npz)" in labels
    assert "PNG, 451 x 300 px" in labels


# -- bad uploads --------------------------------------------------------------------------
def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels, with no pixel data at all."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def animated_gif() -> bytes:
    """Three frames: red, green, blue."""
    frames = [Image.new("RGB", (64, 48), c) for c in ((200, 0, 0), (0, 200, 0), (0, 0, 200))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def huge_photo(photo) -> bytes:
    """A 12000 x 8000 JPEG (the cat, enlarged)."""
    return encode(photo.resize((12000, 8000), Image.Resampling.NEAREST), "JPEG", quality=70)


REFUSED = {
    "zero bytes": ("empty.png", lambda photo: b"", "is empty (0 bytes)"),
    "truncated JPEG": ("cut.jpg", lambda photo: encode(photo, "JPEG")[:6000], "truncated or damaged"),
    "text named .png": ("notes.png", lambda photo: b"these are my notes, not a picture\n" * 20,
                        "is not an image that attnviz can read"),
    "decompression bomb": ("bomb.png", lambda photo: png_claiming(40_000, 40_000), "decompression bomb"),
}
ACCEPTED = {
    "1 x 1 image": ("dot.png", lambda photo: encode(Image.new("RGB", (1, 1), (200, 30, 30))), "only 1 x 1 px"),
    "animated GIF": ("anim.gif", lambda photo: animated_gif(), "the first one is shown"),
    "12000 x 8000 photo": ("huge.jpg", huge_photo, "12000 x 8000 px: downscaled to 4096 x 2731"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_upload_is_refused_with_a_clear_message_and_the_app_stays_usable(case, photo, tiny_models):
    name, make, message = REFUSED[case]
    at = upload(open_tiny(), name, make(photo))
    assert not at.exception, at.exception
    assert at.button_group(key="image_sample_pills").value is None  # no sample looks chosen
    assert len(at.error) == 1 and message in at.error[0].value, [e.value for e in at.error]
    assert name in at.error[0].value
    assert not at.get("plotly_chart")
    at.button_group(key="image_sample_pills").set_value("cat").run()  # pick a sample: all works again
    assert_clean(at)
    assert len(figures(at)) == 1
    assert any("**cat.png** (451 x 300 px)" in c.value for c in at.caption)
    assert at.query_params["sample"] == "cat"


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_odd_upload_is_shown_with_a_note(case, photo, tiny_models):
    name, make, message = ACCEPTED[case]
    at = upload(open_tiny(), name, make(photo))
    assert_clean(at)
    notes = [i.value for i in at.info]
    assert any(message in n for n in notes), notes
    (fig,) = figures(at)
    assert pictures(fig)
    if case == "animated GIF":  # the first frame, red, is what the model saw
        red = np.asarray(open_image(make(photo)))
        assert (red[..., 0] > 150).all() and (red[..., 1] < 50).all()
