"""What the bundled int8 ONNX graphs compute, evaluated in numpy the same way on every CPU, and
a converted model compared with it one linear layer at a time.

onnxruntime cannot be the reference for these graphs: it picks its integer matrix kernels by
CPU, and on x86-64 CPUs without VNNI (AVX2, or AVX-512 without VNNI) its uint8 x int8 kernel
adds each pair of products in int16 with saturation (``vpmaddubsw``). The graphs multiply
activations quantised to the whole uint8 range by int8 weights reaching -127..127, so such a
pair can exceed 32767 (255 * 127 * 2 = 64770): that kernel returns clipped sums there, and the
same graph gives other numbers on another machine.

Here every operator is computed as the ONNX specification defines it, by onnx's own reference
evaluator (``onnx.reference``: numpy code written from the specification), with three operators
given by this module:

- ``MatMulInteger``: ``(A - a_zero_point) @ (B - b_zero_point)`` in int32, exactly. It is
  computed in float64, where it is exact: every product and every partial sum is an integer far
  below 2**53 in magnitude (checked), so any summation order gives the same integers. (onnx's
  own version multiplies int32 arrays, exact too but without BLAS, minutes per image.)
- ``DynamicQuantizeLinear``: :func:`dynamic_quantize`, the specification's formula, which the
  comparison also uses to quantise what it feeds a converted model's linear layers.
- ``DequantizeLinear`` (per tensor), which onnx's evaluator lacks for opset 18.

Everything else (layer norms, softmax, float ``MatMul``) is float32 arithmetic, which differs
between CPUs and libraries only by rounding.
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np
import onnx
import torch
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun


def dynamic_quantize(x: np.ndarray) -> tuple[np.ndarray, np.float32, np.uint8]:
    """ONNX ``DynamicQuantizeLinear``: ``x`` (float32) to uint8 with one scale and zero point
    for the whole tensor, the range widened to include 0; rounding half to even.

    Returns ``(quantized, scale, zero_point)``; ``(quantized - zero_point) * scale`` is the
    value the graph's integer arithmetic stands for.
    """
    x = np.asarray(x, dtype=np.float32)
    high = np.float32(max(0.0, x.max()))
    low = np.float32(min(0.0, x.min()))
    scale = np.float32((high - low) if high != low else 1.0) / np.float32(255)
    zero_point = np.rint(np.clip(-low / scale, 0, 255))
    quantized = np.clip(np.rint(x / scale) + zero_point, 0, 255)
    return quantized.astype(np.uint8), scale, np.uint8(zero_point)


def fake_quantize(x: np.ndarray) -> np.ndarray:
    """``x`` as the graph's ``DynamicQuantizeLinear`` sees it: quantised, then back to float32."""
    quantized, scale, zero_point = dynamic_quantize(x)
    return ((quantized.astype(np.float32) - np.float32(zero_point)) * scale).astype(np.float32)


def matmul_integer(a: np.ndarray, b: np.ndarray, a_zero_point=None, b_zero_point=None) -> np.ndarray:
    """ONNX ``MatMulInteger``: ``(a - a_zero_point) @ (b - b_zero_point)`` as exact int32.

    ``a`` is (..., K), ``b`` (K, N) with a scalar or per-column (N,) zero point. The float64
    product is exact because every partial sum is an integer whose magnitude is at most
    ``K * max|a| * max|b|``, checked to be below 2**31 (the int32 the operator returns) and so
    far below 2**53.
    """
    a64 = a.astype(np.float64) - (0.0 if a_zero_point is None else np.asarray(a_zero_point, np.float64))
    b64 = b.astype(np.float64) - (0.0 if b_zero_point is None else np.asarray(b_zero_point, np.float64))
    bound = a64.shape[-1] * np.abs(a64).max(initial=0) * np.abs(b64).max(initial=0)
    if bound >= 2**31:
        raise ValueError(f"MatMulInteger sums may reach {bound:.3g}: beyond int32")
    return (a64 @ b64).astype(np.int32)


class DynamicQuantizeLinear(OpRun):
    """``DynamicQuantizeLinear`` for onnx's evaluator (it finds an operator by its class name)."""

    op_domain = ""

    def _run(self, x):
        quantized, scale, zero_point = dynamic_quantize(x)
        return quantized, np.array(scale, dtype=np.float32), np.array(zero_point, dtype=np.uint8)


class DequantizeLinear(OpRun):
    """``DequantizeLinear`` with one scale and zero point per tensor (all these graphs use):
    ``(x - x_zero_point) * x_scale`` in float32. (onnx 1.23's evaluator has no version of it
    for opset 18.)"""

    op_domain = ""

    def _run(self, x, x_scale, x_zero_point=None, axis=None, block_size=None, output_dtype=None):
        if np.ndim(x_scale) != 0 or np.ndim(x_zero_point) != 0:
            raise NotImplementedError("DequantizeLinear per axis or per block")
        zero_point = np.float32(0 if x_zero_point is None else x_zero_point)
        return ((x.astype(np.float32) - zero_point) * np.float32(x_scale)).astype(np.float32),


class MatMulInteger(OpRun):
    """``MatMulInteger`` for onnx's evaluator: :func:`matmul_integer`."""

    op_domain = ""

    def _run(self, a, b, a_zero_point=None, b_zero_point=None):
        return (matmul_integer(a, b, a_zero_point, b_zero_point),)


