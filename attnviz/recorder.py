"""Recording attention probabilities from code that never materialises them.

Fused kernels (``torch.nn.functional.scaled_dot_product_attention``, the fast path of
``nn.MultiheadAttention``) return only the attended values. Inside :class:`record_attention`,
every call to ``scaled_dot_product_attention`` runs as usual and, beside it, the probabilities
``softmax(Q K^T * scale + mask)`` are recomputed from the same Q, K, mask and scale; every
``nn.MultiheadAttention`` call is asked for its per-head weights. With ``lazy=True`` nothing is
recomputed: each SDPA call's Q, K, scale and mask are kept as an :class:`attnviz.lazy.Call`
(keys once per key/value head, masks once and described compactly when they are causal or
sliding-window patterns, an additive bias by key, such as ALiBi, as one value per head and
key), from which attnviz.lazy computes any head's probabilities later; this is how
attnviz.capture records every model that runs SDPA. With ``lazy=True`` an attention written
out in torch operations (BLOOM's and MPT's eager code: ``q @ k^T``, scaled, a bias added,
masked, then a softmax over the keys) is traced from the product to its softmax and recorded
as the same Call. :func:`default_attention` switches a model to the implementation that is
recorded.

It is a :class:`torch.overrides.TorchFunctionMode`, whose stack is per thread: nothing is
patched on a shared module or on torch itself, so another thread running the same model at the
same moment is unaffected.
"""
from __future__ import annotations

