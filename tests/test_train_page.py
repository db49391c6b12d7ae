""""Build your own", run through the app: a short training improves the model, the attention
figure holds the model's own attention, and a saved model opens in the text explorer."""
from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from apptest_tools import array, assert_clean, charts
from conftest import app_path
from streamlit.testing.v1 import AppTest

import attnviz
from attnviz.lab import custom
from attnviz.models import upload
from attnviz.ui.train import CLASSIFIER_RUN_KEY, RUN_KEY

sys.path.insert(0, str(Path(__file__).parent / "corpus"))
from make_corpus import files_of, tiny_bert, with_config  # noqa: E402

PAGE = "pages/train.py"


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    """Saved models go to a temporary ATTNVIZ_HOME (no bundled model is needed here)."""
    monkeypatch.setenv("ATTNVIZ_HOME", str(tmp_path / "home"))


def train(steps: int, **widgets: str) -> AppTest:
    at = AppTest.from_file(app_path(), default_timeout=300).run()
    at.switch_page(PAGE).run()
    assert_clean(at)
    for key, value in widgets.items():  # select boxes: train_task, train_attention
        at.selectbox(key=key).set_value(value)
    at.number_input(key="train_steps").set_value(steps)
    at.button(key="train_start").click().run()
    assert_clean(at)
    return at


def test_training_learns_and_shows_the_models_attention():
    at = train(40)
    run = at.session_state[RUN_KEY]
    assert len(run.trainer.history) == 40
    assert run.held_out > 0.5  # chance is 0.1
    assert "step 40 of 40" in " ".join(m.value for m in at.markdown)
    figs = charts(at)
    (curve,) = [f for k, f in figs.items() if k.startswith("train_chart_")]
    accuracy = array([t for t in curve["data"] if t["name"] == "token accuracy"][0]["y"])
    assert len(accuracy) == 40 and accuracy[-5:].mean() > accuracy[:5].mean() + 0.3
    # the grid shows the attention the model computes on the input on screen
    text = at.text_input(key="train_input_reverse_12").value
    _, _, attn, _ = run.net.run(text)
    panels = [t for t in figs["train_grid"]["data"] if t["type"] == "heatmap"]
    assert len(panels) == 2 * 4
    np.testing.assert_allclose(np.stack([array(p["z"]) for p in panels]), attn.reshape(8, 12, 12), atol=1e-6)
    # Stop ends a run: the target drops to the steps done, and nothing more is trained
    at.button(key="train_stop").click().run()
    assert len(at.session_state[RUN_KEY].trainer.history) == 40


def test_saved_model_opens_in_the_text_explorer():
    at = train(30)
    at.button(key="train_save").click().run()
    assert_clean(at)
    (folder,) = custom.saved_models()
    assert at.selectbox(key="train_inspect").value == f"saved:{folder.name}"  # a label, never a path
    text = at.text_input(key="train_input_reverse_12").value
    at.button(key="train_open_inspect_pages/text.py").click().run()
    assert_clean(at)
    assert at.session_state["model"] == f"saved:{folder.name}"
    assert at.text_area(key="_text_box").value == text
    result = attnviz.capture(attnviz.load_model(str(folder)), text)
    heat = charts(at)["text_heatmap"]
    (trace,) = [t for t in heat["data"] if t["type"] == "heatmap"]
    weights = array(trace["customdata"] if "customdata" in trace else trace["z"])
    layer, head = int(at.query_params["layer"][0]), int(at.query_params["head"][0])
    np.testing.assert_allclose(weights, result.attn["encoder"][layer, head].astype(np.float32), atol=2e-3)


def test_other_attention_kinds_train_on_the_page():
    at = train(5, train_task="copy", train_attention="additive")
    assert at.session_state[RUN_KEY].net.config.attention == "additive"
    at = train(5, train_attention="local")
    assert any("expect it to fail" in i.value for i in at.info)  # reverse with w = 2 cannot reach


