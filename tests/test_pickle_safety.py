"""A pickle checkpoint that would run code when loaded is refused every way a user can offer it.

The checkpoint is real: ``torch.save`` of a state dict holding one object whose ``__reduce__``
makes unpickling call ``open(marker, "w")``, creating the marker file. A first test proves it is
armed (loading it with pickle enabled creates a marker); the others offer it as a local folder
(alone, beside a config.json, beside valid safetensors weights, under other pickle suffixes,
disguised as .safetensors), as an upload (through the extractor and through the train page),
and as a hub id (served by a small local stand-in for the Hugging Face hub), and prove that
the marker never appears and that the message says why.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

import attnviz
from attnviz.models.upload import extract

sys.path.insert(0, str(Path(__file__).parent / "corpus"))
from make_corpus import files_of, tiny_bert  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class TouchMarker:
    """Unpickling this calls open(path, "w"): the stand-in for an attacker's code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def armed_checkpoint(marker: Path) -> bytes:
    """A torch.save checkpoint (zip with data.pkl) whose unpickling creates ``marker``."""
    buf = io.BytesIO()
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(4, 4), "hook": TouchMarker(marker)}, buf)
    return buf.getvalue()


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "MARKER-pickle-code-ran"
    yield path
    assert not path.exists(), "the pickle's code ran: the marker file exists"


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> dict[str, bytes]:
    return files_of(tiny_bert(tmp_path_factory.mktemp("tiny-bert")))


def folder_with(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def test_the_checkpoint_is_armed(tmp_path):
    """Positive control: with pickle allowed, loading the checkpoint does run its code."""
    control = tmp_path / "control-marker"
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(armed_checkpoint(control))
    with pytest.raises(pickle.UnpicklingError):  # torch's default (weights_only) refuses it too
        torch.load(path)
    assert not control.exists()
    torch.load(path, weights_only=False)
    assert control.exists()


@pytest.mark.parametrize("files", [
    "pytorch_model.bin",
    "config.json pytorch_model.bin",
    "config.json model.pt",
    "config.json model.pth",
    "config.json checkpoint.ckpt",
    "config.json weights.pkl",
])
def test_folder_with_only_pickle_weights_is_refused(files, bert, marker, tmp_path):
    names = files.split()
    folder = folder_with(tmp_path / "model", {n: bert["config.json"] if n == "config.json" else armed_checkpoint(marker)
                                              for n in names})
    with pytest.raises(attnviz.AttnvizError) as e:
        attnviz.load_model(str(folder))
    message = str(e.value)
    if "config.json" in names:
        assert "pickle" in message and "arbitrary code" in message and names[1] in message, message
    else:
        assert "config.json" in message, message


def test_folder_with_pickle_beside_safetensors_loads_only_safetensors(bert, marker, tmp_path):
    folder = folder_with(tmp_path / "model", {**bert, "pytorch_model.bin": armed_checkpoint(marker)})
    model = attnviz.load_model(str(folder))
    result = attnviz.capture(model, "the cat sat on the mat")
    assert result.tokens[0] == "[CLS]"


def test_pickle_disguised_as_safetensors_is_refused(bert, marker, tmp_path):
    folder = folder_with(tmp_path / "model", {**bert, "model.safetensors": armed_checkpoint(marker)})
    with pytest.raises(attnviz.AttnvizError, match="not a valid safetensors"):
        attnviz.load_model(str(folder))


@pytest.mark.parametrize("how", ["zip", "loose files", "zip in a folder"])
def test_upload_of_pickle_weights_is_refused(how, bert, marker, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNVIZ_HOME", str(tmp_path / "home"))
    files = {"config.json": bert["config.json"], "vocab.txt": bert["vocab.txt"],
             "pytorch_model.bin": armed_checkpoint(marker)}
    if how == "zip":
        uploads = [("model.zip", zipped(files))]
    elif how == "zip in a folder":
        uploads = [("model.zip", zipped({f"my-model/{k}": v for k, v in files.items()}))]
    else:
        uploads = list(files.items())
    with pytest.raises(attnviz.AttnvizError, match="pickle weights are refused.*runs any code"):
        extract(uploads)
    assert not list((tmp_path / "home").rglob("*.bin")), "the pickle was written to disk"


def test_upload_with_pickle_beside_safetensors_never_writes_the_pickle(bert, marker, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNVIZ_HOME", str(tmp_path / "home"))
    extracted = extract([("model.zip", zipped({**bert, "pytorch_model.bin": armed_checkpoint(marker)}))])
    assert "pytorch_model.bin" not in extracted.files
    assert any("pickle" in line for line in extracted.skipped)
    assert not (extracted.folder / "pytorch_model.bin").exists()
    attnviz.capture(attnviz.load_model(str(extracted.folder)), "the cat sat")


def test_upload_through_the_train_page(bert, marker, tmp_path, monkeypatch):
    """The train page's uploader shows the refusal in st.error, and the page keeps working."""
    from apptest_tools import open_page

    monkeypatch.setenv("ATTNVIZ_HOME", str(tmp_path / "home"))
    at = open_page("pages/train.py")
    uploader = next(u for u in at.file_uploader if u.key == "train_upload")
    files = {"config.json": bert["config.json"], "pytorch_model.bin": armed_checkpoint(marker)}
    uploader.set_value(("model.zip", zipped(files), "application/zip")).run()
    assert not at.exception, at.exception
    errors = " ".join(e.value for e in at.error)
    assert "pickle weights are refused" in errors, errors


# -- a hub id, served by a local stand-in for the hub ---------------------------------------
class FakeHub(BaseHTTPRequestHandler):
    """Answers the hub's file listing for one repo with config.json and pytorch_model.bin,
    serves those files, and records every path asked for."""

    repo = "evil-org/pickled-model"
    files: dict[str, bytes] = {}
    asked: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        self.asked.append(self.path)
        if self.path.startswith(f"/api/models/{self.repo}/tree/"):
            body = json.dumps([{"type": "file", "path": n, "size": len(d), "oid": "0" * 40}
                               for n, d in self.files.items()]).encode()
            return self._send(200, body, "application/json")
        for name, data in self.files.items():
            if self.path.startswith(f"/{self.repo}/resolve/") and self.path.endswith(f"/{name}"):
                return self._send(200, data, "application/octet-stream")
        return self._send(404, b'{"error": "not found"}', "application/json")

    do_HEAD = do_GET  # noqa: N815

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_hub_id_with_pickle_weights_is_refused(bert, marker, tmp_path):
    FakeHub.files = {"config.json": bert["config.json"], "pytorch_model.bin": armed_checkpoint(marker)}
    FakeHub.asked = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # a fresh Python: huggingface_hub reads HF_ENDPOINT when it is imported
        code = ("import attnviz\n"
                "try:\n    attnviz.load_model('evil-org/pickled-model')\n"
                "except attnviz.AttnvizError as e:\n    print('REFUSED:', e)\n")
        env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_HUB_OFFLINE": "0",
               "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT)}
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
    assert "REFUSED:" in run.stdout, run.stdout + run.stderr
    assert "no safetensors weights" in run.stdout and "pickle" in run.stdout, run.stdout
    assert any("/tree/" in p for p in FakeHub.asked), FakeHub.asked  # it did ask the (fake) hub
    assert not any(p.endswith(".bin") for p in FakeHub.asked), f"the pickle was downloaded: {FakeHub.asked}"


def zipped(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()