import math
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from attnviz.lazy import MASKED, Call, default_scale, describe_mask, kv_groups, scores


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
    eager = sys.modules[type(module).__module__].eager_attention_forward
    if rec is None or not rec.lazy:
        return eager(module, query, key, value, attention_mask, **kwargs)
    scale = kwargs.get("scaling")
    scale = getattr(module, "scaling", None) if scale is None else scale
    rec.calls.append(rec._record(query, key, attention_mask, scale=scale, softcap=kwargs.get("softcap")))
    rec.callers.append(module)
    rec._called(module)
    tracing, rec.tracing = rec.tracing, False  # recorded here: its own products are not traced again
    try:
        return eager(module, query, key, value, attention_mask, **kwargs)
    finally:
        rec.tracing = tracing


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
    each, in call order; their explicit masks and biases in ``rec.masks``) instead of being
    turned into maps, and so are eager attentions written out in torch operations (see the
    module docstring); ``nn.MultiheadAttention`` calls still give maps. Each call and map notes
    its recording point, the module that made it (``rec.callers`` beside ``rec.calls``,
    ``rec.map_callers`` beside ``rec.maps``: the innermost ``nn.Module`` whose code was
    running, the attention module; None outside any module), by which attnviz.recording
    assigns calls to stacks and layers. on_call: called with that module after each call
    (progress).

    whole_batch (with lazy): every batch item of a call is kept, for attention whose batch is
    part of one input (Swin's windows): a Call's heads are then its batch items' heads, item
    after item (q ``[items x heads, queries, dim]``, head ``b * heads + h``; its mask likewise),
    and an attention written out in torch operations is not traced: the output of each softmax
    over the last axis is kept as a map instead (every batch item, the model's own probabilities).
    """

    def __init__(self, lazy: bool = False, on_call=None, whole_batch: bool = False) -> None:
        super().__init__()
        self.maps: list[torch.Tensor] = []
        self.calls: list[Call] = []
        self.callers: list[torch.nn.Module | None] = []  # the module that made each of self.calls
        self.map_callers: list[torch.nn.Module | None] = []  # the module that made each of self.maps
        self.masks: list = []
        self.lazy, self.on_call, self.whole_batch = lazy, on_call, lazy and whole_batch
        self.tracing = lazy and not whole_batch  # whether eager attention written out in torch operations is traced
        self._traced = WeakIdKeyDictionary()  # tensor -> _Scores: what the tensor's values are made of
        self._last_mask = None  # (the mask tensors last described, their description)

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
            caller = _caller()
            if self.lazy:
                self.calls.append(self._record(**bound))
                self.callers.append(caller)
            else:
                self.maps.append(sdpa_probabilities(**bound).detach())
                self.map_callers.append(caller)
            out = func(*args, **kwargs)
            self._called(caller)
            return out
        if func is F.multi_head_attention_forward:
            want_weights = kwargs.get("need_weights", True)
            want_average = kwargs.get("average_attn_weights", True)
            kwargs = dict(kwargs, need_weights=True, average_attn_weights=False)
            out, weights = func(*args, **kwargs)
            per_head = weights if weights.dim() == 4 else weights.unsqueeze(0)  # unbatched input
            self.maps.append(per_head.detach().float())
            caller = _caller()
            self.map_callers.append(caller)
            self._called(caller)
            if not want_weights:
                return out, None
            return out, (weights.mean(dim=-3) if want_average else weights)
        out = func(*args, **kwargs)
        if self.tracing and func in _TRACED and isinstance(out, torch.Tensor):
            self._trace(func, args, kwargs, out)
        elif self.whole_batch and func in _SOFTMAXES and _over_last_axis(args, kwargs, out):
            caller = _caller()
            self.maps.append(out.detach().float())
            self.map_callers.append(caller)
            self._called(caller)
        return out

    def _called(self, caller: torch.nn.Module | None) -> None:
        if self.on_call is not None:
            self.on_call(caller)

    def _record(self, query, key, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                enable_gqa=False, softcap=None) -> Call:
        """The Call of batch item 0: q [heads, queries, dim], k once per key/value head (of every
        batch item, heads item after item, when whole_batch)."""
        if self.whole_batch:
            q, k = query.reshape(-1, *query.shape[-2:]), key.reshape(-1, *key.shape[-2:])
        else:
            q, k = query.reshape(-1, *query.shape[-3:])[0], key.reshape(-1, *key.shape[-3:])[0]
        n_heads = q.shape[0]
        if k.shape[0] == n_heads > 1:
            k = k[::kv_groups(k, n_heads)]  # repeat_kv copies undone
        causal, window, mask, key_bias = bool(is_causal), None, -1, -1
        if attn_mask is not None:
            if self.whole_batch:  # [items x heads, queries, keys], as q
                def first():
                    return attn_mask.expand(*query.shape[:-1], key.shape[-2]).reshape(n_heads, -1, key.shape[-2])
            else:
                def first():
                    return attn_mask.reshape(-1, *attn_mask.shape[-3:])[0] if attn_mask.dim() >= 3 else attn_mask[None]
            causal, window, mask, key_bias = self._described((attn_mask,), first, n_heads)
        return Call(q=_array(q), k=_array(k), scale=float(default_scale(q.shape[-1]) if scale is None else scale),
                    causal=causal, window=window, mask=mask, softcap=None if softcap is None else float(softcap),
                    key_bias=key_bias)

    def _described(self, given: tuple, mask, n_heads: int, compact: bool = False) -> tuple | None:
        """(causal, window, mask index, key bias index) of the mask that ``mask()`` builds (float
        or boolean ``[heads or 1, queries, keys]``) from the tensors ``given``, its parts stored
        in self.masks: described once while the model passes the same tensors, layer after
        layer. ``compact``: None, and nothing stored, when the mask adds a bias that depends on
        the query (it would be a [queries, keys] tensor per call)."""
        last = self._last_mask
        if last is not None and len(last[0]) == len(given) and all(a is b for a, b in zip(last[0], given)):
            return last[1]
        causal, window, left, key_bias = describe_mask(mask(), n_heads)
        if compact and left is not None and left.dtype != torch.bool:
            return None
        described = (causal, window, -1 if left is None else self._store_mask(left),
                     -1 if key_bias is None else self._store_mask(key_bias))
        self._last_mask = (given, described)
        return described

    def _store_mask(self, mask: torch.Tensor) -> int:
        """Index of ``mask`` in self.masks, added unless equal to the last one stored."""
        stored = mask.cpu().numpy() if mask.dtype == torch.bool else _array(mask)
        if self.masks and self.masks[-1].shape == stored.shape and np.array_equal(self.masks[-1], stored):
            return len(self.masks) - 1
        self.masks.append(stored)
        return len(self.masks) - 1

    # -- eager attention written out in torch operations ----------------------------------------
    def _trace(self, func, args, kwargs, out: torch.Tensor) -> None:
        """Follow what ``out`` is made of: a batched product ``q @ k^T`` starts a trace;
        scaling by a number, adding a tensor or a number, filling places with a hugely negative
        value and reshaping carry it on; a softmax over the keys of a traced tensor records its
        Call. Any other operation ends it (its result is not traced)."""
        if func in _PRODUCTS:
            self._trace_product(func, args, kwargs, out)
            return
        x = args[0] if args else kwargs.get("input")
        other = args[1] if len(args) > 1 else kwargs.get("other")
        if func in _ADDITIONS and _is_traced(self._traced, other) and not _is_traced(self._traced, x):
            x, other = other, x  # number or tensor + traced scores: addition commutes
        scores = self._traced.get(x) if isinstance(x, torch.Tensor) else None
        if scores is None:
            return
        traced = None
        if func in _SOFTMAXES:
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            if dim is not None and dim % x.dim() == x.dim() - 1:
                self._record_traced(scores, x)
            return
        if func in _SAME_VALUES:
            traced = scores if out.shape[-2:] == x.shape[-2:] else None
        elif func in _SCALINGS or func in _DIVISIONS:
            factor = _number(other)
            if factor is not None and factor != 0:
                traced = scores.scaled(factor if func in _SCALINGS else 1.0 / factor)
        elif func in _ADDITIONS or func in _SUBTRACTIONS:
            sign = (1.0 if func in _ADDITIONS else -1.0) * float(kwargs.get("alpha", 1.0))
            if _number(other) is not None:
                traced = scores  # a constant added to every score changes no probability
            elif isinstance(other, torch.Tensor) and not _is_traced(self._traced, other):
                traced = scores.plus(sign, other, out.shape[:-2])
        elif func in _FILLS:
            where = args[1] if len(args) > 1 else kwargs.get("mask")
            value = _number(args[2] if len(args) > 2 else kwargs.get("value"))
            if value is not None and value <= MASKED and isinstance(where, torch.Tensor) and where.dtype == torch.bool:
                traced = scores.hiding(where, out.shape[:-2])
        if traced is None:
            self._traced.pop(out, None)
        else:
            self._traced[out] = traced

    def _trace_product(self, func, args, kwargs, out: torch.Tensor) -> None:
        """Start a trace at ``out = a @ b`` (``bias * beta + (a @ b) * alpha`` for baddbmm) when
        it is a batched product with one or two leading axes and neither factor is traced."""
        if func in _BADDBMM:
            bias, a, b = (args[i] if len(args) > i else kwargs.get(n) for i, n in enumerate(("input", "batch1", "batch2")))
            beta, alpha = float(kwargs.get("beta", 1.0)), float(kwargs.get("alpha", 1.0))
        else:
            a = args[0] if args else kwargs.get("input")
            b = args[1] if len(args) > 1 else kwargs.get("other", kwargs.get("mat2"))
            bias, beta, alpha = None, 0.0, 1.0
        factors = (a, b)
        if not all(isinstance(f, torch.Tensor) and f.dim() >= 3 for f in factors) or out.dim() > 4:
            return
        if any(f in self._traced for f in factors):
            return
        scores = _Scores(q=a, k_t=b, lead=tuple(out.shape[:-2]), scale=alpha)
        self._traced[out] = scores.plus(beta, bias, out.shape[:-2]) if bias is not None and beta else scores

    def _record_traced(self, traced: "_Scores", x: torch.Tensor) -> None:
        """Record the Call of a traced softmax input ``x`` [..., heads, queries, keys] when it
        has the shapes of an attention and reproduces the first and last rows of every head's
        probabilities; else record nothing (a capture then counts too few calls and materialises
        the maps instead)."""
        n_heads = x.shape[-3] if x.dim() >= 4 else x.shape[0]
        call = self._traced_call(traced, n_heads, tuple(x.shape[-2:]))
        if call is None:
            return
        rows = np.array([0, x.shape[-2] - 1])
        seen = _batch_item(x, tuple(x.shape[:-2]), n_heads).float()
        for head in range(n_heads):
            got = torch.softmax(scores(call, self.masks, head, rows), dim=-1).nan_to_num(0.0)
            want = torch.softmax(seen[head if seen.shape[0] > 1 else 0][[0, -1]], dim=-1).nan_to_num(0.0)
            if not torch.allclose(got, want, rtol=0.0, atol=TRACE_TOLERANCE):
                return
        caller = _caller()
        self.calls.append(call)
        self.callers.append(caller)
        self._called(caller)

    def _traced_call(self, traced: "_Scores", n_heads: int, shape: tuple[int, int]) -> Call | None:
        """The Call of batch item 0 of ``traced`` scores over ``n_heads`` heads of ``shape``
        (queries, keys), its mask and key bias stored; None when the factors do not have the
        shapes of queries and keys, or a bias depends on the query."""
        n_q, n_k = shape
        q = _batch_item(traced.q, traced.lead, n_heads)
        k = _batch_item(traced.k_t, traced.lead, n_heads).transpose(-1, -2)
        if q.shape[0] == 1 < n_heads:
            q = q.expand(n_heads, -1, -1)
        if tuple(q.shape) != (n_heads, n_q, k.shape[-1]) or k.shape[1] != n_k or n_heads % k.shape[0]:
            return None
        if k.shape[0] == n_heads > 1:
            k = k[::kv_groups(k, n_heads)]
        terms = [(c, t, _batch_item(t, lead, n_heads)) for c, t, lead in traced.terms]  # (coefficient, as given, item 0)
        if any(item.shape[-2] not in (1, n_q) or item.shape[-1] != n_k for _, _, item in terms):
            return None
        whole = [(c, item) for c, _, item in terms if item.shape[-2] > 1]  # a bias per query and key, or a mask
        by_key = [c * item[:, 0].float() for c, _, item in terms if item.shape[-2] == 1]  # ALiBi: [heads or 1, keys]
        hidden = [_batch_item(m, lead, n_heads) for m, lead in traced.hidden]

        def mask() -> torch.Tensor:
            """The whole terms summed, -inf where hidden (float), or what is kept (boolean)."""
            if not whole:
                return ~torch.stack(torch.broadcast_tensors(*hidden)).any(dim=0)
            total = sum((c * t.float() for c, t in whole[1:]), whole[0][0] * whole[0][1].float())
            for m in hidden:
                total = total.masked_fill(m, -math.inf)
            return total

        given = tuple(t for _, t, item in terms if item.shape[-2] > 1) + tuple(m for m, _ in traced.hidden)
        described = self._described(given, mask, n_heads, compact=True) if given else (False, None, -1, -1)
        if described is None:
            return None
        causal, window, index, key_bias = described
        if by_key:
            bias = sum(by_key[1:], by_key[0])
            if key_bias >= 0:
                bias = bias + torch.from_numpy(self.masks[key_bias])
            key_bias = self._store_mask(bias[:1] if bias.shape[0] > 1 and bool((bias == bias[:1]).all()) else bias)
        return Call(q=_array(q), k=_array(k), scale=traced.scale, causal=causal, window=window, mask=index,
                    key_bias=key_bias)


TRACE_TOLERANCE = 1e-3  # most a traced call's probabilities (first and last rows) may differ from the model's
_T = torch.Tensor
_PRODUCTS = {torch.matmul, _T.matmul, torch.bmm, _T.bmm, torch.baddbmm, _T.baddbmm}
_BADDBMM = {torch.baddbmm, _T.baddbmm}
_SCALINGS = {torch.mul, _T.mul, _T.mul_}
_DIVISIONS = {torch.div, _T.div, _T.div_}
_ADDITIONS = {torch.add, _T.add, _T.add_}
_SUBTRACTIONS = {torch.sub, _T.sub, _T.sub_}
_FILLS = {torch.masked_fill, _T.masked_fill, _T.masked_fill_}
_SAME_VALUES = {_T.view, _T.reshape, torch.reshape, _T.to, _T.float, _T.contiguous}
_SOFTMAXES = {F.softmax, torch.softmax, _T.softmax}
_TRACED = _PRODUCTS | _SCALINGS | _DIVISIONS | _ADDITIONS | _SUBTRACTIONS | _FILLS | _SAME_VALUES | _SOFTMAXES


@dataclass(frozen=True)
class _Scores:
    """What a traced tensor of scores ``[..., queries, keys]`` is made of:
    ``(q @ k_t) * scale + sum(coefficient * term)``, -inf where a hiding mask is True. Each
    term and mask is kept with the leading axes the scores had when it was applied, since a
    model may reshape its scores between steps (BLOOM: [batch * heads] to [batch, heads])."""

    q: torch.Tensor  # [..., queries, dim]
    k_t: torch.Tensor  # [..., dim, keys]
    lead: tuple  # the product's leading axes
    scale: float = 1.0
    terms: tuple = ()  # (coefficient, tensor, leading axes)
    hidden: tuple = ()  # (boolean tensor, True where hidden, leading axes)

    def scaled(self, factor: float) -> "_Scores":
        return replace(self, scale=self.scale * factor,
                       terms=tuple((c * factor, t, lead) for c, t, lead in self.terms))

    def plus(self, coefficient: float, term: torch.Tensor, lead) -> "_Scores":
        return replace(self, terms=self.terms + ((coefficient, term, tuple(lead)),))

    def hiding(self, where: torch.Tensor, lead) -> "_Scores":
        return replace(self, hidden=self.hidden + ((where, tuple(lead)),))


def _caller() -> torch.nn.Module | None:
    """The innermost ``nn.Module`` whose code is running on this thread (the ``self`` of the
    nearest frame that has a module as ``self``): the attention module that made the call being
    recorded. Read from the frames, so nothing is registered on a shared module."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_argcount and code.co_varnames[0] == "self":
            owner = frame.f_locals.get("self")
            if isinstance(owner, torch.nn.Module):
                return owner
        frame = frame.f_back
    return None


def _over_last_axis(args, kwargs, out) -> bool:
    """Whether a softmax call (its ``args``, ``kwargs``) ran over the last axis of a tensor of
    attention's shape (at least [heads, queries, keys]), giving ``out``."""
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    return isinstance(out, torch.Tensor) and out.dim() >= 3 and dim is not None and dim % out.dim() == out.dim() - 1


def _is_traced(traced: WeakIdKeyDictionary, x) -> bool:
    return isinstance(x, torch.Tensor) and x in traced


def _batch_item(t: torch.Tensor, lead: tuple, n_heads: int) -> torch.Tensor:
    """Batch item 0 of ``t`` as ``[heads or 1, rows, cols]``, where ``t`` broadcasts against
    leading axes ``lead``: [batch, heads] (item 0 is index 0 of the batch), or one axis
    [batch * heads] (item 0 is its first ``n_heads``). No copy is made."""
    t = t.expand(*lead, *t.shape[-2:]) if t.dim() <= len(lead) + 2 else t
    t = t[(0,) * (len(lead) - 1)] if len(lead) > 1 else t[:n_heads]
    return t[:1] if t.shape[0] > 1 and t.stride(0) == 0 else t


def _number(x) -> float | None:
    """A Python number or a one-element tensor as a float; None for anything else."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x)
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return float(x)
    return None


def _array(t: torch.Tensor) -> np.ndarray:
    """A detached float32 contiguous CPU copy-if-needed of ``t`` as numpy."""
    return t.detach().to("cpu", torch.float32).contiguous().numpy()


# -- the implementation that is recorded --------------------------------------------------------
@contextmanager
def sdpa_attention(net: torch.nn.Module):
    """Within: ``net`` (a transformers model loaded with eager attention) runs SDPA where
    transformers supports it for the model (yields whether it does), switched with
    ``set_attn_implementation`` or, for a model that reads its implementation from its config as
    it runs (Falcon: one attention class with an SDPA and an eager branch), set on its configs.
    Set back afterwards. The caller holds the model's gate in a mode of its own (attnviz.jobs):
    the switch is the shared model's."""
    config = getattr(net, "config", None)
    before = getattr(config, "_attn_implementation", None)
    configs = []
    if before == "eager" and getattr(type(net), "_supports_sdpa", False):
        if getattr(type(net), "_can_set_attn_implementation", lambda: True)():
            try:
                net.set_attn_implementation("sdpa")
            except (ValueError, ImportError, KeyError):
                pass
        else:
            configs = _set_on_configs(net, "sdpa")
    now = getattr(config, "_attn_implementation", None)
    try:
        yield now == "sdpa"
    finally:
        _set_on_configs(net, before, configs)
        if now == "sdpa" and before != "sdpa" and not configs:
            net.set_attn_implementation(before)


def _set_on_configs(net: torch.nn.Module, implementation: str | None, configs: list | None = None) -> list:
    """Sets ``implementation`` on ``configs`` (default: every config of ``net``'s modules);
    returns them."""
    if configs is None:
        configs = list({id(m.config): m.config for m in net.modules() if hasattr(m, "config")}.values())
    for c in configs:
        c._attn_implementation_internal = implementation
    return configs


@contextmanager
def default_attention(net: torch.nn.Module):
    """Within: ``net`` (a transformers model loaded with eager attention) runs its default
    attention in a way that ``record_attention(lazy=True)`` records (yields whether it runs
    SDPA or the recording eager function): SDPA where transformers supports it for the model
    (:func:`sdpa_attention`); else, for a model that calls its attention through transformers'
    registry, the recording eager function (RECORDING_EAGER). A model with neither runs its
    own eager code, which record_attention traces. The implementation is set back afterwards.
    The caller holds the model's gate in a mode of its own: nothing else runs the model meanwhile."""
    with sdpa_attention(net) as sdpa:
        before = getattr(getattr(net, "config", None), "_attn_implementation", None)
        if sdpa or before != "eager" or not _eager_through_registry(net):
            yield sdpa
            return
        register_eager_recording()
        configs = _set_on_configs(net, RECORDING_EAGER)
        try:
            yield True
        finally:
            _set_on_configs(net, before, configs)


def _eager_through_registry(net: torch.nn.Module) -> bool:
    """Whether every attention module of ``net`` calls its attention function through
    transformers' registry, with an ``eager_attention_forward`` beside it to delegate to."""
    if not getattr(type(net), "_supports_attention_backend", False):
        return False
    attention = [m for m in net.modules() if type(m).__name__.endswith("Attention")]
    return bool(attention) and all(hasattr(sys.modules[type(m).__module__], "eager_attention_forward")
                                   for m in attention)
