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
