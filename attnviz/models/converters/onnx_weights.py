"""Read the weights (initializers) of an ONNX graph as numpy arrays, without onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def load_graph(data: bytes) -> onnx.ModelProto:
    """Parse an ONNX model from bytes (weights must be embedded, not external)."""
    return onnx.load_from_string(data)


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every initializer of the main graph, by name, as a numpy array (its stored dtype)."""
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Tensors held by ``Constant`` nodes, keyed by the node's output name."""
    out = {}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(attr.t)
    return out


# --- Quantised graphs (onnxruntime ``quantize_dynamic`` layout) --------------------------------
#
# onnxruntime's dynamic quantiser replaces each float weight ``W`` by three initializers,
# ``W_quantized`` (int8/uint8), ``W_scale`` and ``W_zero_point``, with
# ``W = (W_quantized - W_zero_point) * W_scale``. Linear layers become ``MatMulInteger`` nodes
# whose second input is ``W_quantized`` (in x out, i.e. already transposed); embeddings become a
# ``Gather`` on ``W_quantized`` followed by ``DequantizeLinear``.

QUANTIZED_SUFFIX = "_quantized"


def dequantize(
    quantized: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int = -1
) -> np.ndarray:
    """``(quantized - zero_point) * scale`` as float32.

    A scalar ``scale``/``zero_point`` is per tensor; a 1-D one is per channel along ``axis``.
    """
    scale = np.asarray(scale, dtype=np.float32)
    zero_point = np.asarray(zero_point, dtype=np.int32)
    if scale.ndim == 1 and quantized.ndim > 1:
        shape = [1] * quantized.ndim
        shape[axis] = scale.shape[0]
        scale = scale.reshape(shape)
        zero_point = zero_point.reshape(shape)
    return ((quantized.astype(np.int32) - zero_point).astype(np.float32) * scale).astype(np.float32)


def dequantized_initializers(model: onnx.ModelProto, axis: int = -1) -> dict[str, np.ndarray]:
    """Every ``NAME_quantized``/``NAME_scale``/``NAME_zero_point`` triple, dequantised, by ``NAME``.

    ``axis`` is the channel axis used when a scale is a vector (per-channel quantisation).
    Initializers that are not part of such a triple are left out (see :func:`initializers`).
    """
    inits = initializers(model)
    out = {}
    for name, quantized in inits.items():
        if not name.endswith(QUANTIZED_SUFFIX):
            continue
        base = name[: -len(QUANTIZED_SUFFIX)]
        if base + "_scale" in inits and base + "_zero_point" in inits:
            out[base] = dequantize(quantized, inits[base + "_scale"], inits[base + "_zero_point"], axis)
    return out


