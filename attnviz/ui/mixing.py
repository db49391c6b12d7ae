"""The "Show" control of the text and image explorers: every view draws the attention weights,
or attention x value norm (per head), or one context-mixing method per layer (attnviz.mixing),
read as a result of the same shape, so the views themselves do not change.

- :func:`show_picker`: the control (``?show=``) and the result its choice makes of a capture.
- What it makes is kept in :data:`SHOWN`, a cache shared by sessions and bounded by bytes,
  named by the capture's digest and the choice (the mixing behind it in :data:`MIXINGS`,
  named by the digest and the methods computed together). What is computed (the value norms,
  a mixing) runs as a job of the visitor (ui.common.cached_job: its place in line while it
  waits, a progress bar, a Cancel button). Value zeroing, one layer pass per token per layer,
  says its cost first.
"""
from __future__ import annotations

from dataclasses import replace

import streamlit as st

from attnviz.analysis.mixing import METHODS
from attnviz.cache import ByteCache
from attnviz.errors import AttnvizError
from attnviz.lazy import ScaledStack
from attnviz.mixing import (
    DEFAULT_METHODS,
    VALUE_ZEROING_MAX_TOKENS,
    Mixing,
    max_mixing_tokens,
    mixing,
    mixing_bytes,
    refusals,
    scaled_by_value_norms,
    value_norms,
    value_norms_bytes,
)
from attnviz.result import AttentionResult
from attnviz.ui import keys
from attnviz.ui.common import cached_job, url_choice
from attnviz.ui.models import get_model
from attnviz.ui.views import Captured

ATTENTION, VALUE_NORM = "attention", "value_norm"
SHOW = {ATTENTION: "Attention weights", VALUE_NORM: "Attention × value norm",
        "attention_norm": "Attention-norm (per layer)", "globenc": "GlobEnc (per layer)",
        "alti": "ALTI (per layer)", "value_zeroing": "Value zeroing (per layer)"}
HELP = ("What the maps are. Attention weights: what the model computes. Attention × value norm: each "
        "head's weight on key j times the norm of the vector that j sends through that head, "
        "‖f^h(x_j)‖ (Kobayashi et al. 2020). Per layer: how much each token's output of a layer "
        "takes from each token of its input, counting what the weights leave out (attention-norm; "
        "GlobEnc and ALTI with the residual and norms; value zeroing with the whole layer). A per-layer "
        "method has one map per layer, shown as its head 0. Definitions: docs/mixing.md.")
MIXING_CACHE_BYTES = 1 << 30  # the mixings and the results shown from them, all sessions together


def _nbytes(shown: AttentionResult) -> int:
    """What a shown result adds to memory: a scaled stack's scale (its base is the capture's)."""
    return sum(a.scale.nbytes if isinstance(a, ScaledStack) else a.nbytes for a in shown.attn.values())


