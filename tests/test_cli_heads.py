"""`python -m attnviz heads`: the JSON contract {stack: {role: [[score per head] per layer]}}."""
from __future__ import annotations

import json

import numpy as np
import pytest
from test_cli import assert_one_line_error, cli

import attnviz
from attnviz.analysis.roles import ROLES, all_roles
from attnviz.capture import capture_ids
from attnviz.cli import main
from attnviz.probes import induction_input

SHARED = [r for r in ROLES if r not in ("induction", "duplicate_token")]


def heads_json(capsys, *args: str) -> dict:
    assert main(["heads", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_heads_of_a_saved_result(tmp_path, capsys, t5):
    path = attnviz.capture(t5, "The cat sat on the mat.", target="A cat.").save(tmp_path / "r.npz")
    out = heads_json(capsys, str(path))
    assert list(out) == ["encoder", "decoder", "cross"]
    result = attnviz.AttentionResult.load(path)
    expected = all_roles(result)
    for stack, roles in out.items():
        assert list(roles) == SHARED
        n_layers, n_heads = result.shape(stack)[:2]
        for role, values in roles.items():
            assert len(values) == n_layers and all(len(row) == n_heads for row in values)
            got = np.array([[np.nan if v is None else v for v in row] for row in values])
            np.testing.assert_allclose(got, expected[stack].scores[role], rtol=1e-12)
    assert all(v is None for row in out["cross"]["previous_token"] for v in row)  # no shared positions
    assert all(v is not None for row in out["cross"]["first_token"] for v in row)


def test_heads_induction_probe(capsys, minilm):
    out = heads_json(capsys, "--model", "minilm-l6", "--induction", "--length", "12", "--seed", "4")
    assert list(out) == ["encoder"] and list(out["encoder"]) == list(ROLES)
    ids, repeat = induction_input(minilm, 12, seed=4)
    a = capture_ids(minilm, ids).attn["encoder"].astype(np.float32)
    second = repeat.queries()
    np.testing.assert_allclose(out["encoder"]["induction"], a[:, :, second, second - 12 + 1].mean(-1), rtol=1e-5)
    np.testing.assert_allclose(out["encoder"]["duplicate_token"], a[:, :, second, second - 12].mean(-1), rtol=1e-5)


def test_heads_table(capsys, minilm, tmp_path):
    path = attnviz.capture(minilm, "Hello, world.").save(tmp_path / "r.npz")
    assert main(["heads", str(path), "--threshold", "0.2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "label = strongest role >= 0.2" in lines[0] and len(lines) == 2 + 6 * 12


@pytest.mark.parametrize("args, words", [
    ((), ["result file", "--model"]),
    (("--model", "minilm-l6"), ["--induction"]),
    (("--model", "minilm-l6", "--induction", "--length", "9999"), ["--length"]),
    (("--model", "dinov2-small", "--induction"), ["image"]),
    (("nothing.npz",), ["not an attnviz result"]),
])
def test_heads_errors(args, words, capsys):
    assert main(["heads", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    for w in words:
        assert w in err, err


def test_heads_error_from_the_command_line():
    assert_one_line_error(cli("heads", "--model", "minilm-l6"), "--induction")