def matmul_integer_weights(model: onnx.ModelProto) -> dict[str, str]:
    """For each ``MatMulInteger`` whose weight is a quantised initializer: its scope -> weight name.

    The scope is the node's name without its last path component, which the PyTorch exporter
    sets to the module path (``/enc/block.0/layer.0/SelfAttention/q/MatMul_quant`` gives
    ``/enc/block.0/layer.0/SelfAttention/q``). The weight name is the base ``NAME`` of the
    ``NAME_quantized`` initializer, i.e. a key of :func:`dequantized_initializers`.
    """
    init_names = {t.name for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "MatMulInteger":
            continue
        weight = node.input[1]
        if weight in init_names and weight.endswith(QUANTIZED_SUFFIX):
            scope = node.name.rsplit("/", 1)[0]
            if scope in out:
                raise ValueError(f"two MatMulInteger nodes share the scope {scope!r}")
            out[scope] = weight[: -len(QUANTIZED_SUFFIX)]
    return out


# --- Linear layers exported as MatMul / MatMulInteger ---------------------------------------
#
# torch.onnx exports ``nn.Linear(x) = x @ W.T + b`` as ``MatMul(x, Wt)`` followed by
# ``Add(b, ...)``, where ``Wt`` is an anonymous initializer (``onnx::MatMul_123``) holding the
# weight already transposed: shape (in_features, out_features). onnxruntime's dynamic
# quantisation turns the MatMul into ``MatMulInteger(xq, Wq, x_zp, W_zp) -> Cast -> Mul(scale)``
# with ``Wq`` int8 of shape (in_features, out_features) and one scale (and zero point) per
# output column. The helpers below recover, for every such layer, the transformers module name
# (from the bias the following ``Add`` consumes) and the float weight.


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """For each tensor name of the main graph, the nodes that read it (in graph order)."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            if name:
                out.setdefault(name, []).append(node)
    return out


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """For each tensor name of the main graph, the node that writes it."""
    return {name: node for node in model.graph.node for name in node.output if name}


def _bias_after(node: onnx.NodeProto, readers: dict, inits: set[str]) -> str | None:
    """Follow ``node``'s output through rescaling nodes (Cast, Mul) to the ``Add`` of a linear
    layer; return the name of the bias initializer it adds (``*.bias``), or None."""
    current = node
    for _ in range(4):  # MatMulInteger -> Cast -> Mul -> Add at most
        nxt = readers.get(current.output[0], [])
        if len(nxt) != 1:
            return None
        current = nxt[0]
        if current.op_type == "Add":
            others = [i for i in current.input if i in inits and i.endswith(".bias")]
            return others[0] if len(others) == 1 else None
        if current.op_type not in ("Cast", "Mul"):
            return None
    return None


def _module_from_node_name(node: onnx.NodeProto) -> str | None:
    """``/vision_model/encoder/layers.0/mlp/fc1/MatMul_quant`` -> ``vision_model.encoder.layers.0.mlp.fc1``
    (torch.onnx names nodes by module path; the last component is the op itself)."""
    parts = [p for p in node.name.split("/") if p]
    return ".".join(parts[:-1]) or None


def _matmul_integer_weight_scale(
    node: onnx.NodeProto, readers: dict, makers: dict, inits: dict[str, np.ndarray]
) -> np.ndarray:
    """The weight's scale of a dynamically quantised ``MatMulInteger``.

    Pattern: ``MatMulInteger -> Cast -> Mul(_, s)`` where ``s = Mul(activation_scale,
    weight_scale)`` and ``weight_scale`` is an initializer (scalar or one per output column).
    """
    cast = readers[node.output[0]][0]
    mul = readers[cast.output[0]][0]
    if cast.op_type != "Cast" or mul.op_type != "Mul":
        raise ValueError(f"{node.name}: unexpected pattern after MatMulInteger")
    combined = [i for i in mul.input if i != cast.output[0]][0]
    scale_mul = makers[combined]
    weight_scales = [i for i in scale_mul.input if i in inits]
    if scale_mul.op_type != "Mul" or len(weight_scales) != 1:
        raise ValueError(f"{node.name}: cannot find the weight scale")
    return inits[weight_scales[0]]


def linear_weights(
    model: onnx.ModelProto, inits: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Every linear layer's weight, as float32 in torch's ``nn.Linear`` layout (out, in).

    Keys are module names (``encoder.layer.0.mlp.fc1``, without ``.weight``), taken from the
    bias initializer ``<module>.bias`` that the ``Add`` after the MatMul consumes; a layer without
    bias falls back to the module path in the node's name. ``MatMul`` weights (in, out) are
    transposed; ``MatMulInteger`` weights are dequantised (per tensor or per output column,
    with their zero points) and transposed. MatMuls of two activations (attention scores) are
    skipped.
    """
    inits = initializers(model) if inits is None else inits
    readers, makers = consumers(model), producers(model)
    out: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "MatMulInteger") or node.input[1] not in inits:
            continue
        bias = _bias_after(node, readers, set(inits))
        module = bias[: -len(".bias")] if bias else _module_from_node_name(node)
        if module is None or module in out:
            raise ValueError(f"cannot name the linear layer of node {node.name!r}")
        weight = inits[node.input[1]]
        if node.op_type == "MatMulInteger":
            scale = _matmul_integer_weight_scale(node, readers, makers, inits)
            zero_point = inits.get(node.input[3]) if len(node.input) > 3 else None
            if zero_point is None:
                zero_point = np.zeros(scale.shape, dtype=np.int32)
            weight = dequantize(weight, scale, zero_point, axis=1)
        out[module] = np.ascontiguousarray(weight.T, dtype=np.float32)
    return out