SHOWN: ByteCache[AttentionResult] = ByteCache(lambda: MIXING_CACHE_BYTES // 2, _nbytes)
MIXINGS: ByteCache[Mixing] = ByteCache(lambda: MIXING_CACHE_BYTES // 2, lambda m: m.nbytes)


def show_picker(captured: Captured) -> Captured:
    """The "Show" control (its choice in the URL as ``?show=``) and ``captured`` with the result
    it chose: the capture itself for attention weights; else its first stack (the one mixing
    reads) as attention x value norm or a per-layer method. A choice that does not apply here
    gets one line saying what applies, and the attention weights are shown."""
    default = url_choice(keys.SHOW, list(SHOW), ATTENTION)
    if st.session_state.get(keys.SHOW) not in SHOW:
        st.session_state[keys.SHOW] = default
    show = st.selectbox("Show", list(SHOW), format_func=SHOW.get, key=keys.SHOW, help=HELP)
    st.query_params[keys.SHOW] = show
    if show == ATTENTION:
        return captured
    result = captured.result
    why = refusal(captured, show)
    if why:
        st.info(why)
        return captured
    if show == "value_zeroing":
        layers = result.attn[result.stacks[0]].shape[0]
        n = len(result.key_tokens(result.stacks[0]))
        st.caption(f"Value zeroing runs each layer once per token: {layers} × {n} = {layers * n:,} layer passes "
                   f"(at most {VALUE_ZEROING_MAX_TOKENS} tokens); its Cancel button stops it.")
    if show == VALUE_NORM:
        shown = cached_job(SHOWN, (result.digest, show), f"{SHOW[show]} on {result.model}",
                           _norms_bytes(captured), lambda progress: _scaled(captured, progress))
    else:  # the mixing is the job; its result as attention, cheap, is kept beside it
        shown = SHOWN.get((result.digest, show), lambda: mixing_of(captured, show).as_result(show, result))
    if show != VALUE_NORM:
        st.caption(f"{SHOW[show]}: one map per layer, shown as head 0; row i is how token i's output of the "
                   "layer draws on each token of its input (rows sum to 1).")
    return replace(captured, result=shown, stack=result.stacks[0])


def refusal(captured: Captured, show: str) -> str | None:
    """Why ``show`` (a key of SHOW other than attention) does not apply to this capture (naming
    what applies), or None."""
    result = captured.result
    model = get_model(result.model)
    refused = refusals(model)
    if show in refused or (show == VALUE_NORM and len(refused) == len(METHODS)):
        if len(refused) == len(METHODS):
            return f"{refused[METHODS[0]]} Only the attention weights can be shown here."
        applies = [SHOW[m] for m in SHOW if m not in refused]
        return f"{refused[show]} What applies here: {', '.join(applies)}."
    if captured.stack != result.stacks[0]:
        return (f"{SHOW[show]} is computed for the {result.stacks[0]} self-attention (cross-attention mixing "
                f"is not covered): pick that stack, or show the attention weights.")
    if result.prompt_len is not None and result.prompt_len < len(result.tokens):
        return f"{SHOW[show]} reads the prompt alone: set the tokens to generate to 0 to see it."
    n = len(result.key_tokens(result.stacks[0]))
    layers = result.attn[result.stacks[0]].shape[0]
    if show != VALUE_NORM and n > max_mixing_tokens(layers):
        return (f"{SHOW[show]} keeps a [layers, tokens, tokens] matrix: at most {max_mixing_tokens(layers):,} tokens "
                f"for this model, and this input has {n:,}. Attention × value norm applies at any length.")
    if show == "value_zeroing" and n > VALUE_ZEROING_MAX_TOKENS:
        return (f"Value zeroing runs each layer once per token, so it is capped at {VALUE_ZEROING_MAX_TOKENS} "
                f"tokens; this input has {n:,}. Attention × value norm and the other per-layer methods apply.")
    return None


def _input(captured: Captured) -> tuple[object, dict]:
    """What the capture ran on, as mixing reads it: (input, keyword options)."""
    if captured.kind == "image":
        return captured.photo.image, {"size": captured.size}
    return captured.request.text, {"pair": captured.request.pair}


def _norms_bytes(captured: Captured) -> int:
    input, options = _input(captured)
    return value_norms_bytes(get_model(captured.result.model), input, **options)


def _scaled(captured: Captured, progress) -> AttentionResult:
    """Attention x value norm of the capture (attnviz.mixing.scaled_by_value_norms)."""
    input, options = _input(captured)
    norms = value_norms(get_model(captured.result.model), input, progress=progress, **options)
    return scaled_by_value_norms(captured.result, norms)


def mixing_of(captured: Captured, method: str) -> Mixing:
    """The context mixing of the capture that holds ``method`` (cached in MIXINGS by the
    capture's digest and the methods computed together: the cheap methods together, value
    zeroing alone), computed as a job of the visitor (ui.common.cached_job) when missing; an
    AttnvizError when it was skipped. Call :func:`refusal` first."""
    result = captured.result
    model = get_model(result.model)
    input, options = _input(captured)
    methods = ("value_zeroing",) if method == "value_zeroing" else DEFAULT_METHODS
    methods = tuple(m for m in methods if m not in refusals(model))
    n = len(result.key_tokens(result.stacks[0]))
    mixed = cached_job(MIXINGS, (result.digest, methods), f"Context mixing ({', '.join(methods)}) on {model.name}",
                       mixing_bytes(model, n, methods),
                       lambda progress: mixing(model, input, methods=methods, result=result, progress=progress, **options))
    if method not in mixed.matrices:
        raise AttnvizError(mixed.skipped.get(method, f"{SHOW[method]} was not computed for this input."))
    return mixed
