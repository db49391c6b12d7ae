"""The hosted demo's bounds at their root: budgets read from the environment, a result cache
bounded by bytes, a bound on computations running at once, uploads private to the session that
sent them, and (ATTNVIZ_HOSTED=1) an allow-list of models and no server path in any message.

The bad-input corpus (test_bad_inputs.py) holds the per-input findings (huge position claims,
two million joiners, padded safetensors, nested JSON ...); this file holds what needs
several sessions, threads or settings."""
from __future__ import annotations

import io
import sys
import threading
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "corpus"))
from apptest_tools import assert_clean, open_page  # noqa: E402
from make_corpus import tiny_bert  # noqa: E402

import attnviz  # noqa: E402
from attnviz import jobs, limits  # noqa: E402
from attnviz.cache import ByteCache  # noqa: E402
from attnviz.inputs import MAX_MODEL_UPLOAD_MB  # noqa: E402
from attnviz.ui import models as ui_models  # noqa: E402


# -- budgets ------------------------------------------------------------------------------------
def test_sizes_parse_with_units_and_bad_values_fall_back(monkeypatch):
    assert limits.parse_bytes("512MB") == 512_000_000
    assert limits.parse_bytes("2GiB") == 2 << 30
    assert limits.parse_bytes("1.5 GB") == 1_500_000_000
    assert limits.parse_bytes("12") == 12
    assert limits.parse_bytes("lots") is None and limits.parse_bytes("5 parsecs") is None
    monkeypatch.delenv(limits.HOSTED_ENV, raising=False)
    monkeypatch.setenv("ATTNVIZ_CACHE_BYTES", "nonsense")
    assert limits.budget(limits.CACHE_BYTES) == limits.CACHE_BYTES[1]
    monkeypatch.setenv(limits.HOSTED_ENV, "1")
    assert limits.budget(limits.CACHE_BYTES) == limits.CACHE_BYTES[2] < limits.CACHE_BYTES[1]
    monkeypatch.setenv("ATTNVIZ_CACHE_BYTES", "300MB")
    assert limits.budget(limits.CACHE_BYTES) == 300_000_000


def test_the_capture_budget_sets_each_models_token_cap(monkeypatch):
    """minilm-l6 embeds 512 positions; with a capture budget that fits fewer, its cap is the
    longest input whose estimated capture fits, and a long text is cut to it with a warning."""
    monkeypatch.setenv("ATTNVIZ_CAPTURE_BYTES", "20MB")
    model = attnviz.load_model("minilm-l6")
    assert 16 <= model.max_tokens < 512
    assert limits.capture_bytes(model.max_tokens, 6, 12, 384) <= 20_000_000 < limits.capture_bytes(
        model.max_tokens + 1, 6, 12, 384)
    result = attnviz.capture(model, "the cat sat on the mat. " * 200)
    assert len(result.tokens) == model.max_tokens and any("cut" in w for w in result.warnings)
    monkeypatch.setenv("ATTNVIZ_CAPTURE_BYTES", "100kB")
    with pytest.raises(attnviz.AttnvizError, match="more memory than this server allows"):
        attnviz.load_model("minilm-l6")


def test_the_model_budget_counts_buffers(monkeypatch):
    """smollm2-135m is 0.54 GB of float32 parameters: a 0.5 GB model budget refuses it before
    loading, naming parameters and buffers."""
    monkeypatch.setenv("ATTNVIZ_MODEL_BYTES", "500MB")
    with pytest.raises(attnviz.AttnvizError, match="parameters and buffers.*Refused before loading"):
        attnviz.load_model("smollm2-135m")


