"""Layer and head selectors shared by the pages; the choice lives in the URL (?layer=&head=)."""
from __future__ import annotations

import streamlit as st

from attnviz.analysis.flow import FUSIONS as HEAD_FUSIONS  # the one list of head fusions
from attnviz.result import AttentionResult
from attnviz.ui import keys
from attnviz.ui.common import url_int


def layer_head(result: AttentionResult, stack: str, key: str = "lh") -> tuple[int, int | str]:
    """A layer slider and a head select box for ``result.attn[stack]``.

    Returns ``(layer, head)`` where head is an index or one of HEAD_FUSIONS ("mean", "max",
    "min" of all heads). Both are 0-based internally and shown 0-based (as in the code and the
    exported files). Written back to the ``layer`` and ``head`` query parameters.
    """
    return layer_slider(result, stack, key), head_select(result, stack, key)


def layer_slider(result: AttentionResult, stack: str, key: str = "lh") -> int:
    """The layer slider of :func:`layer_head` alone (widget key ``{key}_layer``, ``?layer=``)."""
    n_layers = result.attn[stack].shape[0]
    if n_layers == 1:  # a slider needs two ends (e.g. a classifier's one pooling layer)
        st.caption("Layer 0, the only one")
        st.query_params[keys.LAYER] = "0"
        return 0
    layer = st.slider("Layer", 0, n_layers - 1, url_int(keys.LAYER, n_layers - 1, 0, n_layers - 1), key=f"{key}_layer")
    st.query_params[keys.LAYER] = str(layer)
    return layer


def head_select(result: AttentionResult, stack: str, key: str = "lh") -> int | str:
    """The head select box of :func:`layer_head` alone (widget key ``{key}_head``, ``?head=``)."""
    n_heads = result.attn[stack].shape[1]
    head_options: list[int | str] = list(range(n_heads)) + list(HEAD_FUSIONS)
    raw = st.query_params.get(keys.HEAD, "0")
    default = raw if raw in HEAD_FUSIONS else url_int(keys.HEAD, 0, 0, n_heads - 1)
    head = st.selectbox("Head", head_options, index=head_options.index(default), key=f"{key}_head",
                        format_func=lambda h: f"head {h}" if isinstance(h, int) else f"{h} of all heads")
    st.query_params[keys.HEAD] = str(head)
    return head