def evaluate(model: onnx.ModelProto, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """The tensors ``names`` (graph outputs or any intermediate tensor) of ``model`` on ``feeds``."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in dict.fromkeys(names)
                              if n not in have and n not in feeds)
    evaluator = ReferenceEvaluator(model, new_ops=[DequantizeLinear, DynamicQuantizeLinear, MatMulInteger])
    wanted = [n for n in dict.fromkeys(names) if n not in feeds]
    # T5's position buckets take log(0) and cast -inf for the offsets the graph's Where then
    # discards: numpy's warnings about them say nothing.
    with np.errstate(divide="ignore", invalid="ignore"):
        results = evaluator.run(wanted, feeds)
    return {**dict(zip(wanted, results)), **{n: feeds[n] for n in names if n in feeds}}


# --- a converted model against the graph, linear layer by linear layer -------------------------


def quantized_linears(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """Each linear layer of a dynamically quantised graph, by the module path in its node's
    name (``/enc/block.0/layer.0/SelfAttention/q``): the names of its float input (before
    ``DynamicQuantizeLinear``) and of its float output (after ``MatMulInteger -> Cast -> Mul``
    and the bias ``Add``, where the layer has a bias)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {t.name for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "MatMulInteger":
            continue
        quantize = producers[node.input[0]]
        (cast,) = consumers[node.output[0]]
        (rescale,) = consumers[cast.output[0]]
        assert (quantize.op_type, cast.op_type, rescale.op_type) == ("DynamicQuantizeLinear", "Cast", "Mul")
        output = rescale.output[0]
        after = consumers.get(output, [])
        if len(after) == 1 and after[0].op_type == "Add" and any(i in initializers for i in after[0].input):
            output = after[0].output[0]  # the bias
        out[node.name.rsplit("/", 1)[0]] = (quantize.input[0], output)
    return out


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """``|a - b| / |b|`` in Frobenius norms, in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@contextlib.contextmanager
def _linears_fed(model: torch.nn.Module, inputs: dict[str, np.ndarray], seen: dict):
    """Feed each named linear module ``fake_quantize(inputs[name])`` instead of its own input;
    record in ``seen[name]`` the input the model computed for it and the output it gave."""

    def pre_hook(module, args, name):
        seen[name] = {"input": args[0].detach().numpy().copy()}
        return (torch.from_numpy(fake_quantize(inputs[name])), *args[1:])

    def post_hook(module, args, output, name):
        seen[name]["output"] = output.detach().numpy().copy()

    handles = []
    for name in inputs:
        module = model.get_submodule(name)
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: pre_hook(m, a, n)))
        handles.append(module.register_forward_hook(lambda m, a, o, n=name: post_hook(m, a, o, n)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def compare_linears(model: torch.nn.Module, linears: dict[str, tuple[str, str]], module_of: dict[str, str],
                    values: dict[str, np.ndarray], run_model, tol: float):
    """Run ``run_model()`` (the converted ``model``) with every linear layer fed the graph's
    input of that layer, quantised as the graph does (:func:`fake_quantize`), and check each
    layer's own input and its output against the graph's ``values`` (from :func:`evaluate`).

    ``linears`` is :func:`quantized_linears` of the graph, ``module_of`` maps its scopes to the
    model's module names. Feeding the graph's inputs keeps every comparison local: the graph
    rounds activations to 256 levels per tensor, so a difference of one float rounding that
    moves a value across a rounding boundary would otherwise grow from layer to layer. The
    input check covers what runs between the linear layers (norms, attention, position bias,
    masks, activations), the output check the layer's weight and bias: both to float32
    rounding, relative error (Frobenius norms) below ``tol``. Returns ``run_model()``'s result.
    """
    inputs = {module_of[scope]: values[x] for scope, (x, _) in linears.items()}
    seen: dict = {}
    with torch.no_grad(), _linears_fed(model, inputs, seen):
        result = run_model()
    assert len(seen) == len(linears), f"{len(linears) - len(seen)} linear layers did not run"
    for scope, (x, y) in linears.items():
        got = seen[module_of[scope]]
        for side, expected in (("input", values[x]), ("output", values[y])):
            error = relative_error(got[side], expected)
            assert error < tol, f"{side} of {scope}: {error:.2e}"
    return result


def with_bug(model: torch.nn.Module, parameter: str, bug: str) -> torch.nn.Module:
    """A copy of ``model`` with one converter bug in ``parameter``:

    - ``"transposed"``: the graph's (in, out) weight array reshaped to (out, in) instead of
      transposed (for a square weight: the weight transposed);
    - ``"wrong scale"``: dequantised with a scale 1 % too large;
    - ``"missing bias"``: left at zero.
    """
    broken = copy.deepcopy(model)
    weight = broken.get_parameter(parameter)
    with torch.no_grad():
        if bug == "transposed":
            weight.copy_(weight.T.reshape(weight.shape).clone())
        elif bug == "wrong scale":
            weight.mul_(1.01)
        elif bug == "missing bias":
            weight.zero_()
        else:
            raise ValueError(f"unknown bug {bug!r}")
    return broken