def test_upload_refused_at_loading_leaves_the_page_working(tmp_path):
    """A zip that unpacks but whose config.json is refused at loading (hidden_size 10^9 over
    small weights): the refusal shows in the upload block, its folder is removed, and training
    still works with the file still uploaded."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in with_config(files_of(tiny_bert(tmp_path / "bert")), hidden_size=10**9).items():
            z.writestr(name, data)
    at = AppTest.from_file(app_path(), default_timeout=300).run()
    at.switch_page(PAGE).run()
    at.file_uploader(key="train_upload").set_value(("model.zip", buf.getvalue(), "application/zip")).run()
    assert not at.exception, at.exception
    (error,) = [e.value for e in at.error]
    assert "Refused before loading" in error
    assert not any(upload.uploads_dir().iterdir())  # the refused upload's folder is gone
    assert any(s.value == "Inspect" for s in at.subheader)  # the page went on below the upload
    at.number_input(key="train_steps").set_value(5)
    at.button(key="train_start").click().run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == [error]  # still said, once, in the upload block
    assert len(at.session_state[RUN_KEY].trainer.history) == 5
    assert "train_grid" in charts(at)  # and the trained model is inspected below


# -- classifiers ------------------------------------------------------------------------------
def train_classifier(kind: str, steps: int, **widgets) -> AppTest:
    at = AppTest.from_file(app_path(), default_timeout=300).run()
    at.switch_page(PAGE).run()
    at.radio(key="train_kind").set_value(kind).run()
    assert_clean(at)
    for key, value in widgets.items():
        at.selectbox(key=key).set_value(value)
    at.number_input(key=f"train_{kind}_steps").set_value(steps)
    at.button(key="train_cls_start").click().run()
    assert_clean(at)
    return at


def test_text_classifier_trains_shows_held_out_results_and_opens_in_the_text_explorer():
    at = train_classifier("text", 40, train_arch="attention-lstm")
    run = at.session_state[CLASSIFIER_RUN_KEY]
    assert len(run.trainer.history) == 40 and run.net.config.arch == "attention-lstm"
    ev = run.evaluation
    assert run.held_out == ev.accuracy and ev.rationale_mass is not None
    confusion = charts(at)["train_confusion"]
    np.testing.assert_array_equal(array(confusion["data"][0]["z"]), ev.confusion)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Held-out accuracy"] == f"{ev.accuracy:.1%}"
    assert metrics["Attention on the rationale"] == f"{ev.rationale_mass:.1%}"
    shown = " ".join(h.proto.body for h in at.get("html"))
    assert shown.count("<span") >= sum(len(w) for w in run.data.test_words[:12])  # every word, shaded
    at.button(key="train_cls_save").click().run()
    assert_clean(at)
    (folder,) = custom.saved_models()
    assert custom.is_classifier(folder)
    at.button(key="train_open_classifier_pages/text.py").click().run()
    assert_clean(at)
    text = " ".join(run.data.test_words[0])
    assert at.session_state["model"] == f"saved:{folder.name}" and at.text_area(key="_text_box").value == text
    result = attnviz.capture(attnviz.load_model(str(folder)), text)
    assert result.tokens[0] == "[POOL]"
    heat = charts(at)["text_heatmap"]
    (trace,) = [t for t in heat["data"] if t["type"] == "heatmap"]
    weights = array(trace["customdata"] if "customdata" in trace else trace["z"])
    np.testing.assert_allclose(weights, result.attn["encoder"][0, 0].astype(np.float32), atol=2e-3)


def test_image_classifier_trains_on_digits_and_opens_in_the_image_explorer():
    at = train_classifier("image", 20)
    run = at.session_state[CLASSIFIER_RUN_KEY]
    assert run.net.config.arch == "vit" and len(run.trainer.history) == 20
    assert run.evaluation.confusion.shape == (10, 10) and "train_confusion" in charts(at)
    per_class, examples = at.get("image")  # per-class overlays, then held-out [CLS] and rollout pairs
    assert len(per_class.proto.imgs) == 10 and len(examples.proto.imgs) == 12
    at.button(key="train_cls_save").click().run()
    (folder,) = custom.saved_models()
    at.button(key="train_open_classifier_pages/image.py").click().run()
    assert not at.exception, at.exception
    assert at.session_state["model"] == f"saved:{folder.name}"
    assert any("32 x 32 px images only" in w.value for w in at.warning)  # the ViT reads its own size only (a result warning)
    assert any("saw 32 x 32 px: 4 x 4 patches of 8 px" in c.value for c in at.caption)
    assert not at.error and at.get("plotly_chart")


def test_a_bad_csv_is_refused_on_the_page():
    at = AppTest.from_file(app_path(), default_timeout=300).run()
    at.switch_page(PAGE).run()
    at.radio(key="train_kind").set_value("text").run()
    at.radio(key="train_text_data").set_value("csv").run()
    at.file_uploader(key="train_csv_file").set_value(("r.csv", "text,label\ncafé,1\n".encode("latin-1"), "text/csv")).run()
    assert not at.exception, at.exception
    (error,) = [e.value for e in at.error]
    assert "not UTF-8" in error
    assert not any(b.key == "train_cls_start" for b in at.button)


@pytest.mark.parametrize("task, arch, kind", [("sentiment", "lstm-attention", "text"), ("sentiment", "transformer", "text"),
                                              ("digits", "vit", "image")])
def test_saved_classifiers_open_on_the_local_vs_global_page(task, arch, kind, tmp_path):
    from apptest_tools import open_page

    from attnviz.lab import tasks

    folder = tasks.train(task, arch, tmp_path / arch, steps=2).folder
    at = open_page("pages/flow.py", model=str(folder), kind=kind)
    assert_clean(at)
    for view in ("heatmaps", "flow"):
        at = open_page("pages/flow.py", model=str(folder), kind=kind, view=view)
        assert_clean(at)
        assert at.get("plotly_chart") or at.get("image")


def test_a_zip_of_class_folders_trains_on_the_page():
    from test_classifiers import class_folders
    from test_custom_model import zipped

    at = AppTest.from_file(app_path(), default_timeout=300).run()
    at.switch_page(PAGE).run()
    at.radio(key="train_kind").set_value("image").run()
    at.radio(key="train_image_data").set_value("images").run()
    at.file_uploader(key="train_images_file").set_value(("shapes.zip", zipped(class_folders(5)), "application/zip")).run()
    assert_clean(at)
    assert any("8 training and 2 held-out examples, 2 classes: blue, red" in c.value for c in at.caption)
    at.number_input(key="train_image_steps").set_value(3)
    at.button(key="train_cls_start").click().run()
    assert_clean(at)
    run = at.session_state[CLASSIFIER_RUN_KEY]
    assert run.data.labels == ["blue", "red"] and run.evaluation.confusion.shape == (2, 2)
