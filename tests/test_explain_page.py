"""The "Which picture to trust" page with AppTest on real models (minilm-l6, dinov2-small):
the scoreboard's bars are the Spearman correlations of an explanation made here, the
highlighted text shows every token of the input, the image overlays one panel per method, and
the many-inputs scoreboard averages the per-input correlations."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from apptest_tools import array, assert_clean, charts, open_page, pictures
from streamlit.testing.v1 import AppTest

from attnviz.analysis import faithfulness as faith
from attnviz.explain import DEFAULT_METHODS, explain
from attnviz.ui.explain import DEFAULT_TEXT
from attnviz.viz.explain import METHOD_LABELS, method_label

PAGE = "pages/explain.py"
FAST_METHODS = tuple(m for m in DEFAULT_METHODS if m != "integrated_gradients")  # the many-inputs default


def bars(fig: dict, trace: int = 0) -> dict[str, float]:
    """Method label -> bar length (NaN for a missing bar) of one scoreboard trace."""
    t = fig["data"][trace]
    return {label: (math.nan if x is None else float(x)) for label, x in zip(t["y"], array(t["x"]).tolist())}


def expected_bars(rho: dict[str, float], output: dict) -> dict[str, float]:
    return {method_label(m, output): r for m, r in rho.items()}


@pytest.fixture(scope="module")
def text_page() -> AppTest:
    at = open_page(PAGE, kind="text", model="minilm-l6")
    assert_clean(at)
    return at


def test_text_scoreboard_and_highlighting(text_page, minilm):
    at = text_page
    e = explain(minilm, DEFAULT_TEXT)
    board = charts(at)["explain_board"]
    shown = bars(board)
    assert f"ALTI routes, threshold {e.output['routes']['threshold']:.3g}" in shown
    for label, r in expected_bars(e.spearman(), e.output).items():
        assert shown[label] == pytest.approx(r, abs=1e-6) or (math.isnan(r) and math.isnan(shown[label]))
    assert "sentence embedding" in at.markdown[1].value  # the output line
    paragraphs = [m.value for m in at.markdown if "white-space:pre-wrap" in m.value]
    assert len(paragraphs) == len(DEFAULT_METHODS)
    (blank,) = [p for p in paragraphs if "blank-out" in p]
    assert "blank-out" in blank and all(w in blank for w in ("keys", "cabinet", "table", "[CLS]"))
    # the strongest token by blank-out has the fullest background
    strongest = int(np.argmax(e.scores["blankout"]))
    assert f">{e.tokens[strongest]}</span>" in re.findall(r"rgba\(214,39,40,1\.00\)[^>]*>[^<]*</span>", blank)[0]


def test_text_merge_words_and_pick_methods(text_page):
    at = text_page
    at.multiselect(key="explain_highlight").set_value(["rollout"]).run()
    at.toggle(key="explain_merge").set_value(True).run()
    assert_clean(at)
    paragraphs = [m.value for m in at.markdown if "white-space:pre-wrap" in m.value]
    assert len(paragraphs) == 1 and "rollout" in paragraphs[0]


def test_text_many_inputs_scoreboard(text_page, minilm):
    at = text_page
    texts = ["The cat sat on the mat.", "Where did the keys go after the party?", "Rain fell all night long."]
    at.toggle(key="explain_many").set_value(True).run()
    at.text_area(key="explain_many_texts").set_value("\n".join(texts)).run()
    assert_clean(at)
    spread = faith.summarise([explain(minilm, t, methods=FAST_METHODS).spearman() for t in texts])
    label = {m: method_label(m, explain(minilm, DEFAULT_TEXT, methods=("alti", "routes")).output) for m in DEFAULT_METHODS}
    fig = charts(at)["explain_board_many"]
    means = bars(fig, trace=1)
    for m, agreement in spread.items():
        assert means[label[m]] == pytest.approx(agreement.mean, abs=1e-6)
    stds = dict(zip(fig["data"][1]["y"], array(fig["data"][1]["error_x"]["array"])))
    for m in FAST_METHODS:  # the mixing and routes rows too
        if m != "blankout":
            assert stds[label[m]] == pytest.approx(spread[m].std, abs=1e-6)
    # integrated gradients: this input only, no spread
    assert math.isnan(stds[label["integrated_gradients"]]) and math.isnan(means[label["integrated_gradients"]])
    assert "3 inputs" in fig["data"][1]["name"]


def test_image_overlays_one_panel_per_method(dinov2):
    at = open_page(PAGE, kind="image", model="dinov2-small", sample="coffee")  # no size: the smallest
    assert_clean(at)
    assert at.selectbox(key="image_size").value == 112
    fig = charts(at)["explain_overlays"]
    shown = [m for m in DEFAULT_METHODS if m != "globenc"]  # dinov2 is pre-norm: GlobEnc does not apply
    assert len(pictures(fig)) == len(shown)
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    assert "blankout" in titles and titles[0].startswith("attention (ρ ")
    assert "CLS embedding" in at.markdown[1].value
    board = set(bars(charts(at)["explain_board"]))
    (routes,) = [b for b in board if b.startswith("ALTI routes, threshold ")]
    assert board - {routes} == {METHOD_LABELS[m] for m in shown if m not in ("blankout", "routes")}


def test_running_text_spaces_merging_and_escaping():
    from attnviz.analysis.tokens import token_axis
    from attnviz.viz.explain import highlight_html, running_text, unit_scores

    tokens = ["[CLS]", "the", "cab", "##inet", "<b>", "[SEP]"]  # WordPiece: spaces between words, ## joins
    special = [True, False, False, False, False, True]
    spans = [(0, 1), (1, 2), (2, 4), (4, 5), (5, 6)]
    merged = token_axis(tokens, special, spans, merge=True)
    assert running_text(tokens, special, merged) == ["[CLS]", " the", " cabinet", " <b>", " [SEP]"]
    assert running_text(tokens, special, token_axis(tokens, special, spans)) == \
        ["[CLS]", " the", " cab", "inet", " <b>", " [SEP]"]
    np.testing.assert_allclose(unit_scores(np.array([0, 1, 2, 3, -8, 0.0]), merged), [0, 1, 5, -8, 0])
    byte_level = ["The", " cab", "inet", " is"]  # tokens that carry their own spaces stay as they are
    axis = token_axis(byte_level, [False] * 4, None)
    assert "".join(running_text(byte_level, [False] * 4, axis)) == "The cabinet is"
    page = highlight_html([" <b>", " x"], np.array([-8.0, 4.0]), [False, False])
    assert "<b>" not in page.replace("&lt;b&gt;", "") and "rgba(31,119,180,1.00)" in page  # blue: negative, the largest
    assert "rgba(214,39,40,0.50)" in page


def test_build_your_own_trains_the_agreement_task(tmp_path, monkeypatch):
    from attnviz.ui.train import RUN_KEY

    monkeypatch.setenv("ATTNVIZ_HOME", str(tmp_path / "home"))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=300).run()
    at.switch_page("pages/train.py").run()
    at.selectbox(key="train_task").set_value("agreement")
    at.number_input(key="train_steps").set_value(5)
    at.button(key="train_start").click().run()
    assert_clean(at)
    run = at.session_state[RUN_KEY]
    assert run.trainer.net.config.task == "agreement" and len(run.trainer.history) == 5
    assert any("Agreement: the masked verb" in c.value for c in at.caption)
