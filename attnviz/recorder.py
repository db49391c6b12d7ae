"""Recording attention probabilities from code that never materialises them.

Fused kernels (``torch.nn.functional.scaled_dot_product_attention``, the fast path of
``nn.MultiheadAttention``) return only the attended values. Inside :class:`record_attention`,
every call to ``scaled_dot_product_attention`` runs as usual and, beside it, the probabilities
``softmax(Q K^T * scale + mask)`` are recomputed from the same Q, K, mask and scale; every
``nn.MultiheadAttention`` call is asked for its per-head weights. With ``lazy=True`` nothing is
recomputed: each SDPA call's Q, K, scale and mask are kept as an :class:`attnviz.lazy.Call`
(keys once per key/value head, masks once and described compactly when they are causal or
sliding-window patterns), from which attnviz.lazy computes any head's probabilities later;
this is how attnviz.capture records every model that runs SDPA.

It is a :class:`torch.overrides.TorchFunctionMode`, whose stack is per thread: nothing is
patched on a shared module or on torch itself, so another thread running the same model at the
same moment is unaffected.
"""
from __future__ import annotations

import math
import sys
import threading

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from attnviz.lazy import Call, default_scale, describe_mask, kv_groups


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


RECORDING_EAGER = "attnviz_eager"  # the registered name of the recording eager attention function
_active = threading.local()  # .stack: the record_attention contexts entered on this thread


def _current():
    """The innermost record_attention of this thread, or None."""
    stack = getattr(_active, "stack", None)
    return stack[-1] if stack else None


def eager_recording_attention(module, query, key, value, attention_mask, **kwargs):
    """An attention function for transformers' AttentionInterface: the model's own eager
    function (its modeling module's ``eager_attention_forward``), and, when a lazy
    record_attention is active on this thread, a Call recorded from its arguments."""
    rec = _current()
    if rec is not None and rec.lazy:
        scale = kwargs.get("scaling")
        scale = getattr(module, "scaling", None) if scale is None else scale
        rec.calls.append(rec._record(query, key, attention_mask, scale=scale, softcap=kwargs.get("softcap")))
        if rec.on_call is not None:
            rec.on_call(len(rec.calls) + len(rec.maps))
    eager = sys.modules[type(module).__module__].eager_attention_forward
    return eager(module, query, key, value, attention_mask, **kwargs)


def register_eager_recording() -> None:
    """Register RECORDING_EAGER with transformers (attention function and mask function, the
    eager one); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(RECORDING_EAGER, eager_recording_attention)
    AttentionMaskInterface.register(RECORDING_EAGER, eager_mask)


_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


class record_attention(TorchFunctionMode):
    """Context manager: ``with record_attention() as rec: model(x)``; then ``rec.maps`` holds
    one float32 tensor [batch, heads, queries, keys] per attention call, in call order.

    lazy: SDPA calls are kept as ``rec.calls`` (one :class:`attnviz.lazy.Call` of batch item 0
    each, in call order; their explicit masks in ``rec.masks``) instead of being turned into
    maps; ``nn.MultiheadAttention`` calls still give maps. on_call: called with the number of
    calls so far after each one (progress).
    """

    def __init__(self, lazy: bool = False, on_call=None) -> None:
        super().__init__()
        self.maps: list[torch.Tensor] = []
        self.calls: list[Call] = []
        self.masks: list = []
        self.lazy, self.on_call = lazy, on_call
        self._last_mask = None  # (the mask tensor last seen, its description)

    def __enter__(self):
        out = super().__enter__()
        _active.stack = [*getattr(_active, "stack", []), self]
        return out

    def __exit__(self, *exc):
        _active.stack = _active.stack[:-1]
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            bound = dict(zip(_SDPA_ARGS, args), **kwargs)
            bound.pop("value")
            if self.lazy:
                self.calls.append(self._record(**bound))
            else:
                self.maps.append(sdpa_probabilities(**bound).detach())
            out = func(*args, **kwargs)
            if self.on_call is not None:
                self.on_call(len(self.calls) + len(self.maps))
            return out
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

    def _record(self, query, key, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                enable_gqa=False, softcap=None) -> Call:
        """The Call of batch item 0: q [heads, queries, dim], k once per key/value head."""
        q, k = query.reshape(-1, *query.shape[-3:])[0], key.reshape(-1, *key.shape[-3:])[0]
        n_heads = q.shape[0]
        if k.shape[0] == n_heads > 1:
            k = k[::kv_groups(k, n_heads)]  # repeat_kv copies undone
        causal, window, index = bool(is_causal), None, -1
        if attn_mask is not None:
            mask = attn_mask.reshape(-1, *attn_mask.shape[-3:])[0] if attn_mask.dim() >= 3 else attn_mask[None]
            if self._last_mask is not None and self._last_mask[0] is attn_mask:
                causal, window, index = self._last_mask[1]
            else:
                causal, window, left = describe_mask(mask, n_heads)
                if left is not None:
                    index = self._store_mask(left)
                self._last_mask = (attn_mask, (causal, window, index))
        return Call(q=_array(q), k=_array(k), scale=float(default_scale(q.shape[-1]) if scale is None else scale),
                    causal=causal, window=window, mask=index, softcap=None if softcap is None else float(softcap))

    def _store_mask(self, mask: torch.Tensor) -> int:
        """Index of ``mask`` in self.masks, added unless equal to the last one stored."""
        stored = mask.cpu().numpy() if mask.dtype == torch.bool else _array(mask)
        if self.masks and self.masks[-1].shape == stored.shape and np.array_equal(self.masks[-1], stored):
            return len(self.masks) - 1
        self.masks.append(stored)
        return len(self.masks) - 1


def _array(t: torch.Tensor) -> np.ndarray:
    """A detached float32 contiguous CPU copy-if-needed of ``t`` as numpy."""
    return t.detach().to("cpu", torch.float32).contiguous().numpy()
