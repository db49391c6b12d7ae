"""The bad-input corpus (tests/corpus/make_corpus.py) through the backend and through the app.

Backend: every case goes the way its kind says (open_image, read_text, capture, the upload
extractor then load_model, load_model) and must give its declared outcome: a result that
passes the case's check, or an AttnvizError whose one-line message matches. Any other
exception is a bug.

App: the image and text cases are uploaded or typed into their pages (AppTest, through
app.py), and the model uploads into the page that takes them once it exists: no exception
reaches the page, an error case shows its message in st.error, an ok case shows no error,
and the same session then still works on a good input.
"""
from __future__ import annotations

import dataclasses
import re
import sys
import traceback
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "corpus"))
from apptest_tools import open_page  # noqa: E402
from make_corpus import Case, build  # noqa: E402

import attnviz  # noqa: E402
from attnviz.inputs import open_image, read_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MIN_CASES = 50


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> list[Case]:
    return build(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def models():
    """Bundled models by name, loaded on first use."""
    loaded: dict[str, attnviz.Model] = {}

    def get(name: str) -> attnviz.Model:
        if name not in loaded:
            loaded[name] = attnviz.load_model(name)
        return loaded[name]
    return get


def outcome(case: Case, run) -> str | None:
    """None when ``run()`` gives what ``case`` expects, else what went wrong (one line)."""
    try:
        result = run()
    except attnviz.AttnvizError as e:
        message = str(e)
        if case.expect == "ok":
            return f"expected a result, got the message: {message}"
        if "\n" in message or "Traceback" in message or not message.strip():
            return f"the message is not one clean line: {message!r}"
        if not re.search(case.match, message):
            return f"message {message!r} does not match {case.match!r}"
        return None
    except Exception as e:  # noqa: BLE001 - anything else is the bug this test looks for
        return f"{type(e).__name__} escaped: {e}\n{traceback.format_exc(limit=-3)}"
    if case.expect == "error":
        return f"expected a message matching {case.match!r}, got a result: {type(result).__name__}"
    try:
        if case.check:
            case.check(result)
    except AssertionError as e:
        return f"wrong result: {e}"
    return None


def check_all(cases: list[Case], run) -> None:
    assert cases
    failures = [f"{c.name} ({c.about}): {why}" for c in cases if (why := outcome(c, lambda c=c: run(c)))]
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)


def of_kind(corpus: list[Case], *kinds: str) -> list[Case]:
    return [c for c in corpus if c.kind in kinds]


# -- backend --------------------------------------------------------------------------------
def test_corpus_is_large_and_covers_every_way_in(corpus):
    assert len(corpus) >= MIN_CASES
    kinds = {c.kind for c in corpus}
    assert kinds == {"image", "text_file", "typed", "upload", "folder", "name", "dataset"}
    assert {c.expect for c in corpus} == {"ok", "error"}


def test_images(corpus):
    check_all(of_kind(corpus, "image"), lambda c: open_image(c.data(), c.path.name))


def test_image_datasets(corpus):
    from attnviz.lab.datasets import read_image_zip

    check_all(of_kind(corpus, "dataset"), lambda c: read_image_zip(c.data(), c.path.name))


def test_text_files(corpus):
    check_all(of_kind(corpus, "text_file"), lambda c: read_text(c.data(), c.path.name))


def test_typed_text(corpus, models):
    check_all(of_kind(corpus, "typed"), lambda c: attnviz.capture(models(c.model), c.text))


def test_typed_text_explained(corpus, models):
    """The typed cases through "Which picture to trust" (explain's input path: the attention
    method alone): the same outcome as a capture, at most MAX_TOKENS tokens, and a text of
    millions of characters cut before it is tokenised."""
    import numpy as np

    from attnviz.explain import MAX_TOKENS, explain

    def run(case: Case):
        e = explain(models(case.model), case.text, methods=("attention",))
        assert len(e.tokens) <= MAX_TOKENS and np.isfinite(e.scores["attention"]).all()
        if len(case.text) > 100_000:
            assert any("only the first" in w for w in e.warnings), e.warnings
        return e

    check_all([dataclasses.replace(c, check=None) for c in of_kind(corpus, "typed")], run)


def test_model_uploads(corpus, tmp_path, monkeypatch):
    """Extract, load, and run a short input; nothing is ever written outside uploads/."""
    from attnviz.models.upload import extract

    home = tmp_path / "home"
    monkeypatch.setenv("ATTNVIZ_HOME", str(home))

    def run(case: Case):
        extracted = extract(case.uploads())
        model = attnviz.load_model(str(extracted.folder))
        attnviz.capture(model, "123456" if model.family == "custom" else "the cat sat on the mat")
        return extracted, model

    cases = of_kind(corpus, "upload")
    check_all(cases, run)
    assert [p.name for p in tmp_path.iterdir()] == ["home"]
    assert [p.name for p in home.iterdir()] == ["uploads"]
    for folder in (home / "uploads").iterdir():
        assert not folder.name.startswith(".upload-"), "a refused upload left its temporary folder"
        assert not any(p.suffix in (".bin", ".py") for p in folder.iterdir()), "a pickle or code file was written"


