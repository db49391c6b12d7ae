"""Recording attention probabilities from code that never materialises them.

Fused kernels (``torch.nn.functional.scaled_dot_product_attention``, the fast path of
``nn.MultiheadAttention``) return only the attended values. Inside :class:`record_attention`,
every call to ``scaled_dot_product_attention`` runs as usual and, beside it, the probabilities
``softmax(Q K^T * scale + mask)`` are recomputed from the same Q, K, mask and scale; every
``nn.MultiheadAttention`` call is asked for its per-head weights.

It is a :class:`torch.overrides.TorchFunctionMode`, whose stack is per thread: nothing is
patched on a shared module or on torch itself, so another thread running the same model at the
same moment is unaffected.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def sdpa_probabilities(query, key, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                       enable_gqa=False) -> torch.Tensor:
    """The probabilities that ``F.scaled_dot_product_attention`` weights the values with.

    query [..., heads, L, d], key [..., kv_heads, S, d]; returns [..., heads, L, S], float32.
    Follows torch's reference: ``is_causal`` keeps keys j <= i (top-left aligned), a boolean
    mask keeps True, a float mask is added to the scores. Dropout is not applied (eval).
    """
    q, k = query.float(), key.float()
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    L, S = scores.shape[-2:]
    if is_causal:
        keep = torch.ones(L, S, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.float()
    return torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a fully masked row is all zero


_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


class record_attention(TorchFunctionMode):
    """Context manager: ``with record_attention() as rec: model(x)``; then ``rec.maps`` holds
    one float32 tensor [batch, heads, queries, keys] per attention call, in call order."""

    def __init__(self) -> None:
        super().__init__()
        self.maps: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            bound = dict(zip(_SDPA_ARGS, args), **kwargs)
            bound.pop("value")
            self.maps.append(sdpa_probabilities(**bound).detach())
            return func(*args, **kwargs)
        if func is F.multi_head_attention_forward:
            want_weights = kwargs.get("need_weights", True)
            want_average = kwargs.get("average_attn_weights", True)
            kwargs = dict(kwargs, need_weights=True, average_attn_weights=False)
            out, weights = func(*args, **kwargs)
            per_head = weights if weights.dim() == 4 else weights.unsqueeze(0)  # unbatched input
            self.maps.append(per_head.detach().float())
            if not want_weights:
                return out, None
            return out, (weights.mean(dim=-3) if want_average else weights)
        return func(*args, **kwargs)
