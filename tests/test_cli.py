"""`python -m attnviz`: exit 0 on success, 1 with a one-line message on bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from browser import command_line, descendants, free_port, stop_server, wait_healthy
from conftest import ROOT

from attnviz.result import AttentionResult


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnviz", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def assert_one_line_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode == 1, done.stderr
    lines = [l for l in done.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_models_list_names_every_bundled_model():
    done = cli("models", "list")
    assert done.returncode == 0
    for name in ("minilm-l6", "smollm2-135m", "t5-small-titler", "dinov2-small", "clip-vit-b16"):
        assert name in done.stdout


def test_capture_stats_flow(tmp_path, minilm):
    out = tmp_path / "cat.npz"
    done = cli("capture", "--model", "minilm-l6", "--text", "The cat sat on the mat.", "--out", str(out))
    assert done.returncode == 0, done.stderr
    result = AttentionResult.load(out)
    assert result.tokens[:3] == ["[CLS]", "the", "cat"]

    stats = json.loads(cli("stats", str(out), "--json").stdout)
    assert stats["distance_unit"] == "tokens"
    assert np.array(stats["entropy"]).shape == (6, 12)
    assert np.array(stats["sink_mass"]).shape == (6, 12)

    for method in ("rollout", "flow"):
        flow = json.loads(cli("flow", str(out), "--from", "0", "--method", method, "--json").stdout)
        assert flow["tokens"] == result.tokens
        assert abs(sum(flow["weights"]) - 1) < 1e-4 and min(flow["weights"]) >= 0


def test_capture_image(tmp_path, photo, dinov2):
    photo.save(tmp_path / "cat.jpg")
    done = cli("capture", "--model", "dinov2-small", "--image", str(tmp_path / "cat.jpg"), "--out", str(tmp_path / "r.npz"))
    assert done.returncode == 0, done.stderr
    r = AttentionResult.load(tmp_path / "r.npz")
    assert r.kind == "image" and r.grid.rows * r.grid.cols + 1 == len(r.tokens)


def test_too_long_text_is_truncated_with_a_warning(tmp_path, minilm):
    done = cli("capture", "--model", "minilm-l6", "--text", "word " * 1000, "--out", str(tmp_path / "r.npz"))
    assert done.returncode == 0 and "warning:" in done.stderr and "512" in done.stderr


@pytest.mark.parametrize("args, words", [
    (["capture", "--model", "no-such-model", "--text", "hi"], ["Unknown model"]),
    (["capture", "--model", "some-org/some-model", "--text", "hi"], ["hub"]),
    (["capture", "--model", "minilm-l6", "--text", "   "], ["empty"]),
    (["models", "fetch", "nope"], ["unknown model"]),
])
def test_bad_input_gives_one_line_and_exit_1(tmp_path, args, words):
    assert_one_line_error(cli(*args, *(["--out", str(tmp_path / "x.npz")] if args[0] == "capture" else [])), *words)


def test_pickle_folder_and_non_image_are_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not loaded")
    out = str(tmp_path / "x.npz")
    assert_one_line_error(cli("capture", "--model", str(tmp_path), "--text", "hi", "--out", out), "pickle")
    (tmp_path / "fake.png").write_text("this is text, not a picture")
    assert_one_line_error(cli("capture", "--model", "dinov2-small", "--image", str(tmp_path / "fake.png"), "--out", out),
                          "not an image")
    assert_one_line_error(cli("stats", str(tmp_path / "fake.png")), "not an attnviz result")


def test_app_stops_its_server_on_sigterm(tmp_path):
    """`attnviz app` told to stop (SIGTERM: a test, a process manager, `docker stop`) takes its
    Streamlit server with it: no process it started is left running."""
    port = free_port()
    with open(tmp_path / "app.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "attnviz", "app", "--port", str(port), "--address", "127.0.0.1"],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(f"http://127.0.0.1:{port}")
            serving = [pid for pid in [proc.pid, *descendants(proc.pid)] if "streamlit" in command_line(pid)]
            assert serving, "no Streamlit process found under `attnviz app`"
        finally:
            left = stop_server(proc)
    assert not left, f"still running after SIGTERM to `attnviz app`: {left}"
