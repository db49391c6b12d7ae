"""Mechanics lab: how attention is computed, step by step, and what it costs as inputs grow."""
import streamlit as st

from attnviz.ui.common import friendly_errors, in_app_frame
from attnviz.ui.lab import compare_table, cost_view, lab_input, show_multi_head, show_steps, variant_options

in_app_frame()

st.title("Mechanics lab")
st.caption("Attention by hand: score every key against each query, scale, mask, softmax, and take the "
           "weighted sum of the values. Change one choice at a time and watch the weights, their breadth "
           "and the output move; then see what attention costs as the sequence grows.")

compute_tab, cost_tab = st.tabs(["Computation", "Cost"], key="lab_tab", bind="query-params")

with cost_tab:
    with friendly_errors():
        cost_view()

with compute_tab:
    with friendly_errors():
        inp = lab_input()
        options = variant_options(len(inp.key_labels), inp.step_q.shape[1], inp.seed)
        steps_tab, compare_tab, heads_tab = st.tabs(["Step by step", "What each choice changes", "Multi-head"])
        with steps_tab:
            show_steps(inp, options)
        with compare_tab:
            st.caption("The variant chosen above, then each choice changed on its own: breadth is the mean "
                       "entropy of the rows over its largest possible value, output change how far the output "
                       "moves.")
            compare_table(inp, options)
        with heads_tab:
            show_multi_head(inp, options)
