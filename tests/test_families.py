"""The family registry (attnviz.families): a new family is one module and one registry line,
and nothing outside the registry compares family names.

A stand-in family, registered by one line (``FAMILIES["stand-in"] = module``), is what
:func:`attnviz.capture` runs, whose options it checks and whose shape it estimates memory
with; its capture reads minilm-l6 through the shared recording path, so its maps are the
encoder family's. The source check reads every module of attnviz/, pages/ and app.py."""
from __future__ import annotations

import ast
import dataclasses
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import attnviz
import attnviz.families as families
from attnviz.capture import estimate_bytes
from attnviz.errors import AttnvizError
from attnviz.recording import forward as record
from attnviz.result import AttentionResult
from attnviz.tokens import one_text, token_strings, tokenize

ROOT = Path(__file__).resolve().parents[1]
TEXT = "The cat sat on the mat because it was tired."
MARK = "read by the stand-in family"


def stand_in() -> types.ModuleType:
    """A family module as docs/architecture.md describes one: a text family without options
    whose capture runs the model through the recording path and marks its result."""
    module = types.ModuleType("stand_in")
    module.NAME, module.READS, module.STACKS = "stand-in", "text", ("encoder",)
    module.OPTIONS, module.EXTRA_TOKENS, module.TOKEN_IDS, module.CAUSAL, module.OUTPUT = frozenset(), 100, False, False, None
    module.shape = lambda model: (model.net.config.num_hidden_layers, model.net.config.num_attention_heads,
                                  model.net.config.hidden_size, 1, True)  # layers, heads, hidden, stacks, recorded
    module.calls = []

    def capture(model, input, *, progress=None, **options) -> AttentionResult:
        module.calls.append(options)
        enc, warnings = tokenize(model, one_text(input, model))
        ids = enc["input_ids"][0].tolist()
        attn, notes = record(model, module.STACKS, progress, input_ids=enc["input_ids"],
                             attention_mask=torch.ones_like(enc["input_ids"]))
        return AttentionResult(kind="text", model=model.name, attn=attn, tokens=token_strings(model, ids),
                               special=[False] * len(ids), word_spans=[(i, i + 1) for i in range(len(ids))],
                               warnings=[MARK, *warnings, *notes])

    module.capture = capture
    return module


def test_a_family_registered_by_one_line_is_what_capture_runs(minilm, monkeypatch):
    model = dataclasses.replace(minilm, family="stand-in")
    with pytest.raises(AttnvizError, match="no model family 'stand-in'"):
        attnviz.capture(model, TEXT)
    module = stand_in()
    monkeypatch.setitem(families.FAMILIES, "stand-in", module)  # the one registry line

    result = attnviz.capture(model, TEXT)
    assert result.warnings[0] == MARK and len(module.calls) == 1
    reference = attnviz.capture(minilm, TEXT)  # the encoder family, on the same tokens
    assert result.tokens == reference.tokens
    for layer, head in [(0, 0), (5, 11)]:
        np.testing.assert_allclose(result.attention(layer, head), reference.attention(layer, head), atol=1e-5)

    # its options are checked against its OPTIONS (none), naming the family
    with pytest.raises(AttnvizError, match="generate= applies to decoders; minilm-l6 is a stand-in model"):
        attnviz.capture(model, TEXT, generate=2)
    with pytest.raises(AttnvizError, match="target= applies to encoder-decoders"):
        attnviz.capture(model, TEXT, target="x")
    # and the memory estimate counts its EXTRA_TOKENS
    assert estimate_bytes(model, TEXT) > estimate_bytes(minilm, TEXT)
    assert families.reads(model) == "text" and families.of(model) is module


def test_every_family_module_says_what_the_registry_documents():
    for name, module in families.FAMILIES.items():
        assert module.NAME == name
        assert module.READS in ("text", "image", "image+prompt", "own")
        assert module.OPTIONS is None or module.OPTIONS <= {"pair", "generate", "target", "prompt", "size"}
        for attribute in ("STACKS", "EXTRA_TOKENS", "TOKEN_IDS", "CAUSAL", "OUTPUT", "capture", "shape"):
            assert hasattr(module, attribute), f"{name} has no {attribute}"


def family_comparisons(path: Path) -> list[str]:
    """``file:line`` of each comparison (==, !=, in, not in) with an operand named ``family``
    (``model.family == "decoder"``, ``family in ("encoder", "decoder")``)."""
    def named_family(node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id == "family") or (
            isinstance(node, ast.Attribute) and node.attr == "family")

    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops)
                and any(named_family(n) for n in [node.left, *node.comparators])):
            found.append(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{node.lineno}")
    return found


def test_no_family_name_is_compared_outside_the_registry():
    """Capture, explain, mixing, batch, the loader and the pages ask attnviz.families (what a
    family reads, which options apply, what explain reads), never ``family == "..."``."""
    registry = ROOT / "attnviz" / "families"
    files = [p for p in [*(ROOT / "attnviz").rglob("*.py"), *(ROOT / "pages").glob("*.py"), ROOT / "app.py"]
             if registry not in p.parents]
    found = [hit for p in files for hit in family_comparisons(p)]
    assert not found, "family names compared outside attnviz/families:\n" + "\n".join(found)


def test_the_comparison_check_catches_one(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('if model.family == "decoder":\n    pass\nok = stack == "encoder"\nx = family not in ("image",)\n')
    assert family_comparisons(bad) == ["bad.py:1", "bad.py:4"]
