"""The transformer layer of attnviz's own models (the toy model and the transformer and ViT
classifiers): pre-norm multi-head self-attention, then an MLP.

    x [batch, n, d_model] -> x + Attention(LayerNorm(x)) -> x + MLP(LayerNorm(x))

The attention of a layer is one of ATTENTIONS:

- ``global``: softmax(q k^T / sqrt(d_head)) v over every key;
- ``local``: the same with keys outside ``|i - j| <= window`` masked out;
- ``additive`` (Bahdanau): score(i, j) = u^T tanh(q_i + k_j), one learned vector u per head,
  the query and key projections playing the roles of W_q and W_k.

Every kind calls ``F.scaled_dot_product_attention``, so that
:func:`attnviz.recorder.record_attention` records its probabilities as it does for any other
model. Additive attention passes its scores as the float mask with all-zero queries and keys:
the call computes softmax(0 + scores) v, exactly additive attention.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ATTENTIONS = {
    "global": "every position sees every other",
    "local": "each position sees only its neighbours within the window",
    "additive": "Bahdanau's v^T tanh(W_q q + W_k k) scores instead of dot products",
}


class Attention(nn.Module):
    """Multi-head self-attention of one kind (see the module docstring): x [batch, n, d_model]."""

    def __init__(self, d_model: int, n_heads: int, kind: str = "global", window: int = 2) -> None:
        super().__init__()
        self.kind, self.heads, self.window = kind, n_heads, window
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        if self.kind == "additive":
            d_head = d_model // n_heads
            self.u = nn.Parameter(torch.randn(n_heads, d_head) / math.sqrt(d_head))

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``keep``: optional bool [batch, n], False for padding keys, which get no weight."""
        batch, n, d = x.shape
        # [batch, n, 3 d] -> three [batch, heads, n, d_head]
        q, k, v = self.qkv(x).view(batch, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        seen = None if keep is None else keep[:, None, None, :]  # [batch, 1, 1, key]
        if self.kind == "local":
            i = torch.arange(n, device=x.device)
            near = (i[:, None] - i[None, :]).abs() <= self.window  # [query, key], True = seen
            seen = near if seen is None else seen & near
        if self.kind in ("global", "local"):
            mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=seen)
        else:
            # scores[b, h, i, j] = u_h . tanh(q_i + k_j), then softmax(0 . 0 + scores) v
            scores = torch.einsum("bhijd,hd->bhij", torch.tanh(q[:, :, :, None] + k[:, :, None]), self.u)
            if seen is not None:
                scores = scores.masked_fill(~seen, float("-inf"))
            zero = q.new_zeros(batch, self.heads, n, 1)
            mixed = F.scaled_dot_product_attention(zero, zero, v, attn_mask=scores)
        return self.out(mixed.transpose(1, 2).reshape(batch, n, d))


class Block(nn.Module):
    """One pre-norm layer: attention, then a two-layer MLP (4 x wider), each added to x."""

    def __init__(self, d_model: int, n_heads: int, kind: str = "global", window: int = 2) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads, kind, window)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), keep)
        return x + self.mlp(self.norm2(x))
