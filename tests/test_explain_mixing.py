"""The scoreboard's context-mixing rows (attnviz.explain: attention_norm, globenc, alti,
value_zeroing): each is the output's mix vector times the method's rollout, checked against a
rollout of attnviz.mixing's matrices multiplied out here; the defaults, the skipped reasons,
and ``python -m attnviz explain --methods``."""
from __future__ import annotations

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
    return explain(minilm, SENTENCE, methods=("blankout", "attention_norm", "globenc", "alti", "value_zeroing"))


def test_mixing_rows_are_the_methods_rollout_carried_by_the_mix_vector(minilm, explained):
    m = mixing(minilm, SENTENCE, methods=("attention_norm", "globenc", "alti", "value_zeroing"))
    n = len(m.tokens)
    assert explained.tokens == m.tokens
    uniform = np.full(n, 1.0 / n)  # minilm-l6 explains its mean-pooled sentence embedding
    for method in ("attention_norm", "globenc", "alti", "value_zeroing"):
        expected = carried(m.matrices[method], uniform, residual=method == "attention_norm")
        np.testing.assert_allclose(explained.scores[method], expected, atol=1e-5, err_msg=method)
    rho = explained.to_json()["spearman"]
    assert set(rho) == {"attention_norm", "globenc", "alti", "value_zeroing"}
    assert all(-1 <= r <= 1 for r in rho.values())


def test_the_defaults_add_the_cheap_mixing_rows_and_value_zeroing_runs_when_asked():
    assert METHODS[:7] == ("attention", "rollout", "flow", "attn_x_grad", "grad_x_input", "integrated_gradients",
                           "blankout")
    assert DEFAULT_METHODS == METHODS[:7] + ("attention_norm", "globenc", "alti")
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
