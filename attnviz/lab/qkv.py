"""The queries, keys and values of a real model, for the mechanics lab to compute by hand.

For a BERT-style encoder (minilm-l6): the hidden states entering ``layer`` for a text, put
through that layer's query, key and value projections, exactly as the model does before its
attention. Computing softmax(q k^T / sqrt(d_head)) per head from these reproduces the model's
own attention of that layer (``reference``), which the lab shows as a check.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import attnviz.families as families
import attnviz.jobs as jobs
from attnviz.errors import AttnvizError
from attnviz.inputs import clean_text
from attnviz.models.loader import Model
from attnviz.models.model import AS_LOADED

MAX_LAB_TOKENS = 32  # the lab shows every matrix with its numbers: longer texts are cut


@dataclass
class LayerQKV:
    """One layer's inputs to attention, float64. q, k, v: ``[tokens, d_model]``, the heads side
    by side (head h owns columns h * d_head to (h + 1) * d_head); w_o: ``[d_model, d_model]``,
    the output projection applied to the concatenated heads (its bias left out); reference:
    the model's own attention ``[heads, tokens, tokens]``."""

    tokens: list[str]
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    w_o: np.ndarray
    n_heads: int
    reference: np.ndarray


def bert_layer_qkv(model: Model, text: str, layer: int = 0) -> LayerQKV:
    """Q, K, V of ``layer`` of a BERT-style encoder on ``text`` (at most MAX_LAB_TOKENS tokens)."""
    net = model.net
    layers = getattr(getattr(net, "encoder", None), "layer", None)
    if families.reads(model) != "text" or layers is None or not hasattr(layers[0].attention, "self"):
        raise AttnvizError(f"The lab reads queries and keys from BERT-style encoders such as minilm-l6, not {model.name}.")
    if not 0 <= layer < len(layers):
        raise AttnvizError(f"{model.name} has layers 0 to {len(layers) - 1}, not {layer}.")
    enc = model.tokenizer(clean_text(text), return_tensors="pt", truncation=True, max_length=MAX_LAB_TOKENS)
    heads = net.config.num_attention_heads
    with jobs.hold(model.gate, AS_LOADED), torch.inference_mode():
        out = net(**{k: v.to(model.device) for k, v in enc.items()}, output_hidden_states=True, output_attentions=True)
        hidden = out.hidden_states[layer]  # [1, tokens, d_model], the input of `layer`
        attn = layers[layer].attention
        q, k, v = (proj(hidden)[0].double().cpu().numpy() for proj in (attn.self.query, attn.self.key, attn.self.value))
        w_o = attn.output.dense.weight.T.double().cpu().numpy()  # y = x W^T + b
        reference = out.attentions[layer][0].double().cpu().numpy()
    tokens = model.tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    return LayerQKV(tokens=tokens, q=q, k=k, v=v, w_o=w_o, n_heads=heads, reference=reference)
