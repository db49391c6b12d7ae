"""The notebook API (attnviz.figures), figure export (attnviz.export), the `plot` and `report`
commands and the app's figure downloads, on real captures of the bundled models."""
from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import plotly.graph_objects as go
import pytest
from apptest_tools import array
from PIL import Image

from attnviz import figures
from attnviz.analysis.flow import rollout
from attnviz.cli import main
from attnviz.errors import AttnvizError

TEXT = "The animal didn't cross the street because it was too tired."


@pytest.fixture(scope="module")
def text_result(minilm):
    import attnviz

    return attnviz.capture(minilm, TEXT)


@pytest.fixture(scope="module")
def image_result(dinov2, photo):
    import attnviz

    return attnviz.capture(dinov2, photo)


@pytest.fixture(scope="module")
def saved(text_result, image_result, tmp_path_factory):
    folder = tmp_path_factory.mktemp("results")
    return text_result.save(folder / "text.npz"), image_result.save(folder / "image.npz")


def _spec(fig: go.Figure) -> dict:
    return json.loads(fig.to_json())


# -- the notebook API -----------------------------------------------------------------------
def test_heatmap_shows_the_asked_head_or_the_fused_heads(text_result, saved):
    attn = text_result.attn["encoder"].astype(np.float32)
    fig = figures.heatmap(text_result, layer=2, head=5, row_max=False)
    assert np.allclose(array(_spec(fig)["data"][0]["z"]), text_result.attention(2, 5), atol=1e-6)
    fused = figures.heatmap(saved[0], row_max=False)  # a path works too; default: last layer, mean
    assert np.allclose(array(_spec(fused)["data"][0]["z"]), attn[-1].mean(axis=0), atol=1e-5)
    assert "layer 5 · mean of all heads" in fused.layout.title.text


def test_every_view_of_a_text_and_an_image(text_result, image_result):
    for view in ("heatmap", "overview", "lines", "focus", "rollout", "distance", "flow", "highlight", "routes"):
        assert isinstance(getattr(figures, view)(text_result), go.Figure), view
    for view in ("heatmap", "overview", "rollout", "distance", "routes"):
        assert isinstance(getattr(figures, view)(image_result), go.Figure), view
    picture = figures.overlay(image_result, layer=-1, head=0)
    assert isinstance(picture, Image.Image) and picture.size == image_result.image.shape[1::-1]
    with pytest.raises(AttnvizError, match="overlays are for images"):
        figures.overlay(text_result)
    with pytest.raises(AttnvizError, match="highlighting is for texts"):
        figures.highlight(image_result)


def test_highlight_colours_each_token_by_its_rollout_share(text_result):
    fig = figures.highlight(text_result, per_line=5)
    z = array(_spec(fig)["data"][0]["z"]).ravel()
    n = len(text_result.tokens)
    expected = rollout(text_result.attn["encoder"], "mean", source=0)
    assert np.allclose(z[:n], expected, atol=1e-6) and np.isnan(z[n:]).all()
    assert list(fig.data[0].text.ravel()[:n]) == [t.replace("<", "&lt;") for t in text_result.tokens]
    signed = figures.highlight(text_result, np.linspace(-1, 1, n))
    assert signed.data[0].zmin == -1 and signed.data[0].zmax == 1  # a diverging scale around 0
    with pytest.raises(AttnvizError, match="one score per token"):
        figures.highlight(text_result, np.ones(3))


def test_focus_follows_one_token_through_every_layer(text_result):
    fig = figures.focus(text_result, token=4, head=1, row_max=False)
    z = array(_spec(fig)["data"][0]["z"])
    layers = text_result.shape("encoder")[0]
    assert np.allclose(z, np.stack([text_result.attention(l, 1, queries=[4])[0] for l in range(layers)]), atol=1e-6)


def test_bad_arguments_are_clear_errors(text_result):
    with pytest.raises(AttnvizError, match="layer 6 is out of range"):
        figures.heatmap(text_result, layer=6)
    with pytest.raises(AttnvizError, match="heads are fused by one of"):
        figures.heatmap(text_result, head="median")
    with pytest.raises(AttnvizError, match="no 'cross' stack"):
        figures.overview(text_result, stack="cross")
    with pytest.raises(AttnvizError, match="not an attnviz result"):
        figures.heatmap("no-such-file.npz")