# -- the result cache and concurrent captures ------------------------------------------------------
def test_byte_cache_evicts_by_bytes_and_computes_each_key_once():
    calls = []
    gate = threading.Event()

    def compute(key, size):
        def run():
            calls.append(key)
            gate.wait(5)
            return b"x" * size
        return run

    cache = ByteCache(lambda: 100, len)
    threads = [threading.Thread(target=cache.get, args=("a", compute("a", 40))) for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert calls == ["a"]  # four sessions asked at once: computed once
    cache.get("b", compute("b", 40))
    cache.get("a", compute("a", 40))  # used: now the most recent
    cache.get("c", compute("c", 40))  # 120 > 100: the least recently used ("b") goes
    assert cache.nbytes == 80 and len(cache) == 2
    assert cache.get("a", compute("a", 40)) and calls == ["a", "b", "c"]
    assert len(cache.get("huge", compute("huge", 500))) == 500 and cache.nbytes == 80  # too big to keep


def test_the_apps_result_cache_stays_within_its_byte_budget(monkeypatch):
    """Different texts on minilm-l6, in one session: the shared cache never holds more bytes
    than ATTNVIZ_CACHE_BYTES, however many results were made."""
    texts = [" ".join(f"word{i}" for _ in range(60)) for i in range(5)]  # as many tokens each
    one = attnviz.capture(attnviz.load_model("minilm-l6"), texts[0]).nbytes
    monkeypatch.setenv("ATTNVIZ_CACHE_BYTES", str(int(2.5 * one)))
    ui_models.RESULTS.clear()
    at = open_page("pages/text.py")
    for text in texts:
        at.text_area(key="_text_box").set_value(text).run()
        assert_clean(at)
        assert ui_models.RESULTS.nbytes <= 2.5 * one
    assert len(ui_models.RESULTS) == 2


def test_captures_wait_for_a_free_worker_across_models(monkeypatch):
    """With ATTNVIZ_WORKERS=1, a capture waits while another job holds the only worker (here
    the test's, which has not reached a checkpoint), whichever model it runs."""
    monkeypatch.setenv("ATTNVIZ_WORKERS", "1")
    model = attnviz.load_model("minilm-l6")
    done = []
    worker = threading.Thread(target=lambda: done.append(attnviz.capture(model, "the cat sat")))
    with jobs.SCHEDULER.job("another visitor", "a test holding the worker", 0):
        worker.start()
        worker.join(3)
        assert worker.is_alive() and not done  # waiting for the worker
        (waiting, status), = [(j, s) for j, s in jobs.SCHEDULER.jobs() if j.visitor == jobs.LOCAL]
        assert status.state == jobs.WAITING and status.place == 1
    worker.join(60)
    assert len(done) == 1 and jobs.SCHEDULER.jobs() == []


# -- uploads belong to their session -------------------------------------------------------------
def bert_zip(tmp_path) -> bytes:
    folder = tiny_bert(tmp_path / "tiny-bert")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in folder.iterdir():
            z.write(f, f.name)
    return buf.getvalue()


def upload_on_train_page(tmp_path):
    at = open_page("pages/train.py")
    uploader = at.file_uploader(key="train_upload")
    assert uploader.proto.max_upload_size_mb == MAX_MODEL_UPLOAD_MB  # a cap of its own
    data = bert_zip(tmp_path)
    uploader.set_value([("tiny-bert.zip", data, "application/zip")] if uploader.proto.multiple_files
                       else ("tiny-bert.zip", data, "application/zip")).run()
    assert_clean(at)
    own = at.session_state[ui_models.OWN_KEY]
    (label,) = list(own)
    return at, label, own[label]


def all_text(at) -> str:
    """Every message, caption and label the page shows."""
    parts = [e.value for kind in ("error", "warning", "info", "success", "caption", "markdown") for e in getattr(at, kind)]
    parts += [str(o) for box in at.selectbox for o in box.options]
    return "\n".join(str(p) for p in parts)


def test_an_upload_is_listed_and_opened_only_in_its_own_session(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNVIZ_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(limits.HOSTED_ENV, raising=False)
    mine, label, folder = upload_on_train_page(tmp_path)
    assert label.startswith("upload:") and folder not in all_text(mine)  # shown by its label, not its path
    mine.switch_page("pages/text.py").run()
    assert label in mine.selectbox(key="_model_box").options
    mine.selectbox(key="_model_box").set_value(label).run()
    assert_clean(mine)

    other = open_page("pages/text.py")  # another visitor
    assert label not in other.selectbox(key="_model_box").options
    for name in (label, folder):  # by its label, or by its path typed as "your own model"
        other.selectbox(key="_model_box").set_value(ui_models.OWN_MODEL).run()
        other.text_input(key="_model_own").set_value(name).run()
        assert not other.exception and "Unknown model" in other.error[0].value
        assert folder not in all_text(other)
    assert not open_page("pages/text.py", model=label).selectbox(key="_model_box").value == label
    other.switch_page("pages/train.py").run()
    assert label not in all_text(other)


# -- hosted: an allow-list of models, no paths -------------------------------------------------------
@pytest.fixture
def hosted(monkeypatch, tmp_path):
    monkeypatch.setenv(limits.HOSTED_ENV, "1")
    monkeypatch.setenv("ATTNVIZ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ATTNVIZ_MAX_TOKENS", "256")
    return tmp_path


def test_hosted_model_urls_cannot_probe_the_filesystem(hosted):
    """?model= with an existing model folder, a missing path, a traversal: each page opens on
    the default model with the same (empty) set of messages, so nothing tells them apart."""
    folder = str(tiny_bert(hosted / "a-real-model"))
    seen = []
    for probe in (folder, "/no/such/folder", "../../etc", str(hosted)):
        at = open_page("pages/text.py", model=probe)
        assert_clean(at)
        assert at.selectbox(key="_model_box").value == "minilm-l6"
        assert ui_models.OWN_MODEL not in at.selectbox(key="_model_box").options  # no free-form names
        seen.append(sorted(e.value for kind in ("warning", "info") for e in getattr(at, kind)))
    assert all(s == seen[0] for s in seen), seen
    with pytest.raises(attnviz.AttnvizError) as refused_real:
        ui_models.resolve(folder)
    with pytest.raises(attnviz.AttnvizError) as refused_missing:
        ui_models.resolve("/no/such/folder")
    assert str(refused_real.value).replace(folder, "X") == str(refused_missing.value).replace("/no/such/folder", "X")


def test_hosted_operator_models_are_listed_and_load(hosted, monkeypatch):
    folder = str(tiny_bert(hosted / "operator-bert"))
    monkeypatch.setenv(limits.OPERATOR_MODELS_ENV, f"tiny-bert={folder}")
    at = open_page("pages/text.py")
    assert "tiny-bert" in at.selectbox(key="_model_box").options
    at.selectbox(key="_model_box").set_value("tiny-bert").run()
    assert_clean(at)
    assert folder not in all_text(at) and any("tiny-bert · " in c.value for c in at.caption)


def test_hosted_uploads_take_one_zip_and_show_no_server_path(hosted):
    at, label, folder = upload_on_train_page(hosted)
    assert not at.file_uploader(key="train_upload").proto.multiple_files
    text = all_text(at)
    assert label in text and folder not in text and str(hosted) not in text


def test_hosted_refusals_name_no_server_path(hosted):
    """A refused upload (weights of other shapes than its config) and a library's own message:
    the visitor sees the model's label, never where the server keeps it."""
    from attnviz.ui.common import for_visitor

    assert for_visitor(f"Cannot read {hosted}/uploads/x/config.json: bad") == "Cannot read …: bad"
    at = open_page("pages/train.py")
    folder = tiny_bert(hosted / "bert")
    config = (folder / "config.json").read_text().replace('"hidden_size": 32', '"hidden_size": 48')
    (folder / "config.json").write_text(config)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in folder.iterdir():
            z.write(f, f.name)
    at.file_uploader(key="train_upload").set_value(("bert.zip", buf.getvalue(), "application/zip")).run()
    assert not at.exception and "other shapes" in at.error[0].value
    assert str(hosted) not in all_text(at) and not list((hosted / "home" / "uploads").iterdir())


def test_a_result_over_the_download_budget_is_not_offered(monkeypatch):
    """The .npz is built in the server's memory when clicked: above ATTNVIZ_DOWNLOAD_BYTES the
    button is disabled and says how to save the result instead."""
    def npz_button(at):
        return next(b for b in at.download_button if b.label == "Result .npz")

    at = open_page("pages/text.py")
    assert_clean(at)
    assert not npz_button(at).proto.disabled
    monkeypatch.setenv("ATTNVIZ_DOWNLOAD_BYTES", "10kB")
    at = open_page("pages/text.py")
    assert_clean(at)
    button = npz_button(at)
    assert button.proto.disabled and "more than this server offers (10 kB)" in button.proto.help


# -- saved models: per visitor, bounded, named without telling of others ------------------------
def toy_net(seed: int = 0, d_model: int = 16):
    from attnviz.lab.custom import CustomConfig, CustomNet

    return CustomNet(CustomConfig(length=6, d_model=d_model, n_heads=2), seed=seed)


def test_saved_names_are_numbered_per_owner_and_reveal_no_other(tmp_path, monkeypatch):
    from attnviz.lab import custom

    monkeypatch.setenv("ATTNVIZ_HOME", str(tmp_path / "home"))
    a1 = custom.save_owned(toy_net(), "my model", "visitor-a")
    a2 = custom.save_owned(toy_net(), "my model", "visitor-a")
    b1 = custom.save_owned(toy_net(), "my model", "visitor-b")
    assert (a1.folder.name, a2.folder.name, b1.folder.name) == ("my-model", "my-model-2", "my-model")
    assert a1.folder.parent == a2.folder.parent != b1.folder.parent  # a folder per owner
    assert "visitor" not in str(a1.folder) and "visitor" not in str(b1.folder)  # the id never reaches the disk
    assert custom.saved_models("visitor-b") == [b1.folder]
    assert set(custom.saved_models()) == {a1.folder, a2.folder, b1.folder}
    assert attnviz.load_model(str(a2.folder)).family == "custom"


def test_saved_models_keep_to_each_owners_count_and_bytes(tmp_path, monkeypatch):
    """The oldest of an owner's models are removed (and named) to keep a count and a byte
    budget; another owner's models are never touched; a model over the byte budget alone is
    refused before anything is written."""
    from attnviz.lab import custom

    monkeypatch.setenv("ATTNVIZ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ATTNVIZ_SAVED_MODELS", "3")
    other = custom.save_owned(toy_net(), "theirs", "visitor-b").folder
    saved = [custom.save_owned(toy_net(i), f"m{i}", "visitor-a") for i in range(5)]
    assert [s.removed for s in saved] == [(), (), (), ("m0",), ("m1",)]
    assert "the oldest was removed: 'm0'" in saved[3].message() and "3 models" in saved[3].message()
    assert [f.name for f in custom.saved_models("visitor-a")] == ["m4", "m3", "m2"] and other.exists()

    size = custom.folder_bytes(saved[-1].folder)
    monkeypatch.setenv("ATTNVIZ_SAVED_MODELS", "100")
    monkeypatch.setenv("ATTNVIZ_SAVED_BYTES", str(int(3.5 * size)))
    done = custom.save_owned(toy_net(9), "m9", "visitor-a")
    assert done.removed == ("m2",)  # four would be 4 x size: the oldest goes
    assert [f.name for f in custom.saved_models("visitor-a")] == ["m9", "m4", "m3"] and other.exists()
    with pytest.raises(attnviz.AttnvizError, match="at most .* MB of saved models"):
        custom.save_owned(toy_net(d_model=256), "big", "visitor-a")
    assert [f.name for f in custom.saved_models("visitor-a")] == ["m9", "m4", "m3"]


def test_hosted_saves_on_the_train_page_are_each_sessions_own(hosted, monkeypatch):
    """Two visitors save on Build your own: each one's names are numbered among their own saves;
    past the count budget the page says which model was removed, and the removed one is no longer
    offered."""
    from attnviz.lab import custom

    monkeypatch.setenv("ATTNVIZ_SAVED_MODELS", "2")

    def trained():
        at = open_page("pages/train.py")
        at.number_input(key="train_steps").set_value(2)
        at.button(key="train_start").click().run()
        assert_clean(at)
        return at

    mine, theirs = trained(), trained()
    for _ in range(3):
        mine.button(key="train_save").click().run()
        assert_clean(mine)
    theirs.button(key="train_save").click().run()
    assert_clean(theirs)
    base = "reverse-global-2x4"
    assert mine.selectbox(key="train_inspect").value == f"saved:{base}-3"
    assert theirs.selectbox(key="train_inspect").value == f"saved:{base}"  # not numbered after mine
    assert any(f"the oldest was removed: '{base}'" in w.value for w in mine.warning)
    assert f"saved:{base}" not in mine.selectbox(key="train_inspect").options
    assert len(custom.saved_models()) == 3


# -- CSV downloads hold no spreadsheet formula ---------------------------------------------------
def test_csv_cells_cannot_be_spreadsheet_formulas():
    import numpy as np

    from attnviz.viz.text import csv_cell

    for start in ("=", "+", "-", "@", "\t", "\r"):
        cell = csv_cell(f"{start}HYPERLINK(\"http://x\")")
        assert cell.lstrip('"').startswith("'" + start), cell
    assert csv_cell("=1,2") == "\"'=1,2\"" and csv_cell("-") == "'-" and csv_cell("cat") == "cat"
    assert [csv_cell(v) for v in (3, -2, -0.5, np.float32(-1.5), np.int64(-7))] == ["3", "-2", "-0.5", "-1.5", "-7"]


def test_every_text_view_csv_keeps_typed_formulas_inert():
    """A text whose words are formulas, captured, through each view's CSV: every cell that is not a
    number starts with none of = + - @ tab or CR, and the numbers stay numbers."""
    import csv

    from attnviz.viz import text as tviz

    result = attnviz.capture(attnviz.load_model("minilm-l6"), "=HYPERLINK(1) +cmd -x @SUM(A1) cat")
    options = tviz.TextOptions()
    thumbs = tviz.thumbnails(result, "encoder", options)
    writers = [tviz.head_heatmap(result, "encoder", 0, 0, options)[1], tviz.overview(result, "encoder", thumbs, options)[1],
               tviz.token_lines(result, "encoder", 0, [0, 1], options)[1],
               *tviz.token_focus(result, "encoder", 0, options, query=1, key=1)[2:]]
    formulas = 0
    for write in writers:
        for row in csv.reader(io.StringIO(write())):
            for cell in row:
                try:
                    float(cell)
                    continue
                except ValueError:
                    pass
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (cell, row)
                formulas += cell[1:2] in ("=", "+", "-", "@")
    assert formulas >= 4  # the typed formulas are there, made inert


# -- estimates against measured peaks ------------------------------------------------------------
def test_the_load_estimate_counts_position_sized_buffers(tmp_path):
    """GPT-Neo builds a causal mask of positions^2 booleans per layer: with 8,000 positions its
    two layers hold 128 MB of buffers, and building them peaks at about twice that. The
    estimate the model budget is checked against (loader.load_bytes) is at most 25% below the
    measured peak of the load."""
    from make_corpus import tiny_gpt_neo
    from peaks import measured_peak

    folder = tiny_gpt_neo(tmp_path / "neo-8000", positions=8_000)
    peak, estimate = measured_peak(
        f"""
        import attnviz, transformers
        from attnviz.models import loader
        attnviz.load_model('minilm-l6')  # imports and the loading code, warmed
        config = transformers.AutoConfig.from_pretrained({str(folder)!r})
        estimate = loader.load_bytes(loader.check_size(config, transformers.GPTNeoForCausalLM, {str(folder)!r},
                                                       'neo', True))
        """,
        f"attnviz.load_model({str(folder)!r})")
    assert peak > 200e6  # the buffers' construction, not the 1.5 MB of weights
    assert estimate >= 0.75 * peak, (estimate, peak)