def test_folders_and_names(corpus, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_all(of_kind(corpus, "folder"), lambda c: attnviz.load_model(str(c.path)))
    check_all(of_kind(corpus, "name"), lambda c: attnviz.load_model(c.text))


# -- app ------------------------------------------------------------------------------------
def page_outcome(at, case: Case) -> str | None:
    """None when the page shows what ``case`` expects (no exception; the message in st.error,
    or no error at all for an ok case), else what went wrong."""
    if at.exception:
        return f"exception in the page: {at.exception[0].value}"
    errors = [e.value for e in at.error]
    if case.expect == "error":
        if not any(re.search(case.match, e) for e in errors):
            return f"no st.error matching {case.match!r}; errors shown: {errors}"
    elif errors:
        return f"expected a result, the page shows: {errors}"
    return None


def accepted_by(uploader, cases: list[Case]) -> list[Case]:
    """The cases whose file names the uploader's type filter lets through (Streamlit refuses
    the others itself, in the browser and again on the server)."""
    types = tuple(t if t.startswith(".") else f".{t}" for t in uploader.allowed_type)
    kept = [c for c in cases if all(name.lower().endswith(types) for name, _ in names_of(c))]
    assert kept
    return kept


def names_of(case: Case) -> list[tuple[str, bytes]]:
    return case.uploads() if case.kind == "upload" else [(case.path.name, b"")]


def check_page(at, cases: list[Case], give, recover, ready, shows_result=None) -> None:
    """In one session: give each case to the page (``give(at, case)``), check what it shows
    (for an ok case also ``shows_result(at)``, default ``ready``), then ``recover(at)`` (a good
    input again) and check that ``ready(at)`` holds: the session survived every bad input."""
    failures = []
    for case in cases:
        give(at, case)
        at.run()
        why = page_outcome(at, case)
        if why is None and case.expect == "ok" and not (shows_result or ready)(at):
            why = "no result shown"
        if why:
            failures.append(f"{case.name} ({case.about}): {why}")
        recover(at)
        at.run()
        if at.exception or at.error or not ready(at):
            failures.append(f"{case.name}: the session did not recover: {[e.value for e in at.error]} {at.exception}")
            break
    assert not failures, f"{len(failures)} of {len(cases)} cases failed on the page:\n" + "\n".join(failures)


def utf8(text: str) -> bool:
    """Whether a browser can send ``text`` as it is (a lone surrogate arrives as U+FFFD)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def text_page_ready(at) -> bool:
    return any(" tokens · " in c.value for c in at.caption)


def test_text_page_typed_and_uploaded(corpus):
    """Typed texts into the text box, text files into its uploader, on minilm-l6."""
    at = open_page("pages/text.py")
    box = at.text_area(key="_text_box")
    good = "The cat sat on the mat."

    def give_typed(at, case):
        at.text_area(key="_text_box").set_value(case.text)

    def give_file(at, case):
        at.text_area(key="_text_box").set_value(good)
        at.file_uploader(key="text_upload").set_value((case.path.name, case.data(), "text/plain"))

    def recover(at):
        at.file_uploader(key="text_upload").set_value(None)
        at.text_area(key="_text_box").set_value(good)

    assert box.value and text_page_ready(at)
    typed = [c for c in of_kind(corpus, "typed") if c.model == "minilm-l6" and utf8(c.text)]
    check_page(at, typed, give_typed, recover, text_page_ready)
    files = accepted_by(at.file_uploader(key="text_upload"), of_kind(corpus, "text_file"))
    check_page(at, files, give_file, recover, text_page_ready)


def image_page_ready(at) -> bool:
    return not at.exception and len(at.get("plotly_chart")) > 0


def test_image_page_uploads(corpus, monkeypatch):
    monkeypatch.setenv("ATTNVIZ_MAX_TOKENS", "1024")  # the demo's cap: a 10000 x 20 strip stays cheap
    at = open_page("pages/image.py", timeout=300)

    def give(at, case):
        at.file_uploader(key="image_upload").set_value((case.path.name, case.data(), "application/octet-stream"))

    def recover(at):
        at.file_uploader(key="image_upload").set_value(None)

    assert image_page_ready(at)
    cases = accepted_by(at.file_uploader(key="image_upload"), of_kind(corpus, "image"))
    check_page(at, cases, give, recover, image_page_ready)


def test_train_page_image_datasets(corpus):
    """Zips of class folders into Build your own's image-classifier uploader."""
    at = open_page("pages/train.py")
    at.radio(key="train_kind").set_value("image").run()
    at.radio(key="train_image_data").set_value("images").run()

    def give(at, case):
        at.file_uploader(key="train_images_file").set_value((case.path.name, case.data(), "application/zip"))

    def recover(at):
        at.file_uploader(key="train_images_file").set_value(None)

    def ready(at):
        return any("Upload a file" in i.value for i in at.info) or any("held-out examples" in c.value for c in at.caption)

    cases = accepted_by(at.file_uploader(key="train_images_file"), of_kind(corpus, "dataset"))
    check_page(at, cases, give, recover, ready)


def test_train_page_model_uploads(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNVIZ_HOME", str(tmp_path / "home"))
    at = open_page("pages/train.py")

    def give(at, case):
        at.file_uploader(key="train_upload").set_value(
            [(name, data, "application/octet-stream") for name, data in case.uploads()])

    def recover(at):
        at.file_uploader(key="train_upload").set_value(None)

    def ready(at):
        return any(s.value == "Inspect" for s in at.subheader)

    def unpacked(at):
        return ready(at) and any("Unpacked a" in s.value for s in at.success)

    cases = accepted_by(at.file_uploader(key="train_upload"), of_kind(corpus, "upload"))
    check_page(at, cases, give, recover, ready, unpacked)