# -- export and the command line ------------------------------------------------------------
def _svg_text(data: bytes) -> str:
    root = ET.fromstring(data)  # parses as XML
    return " ".join(t for el in root.iter() for t in [el.text] if t)


def test_plot_writes_svg_pdf_and_png(saved, tmp_path, capsys):
    text, image = saved
    svg = tmp_path / "heat.svg"
    assert main(["plot", str(text), "--view", "heatmap", "--layer", "2", "--head", "5", "--out", str(svg)]) == 0
    words = _svg_text(svg.read_bytes())
    assert "layer 2 · head 5" in words and "animal" in words  # the title and the tokens, as text
    pdf = tmp_path / "overlay.pdf"
    assert main(["plot", str(image), "--view", "overlay", "--head", "mean", "--out", str(pdf)]) == 0
    assert pdf.read_bytes().startswith(b"%PDF")
    png = tmp_path / "rollout.png"
    assert main(["plot", str(text), "--view", "rollout", "--out", str(png)]) == 0
    with Image.open(png) as im:
        assert im.width == 3000  # 1000 px figure at 3x
    routes = tmp_path / "routes.svg"
    assert main(["plot", str(text), "--view", "routes", "--token", "0", "--out", str(routes)]) == 0
    assert "attention routes to token 0" in _svg_text(routes.read_bytes())
    assert main(["plot", str(text), "--view", "lines", "--out", str(tmp_path / "f.gif")]) == 1
    assert "--out must end in .png, .svg or .pdf" in capsys.readouterr().err
    assert main(["plot", str(image), "--view", "highlight", "--out", str(tmp_path / "h.svg")]) == 1


class _Links(HTMLParser):
    """Every src and href attribute of a page."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("src", "href") and v]


def test_report_is_self_contained(saved, tmp_path):
    text, image = saved
    for result, out in ((text, tmp_path / "text.html"), (image, tmp_path / "image.html")):
        assert main(["report", str(result), "--out", str(out)]) == 0
        page = out.read_text(encoding="utf-8")
        parser = _Links()
        parser.feed(page)
        assert not [link for link in parser.links if link.lower().startswith(("http:", "https:", "//"))]
        assert "Plotly.newPlot" in page and "Per-head statistics (encoder)" in page
        assert figures.load(result).model in page and "input digest (SHA-256)" in page
    page = (tmp_path / "image.html").read_text(encoding="utf-8")
    assert 'src="data:image/jpeg;base64,' in page  # the overlay travels inside the page
    assert page.count("<tr><td>") == 12 * 6  # one statistics row per head of dinov2-small


def test_picture_exports_keep_their_size():
    from attnviz.export import figure_bytes

    picture = Image.new("RGB", (320, 200), (200, 30, 30))
    with Image.open(io.BytesIO(figure_bytes(picture, "png"))) as im:
        assert im.size == (960, 600)
    assert figure_bytes(picture, "svg").startswith(b"<svg")


# -- the app's downloads ----------------------------------------------------------------------
def test_no_chart_is_shown_without_the_figure_downloads():
    """Every plotly chart of the app goes through attnviz.ui.charts.show_chart."""
    from conftest import ROOT

    direct = [f"{path.relative_to(ROOT)}:{i}" for folder in ("attnviz/ui", "pages") for path in (ROOT / folder).glob("*.py")
              if path.name != "charts.py" for i, line in enumerate(path.read_text().splitlines(), 1)
              if "plotly_chart(" in line]
    assert not direct, direct


@pytest.mark.parametrize("view", ["Head heatmap", "Model overview", "Token lines", "Token focus"])
def test_text_views_offer_svg_pdf_png_and_the_report(tiny_models, view):
    from apptest_tools import open_page

    at = open_page("pages/text.py", model="test-bert")
    at.session_state["view"] = view
    at.run()
    assert not at.exception, at.exception
    labels = [b.label for b in at.download_button]
    charts = len(at.get("plotly_chart"))
    assert charts >= 1
    for label in ("SVG (vector)", "PDF (vector)", "PNG (3× resolution)"):
        assert labels.count(label) == charts, (label, labels)
    assert "Report .html" in labels
