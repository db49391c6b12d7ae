"""The scoreboard's context-mixing rows (attnviz.explain: attention_norm, globenc, alti,
value_zeroing): each is the output's mix vector times the method's rollout, checked against a
rollout of attnviz.mixing's matrices multiplied out here; the routes row against the routed
share and the 5% threshold computed here layer by layer; the defaults, the skipped reasons,
and ``python -m attnviz explain --methods``."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import attnviz
from attnviz.explain import DEFAULT_METHODS, METHODS, explain
from attnviz.mixing import mixing

SENTENCE = "The keys to the old cabinet are on the table."


def carried(matrices: np.ndarray, mix: np.ndarray, residual: bool) -> np.ndarray:
    """mix @ M_(L-1) ... M_0, each layer rownorm(0.5 M + 0.5 I) when ``residual``."""
    r = np.asarray(mix, np.float64)
    for m in matrices[::-1].astype(np.float64):
        if residual:
            m = 0.5 * m + 0.5 * np.eye(len(m))
            m = m / m.sum(-1, keepdims=True)
        r = r @ m
    return r


@pytest.fixture(scope="module")
def explained(minilm):
    return explain(minilm, SENTENCE, methods=("blankout", "attention_norm", "globenc", "alti", "routes", "value_zeroing"))


def test_mixing_rows_are_the_methods_rollout_carried_by_the_mix_vector(minilm, explained):
    m = mixing(minilm, SENTENCE, methods=("attention_norm", "globenc", "alti", "value_zeroing"))
    n = len(m.tokens)
    assert explained.tokens == m.tokens
    uniform = np.full(n, 1.0 / n)  # minilm-l6 explains its mean-pooled sentence embedding
    for method in ("attention_norm", "globenc", "alti", "value_zeroing"):
        expected = carried(m.matrices[method], uniform, residual=method == "attention_norm")
        np.testing.assert_allclose(explained.scores[method], expected, atol=1e-5, err_msg=method)
    rho = explained.to_json()["spearman"]
    assert set(rho) == {"attention_norm", "globenc", "alti", "routes", "value_zeroing"}
    assert all(-1 <= r <= 1 for r in rho.values())


def kept_and_routed(m: np.ndarray, rows: list[int], threshold: float) -> tuple[int, np.ndarray]:
    """(edges kept, routed share of each input token) of the routes of ``m`` [L, N, N] (ALTI's:
    followed as they are) from ``rows``: from the top, the edges of a layer at or above the
    threshold whose target row is reached, and the output's mean carried through them only."""
    reached = np.zeros(m.shape[-1], dtype=bool)
    reached[rows] = True
    routed = reached / reached.sum()
    kept = 0
    for layer in range(m.shape[0] - 1, -1, -1):
        edges = (m[layer] >= threshold) & reached[:, None]
        kept += int(edges.sum())
        routed = routed @ np.where(edges, m[layer].astype(np.float64), 0.0)
        reached = edges.any(axis=0)
    return kept, routed


def check_routes_row(e, alti: np.ndarray, rows: list[int]) -> None:
    """The routes row is the routed share at the largest weight that keeps at least 5% of the
    L x N x N edges (the next larger weight keeps fewer)."""
    info = e.output["routes"]
    threshold = info["threshold"]
    assert info["method"] == "alti" and info["rows"] == rows and info["edges"] == alti.size
    kept, routed = kept_and_routed(alti, rows, threshold)
    assert info["edges_kept"] == kept >= round(0.05 * alti.size)
    above = alti[alti > threshold]
    assert len(above) == 0 or kept_and_routed(alti, rows, float(above.min()))[0] < round(0.05 * alti.size)
    np.testing.assert_allclose(e.scores["routes"], routed, atol=1e-12)
    assert 0 < routed.sum() < 1


def test_routes_row_is_the_routed_share_of_alti_at_the_default_threshold(minilm, explained):
    m = mixing(minilm, SENTENCE, methods=("alti",))
    check_routes_row(explained, m.matrices["alti"], list(range(len(m.tokens))))  # mean-pooled: every token
    assert (explained.scores["routes"] <= explained.scores["alti"] + 1e-9).all()  # a part of the rollout


def test_routes_row_on_a_decoder_follows_the_last_position_and_mixing_runs_once(tiny_models, monkeypatch):
    module = importlib.import_module("attnviz.mixing")  # the package exports the function under the same name
    calls = []
    monkeypatch.setattr(module, "mixing", lambda *a, **k: calls.append(k["methods"]) or mixing(*a, **k))
    model = attnviz.load_model(str(tiny_models["test-gpt2"]))
    text = "The keys to the old cabinet are on the table"
    e = explain(model, text, methods=("blankout", "routes"))
    assert calls == [("alti",)] and set(e.scores) == {"blankout", "routes"}  # alti computed for the routes only
    m = mixing(model, text, methods=("alti",))
    check_routes_row(e, m.matrices["alti"], [len(m.tokens) - 1])
    assert "routes" in e.to_json()["spearman"]


def test_the_defaults_add_the_cheap_mixing_rows_and_value_zeroing_runs_when_asked():
    assert METHODS[:7] == ("attention", "rollout", "flow", "attn_x_grad", "grad_x_input", "integrated_gradients",
                           "blankout")
    assert DEFAULT_METHODS == METHODS[:7] + ("attention_norm", "globenc", "alti", "routes")
    assert "value_zeroing" in METHODS


def test_globenc_is_skipped_with_its_reason_on_a_pre_norm_decoder(tiny_models):
    model = attnviz.load_model(str(tiny_models["test-gpt2"]))
    e = explain(model, "The keys to the cabinet", methods=("attention", "globenc", "alti", "attention_norm"))
    assert "globenc" not in e.scores and "post-norm" in e.skipped["globenc"]
    assert set(e.scores) == {"attention", "alti", "attention_norm"}
    n = len(e.tokens)
    last = np.zeros(n)
    last[-1] = 1.0  # a decoder explains its next token: the mix is the last position
    m = mixing(model, "The keys to the cabinet", methods=("alti",))
    np.testing.assert_allclose(e.scores["alti"], carried(m.matrices["alti"], last, residual=False), atol=1e-5)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "attnviz", "explain", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ})


def test_cli_methods_option():
    done = run_cli("--model", "minilm-l6", "--text", SENTENCE, "--methods", "rollout,alti,blankout", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert set(out) == {"tokens", "special", "output", "scores", "spearman", "skipped"}
    assert list(out["scores"]) == ["rollout", "blankout", "alti"]
    bad = run_cli("--model", "minilm-l6", "--text", SENTENCE, "--methods", "rollout,vz")
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and "'vz'" in bad.stderr
