"""Streamlit blocks of the mechanics lab: the input (Q, K, V), the choice of variant, the steps
with their formulas, what each choice changes, multi-head attention, and the cost view.

The numbers are computed by attnviz.analysis.mechanics (plain numpy); queries, keys and values
of a real sentence come from attnviz.lab.qkv; measured costs from attnviz.lab.cost.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from attnviz.analysis import mechanics as mech
from attnviz.errors import AttnvizError
from attnviz.lab import cost
from attnviz.lab.qkv import bert_layer_qkv
from attnviz.limits import token_cap
from attnviz.ui.charts import show_chart
from attnviz.ui.common import friendly_errors, job, take_cancelled
from attnviz.ui.models import get_model
from attnviz.viz import mechanics as viz

SOURCES = ("Numbers (random, editable)", "A sentence (minilm-l6)")
LAB_MODEL = "minilm-l6"
DEFAULT_SENTENCE = "The cat sat on the mat."
TEMPERATURES = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 10.0)
SCORE_LABELS = {"dot": "dot product", "scaled": "scaled dot product", "additive": "additive (Bahdanau)"}
SELECTION_LABELS = {"soft": "soft (softmax)", "hard": "hard (argmax)", "top-k": "top-k, renormalised"}
COST_LENGTHS = [128 * 2 ** i for i in range(8)]  # 128 ... 16,384


@dataclass
class LabInput:
    """What the lab computes on. q, k, v: ``[rows, d_model]`` with ``n_heads`` heads side by
    side; w_o: ``[d_model, d_model]`` output projection; step_q/k/v: the one head the step
    view shows; reference: the model's own attention ``[heads, queries, keys]`` (sentences
    only); seed: for the random additive parameters."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    query_labels: list[str]
    key_labels: list[str]
    n_heads: int
    w_o: np.ndarray
    step_q: np.ndarray
    step_k: np.ndarray
    step_v: np.ndarray
    seed: int
    reference: np.ndarray | None = None


# -- input ----------------------------------------------------------------------------------
def lab_input() -> LabInput:
    """Numbers (random from a seed, edited in tables) or a sentence's Q, K, V in minilm-l6."""
    source = st.segmented_control("Input", SOURCES, default=SOURCES[0], key="lab_source", required=True)
    if source == SOURCES[0]:
        return _numbers_input()
    return _sentence_input()


def _numbers_input() -> LabInput:
    c = st.columns(5)
    n_q = c[0].number_input("Queries", 1, 12, 4, key="lab_nq")
    n_k = c[1].number_input("Keys", 2, 12, 6, key="lab_nk", help="Keys = queries: self-attention; "
                            "a different number: queries from another sequence (encoder-decoder attention).")
    d = c[2].number_input("Width d", 1, 8, 4, key="lab_d", help="Columns of Q, K and V (d_k = d_v = d).")
    divisors = [h for h in range(1, d + 1) if d % h == 0]
    heads = c[3].selectbox("Heads (multi-head)", divisors, index=min(1, len(divisors) - 1), key="lab_heads",
                           help="The Multi-head tab cuts the d columns into this many heads.")
    seed = c[4].number_input("Seed", 0, 10_000, 0, key="lab_seed")
    rng = np.random.default_rng(seed)
    q, k, v = rng.normal(size=(n_q, d)), rng.normal(size=(n_k, d)), rng.normal(size=(n_k, d))
    st.caption("Edit any number; a new size or seed draws fresh ones.")
    cols = st.columns(3)
    edited = [_edit(name, m, labels, cols[i], key=f"lab_{name}_{n_q}_{n_k}_{d}_{seed}")
              for i, (name, m, labels) in enumerate((("Q", q, _labels("q", n_q)), ("K", k, _labels("k", n_k)),
                                                     ("V", v, _labels("k", n_k))))]
    q, k, v = edited
    w_o = rng.normal(0, 1 / np.sqrt(d), (d, d))
    return LabInput(q, k, v, _labels("q", n_q), _labels("k", n_k), heads, w_o, q, k, v, seed)


def _labels(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def _edit(name: str, m: np.ndarray, labels: list[str], col, key: str) -> np.ndarray:
    frame = pd.DataFrame(np.round(m, 2), index=labels, columns=[f"d{j}" for j in range(m.shape[1])])
    with col:
        st.markdown(f"**{name}**")
        out = st.data_editor(frame, key=key, num_rows="fixed", width="stretch")
    values = out.to_numpy(dtype=np.float64, na_value=np.nan)
    if not np.isfinite(values).all():
        row = int(np.argwhere(~np.isfinite(values))[0][0])
        raise AttnvizError(f"{name} has an empty or invalid cell in row {labels[row]}: type a number there.")
    return values


@st.cache_data(max_entries=16, show_spinner=False)
def _sentence_qkv(_model, text: str, layer: int):  # the model is always LAB_MODEL: not part of the key
    return bert_layer_qkv(_model, text, layer)


def _sentence_input() -> LabInput:
    c1, c2, c3 = st.columns([4, 1, 1])
    text = c1.text_input("Sentence", DEFAULT_SENTENCE, key="lab_sentence", max_chars=200)
    layer = c2.number_input("Layer", 0, 5, 0, key="lab_layer", help="The hidden states entering this layer, "
                            "through its query, key and value projections.")
    model = get_model(LAB_MODEL)  # fetched on first use, with a progress bar
    with st.spinner("Reading the sentence…"):
        x = _sentence_qkv(model, text, int(layer))
    head = c3.number_input("Head", 0, x.n_heads - 1, 0, key="lab_head")
    d_head = x.q.shape[1] // x.n_heads
    cols = slice(head * d_head, (head + 1) * d_head)
    st.caption(f"{len(x.tokens)} tokens; each head's queries, keys and values have {d_head} numbers "
               f"(columns {cols.start}-{cols.stop - 1} of the layer's {x.q.shape[1]}).")
    with st.expander(f"Q, K, V of head {head}"):
        for name, m in (("Q", x.q), ("K", x.k), ("V", x.v)):
            st.markdown(f"**{name}**")
            st.dataframe(pd.DataFrame(np.round(m[:, cols], 3), index=x.tokens), height=200)
    return LabInput(x.q, x.k, x.v, x.tokens, x.tokens, x.n_heads, x.w_o, x.q[:, cols], x.k[:, cols], x.v[:, cols],
                    seed=0, reference=x.reference)


# -- the variant --------------------------------------------------------------------------
def variant_options(n_keys: int, d: int, seed: int) -> dict:
    """Score, span, selection and temperature: keyword options of mechanics.attention."""
    c1, c2 = st.columns(2)
    score = c1.segmented_control("Score", mech.SCORES, default="scaled", format_func=SCORE_LABELS.get,
                                 key="lab_score", required=True)
    span = c2.segmented_control("Span", ("global", "local"), default="global", key="lab_span", required=True,
                                format_func={"global": "global (every key)", "local": "local window"}.get)
    c3, c4 = st.columns(2)
    selection = c3.segmented_control("Selection", mech.SELECTIONS, default="soft", format_func=SELECTION_LABELS.get,
                                     key="lab_selection", required=True)
    temperature = c4.select_slider("Temperature τ", TEMPERATURES, value=1.0, key="lab_temperature",
                                   help="Scores are divided by τ: below 1 sharpens the softmax, above 1 flattens it.")
    options = dict(score=score, temperature=float(temperature), selection=selection)
    if span == "local":
        options["window"] = c2.slider("Window w (keys with |i − j| ≤ w)", 0, max(n_keys - 1, 0),
                                      min(1, n_keys - 1), key="lab_window")
    if selection == "top-k":
        options["top"] = c3.slider("k", 1, n_keys, min(2, n_keys), key="lab_top")
    if score == "additive":
        options["additive"] = mech.Additive.random(d, d, d, seed)
    return options


# -- the steps ------------------------------------------------------------------------------
def show_steps(inp: LabInput, options: dict) -> mech.Steps:
    """Each step as a matrix with its formula beside it, then the output and its breadth."""
    s = mech.attention(inp.step_q, inp.step_k, inp.step_v, **options)
    q_lab, k_lab = inp.query_labels, inp.key_labels
    d = inp.step_q.shape[1]
    tau = options["temperature"]
    score = options["score"]
    if score == "additive":
        _step("1. Scores", r"S_{ij} = v^\top \tanh(W_q\, q_i + W_k\, k_j)",
              "Each query-key pair goes through a small one-layer network (W_q, W_k, v: random here, "
              "learned in a real model).", s.scores, q_lab, k_lab)
    else:
        _step("1. Scores", r"S = Q K^\top,\quad S_{ij} = q_i \cdot k_j",
              "How much each query's direction agrees with each key's.", s.scores, q_lab, k_lab)
    divisor = (np.sqrt(d) if score == "scaled" else 1.0) * tau
    formula = (rf"S' = \frac{{S}}{{\sqrt{{d_k}}\,\tau}} = \frac{{S}}{{\sqrt{{{d}}} \cdot {tau:g}}}" if score == "scaled"
               else rf"S' = \frac{{S}}{{\tau}} = \frac{{S}}{{{tau:g}}}")
    why = ("Dividing by √d_k keeps the scores' spread the same whatever the width, so the softmax does "
           "not saturate." if score == "scaled" else "No √d_k here: with wide vectors the scores grow and "
           "the softmax turns nearly hard.") if score != "additive" else "tanh bounds each term, so no √d_k."
    _step("2. Scaling", formula, f"{why} Scores divided by {divisor:.3g} in all.", s.scaled, q_lab, k_lab)
    window = options.get("window")
    mask_formula = (r"S''_{ij} = S'_{ij} + M_{ij},\quad M_{ij} = 0" if window is None else
                    rf"S''_{{ij}} = S'_{{ij}} + M_{{ij}},\quad M_{{ij}} = \begin{{cases}}0 & |i-j| \le {window}\\"
                    r"-\infty & \text{otherwise}\end{cases}")
    _step("3. Mask", mask_formula, "Global attention masks nothing." if window is None else
          f"Each query keeps the keys at most {window} positions away; the others get weight 0.",
          s.masked, q_lab, k_lab)
    _step("4. Softmax", r"A_{ij} = \frac{e^{S''_{ij}}}{\sum_{j'} e^{S''_{ij'}}}", "Each row becomes a distribution "
          "over the keys: positive, summing to 1.", s.soft, q_lab, k_lab, weights=True)
    if options["selection"] != "soft":
        formula = (r"A^{\text{hard}}_{ij} = [\,j = \arg\max_{j'} A_{ij'}\,]" if options["selection"] == "hard" else
                   rf"A^{{(k)}}_{{ij}} = \frac{{A_{{ij}}\,[j \in \text{{top}}_{{{options['top']}}}(A_i)]}}"
                   rf"{{\sum_{{j' \in \text{{top}}_{{{options['top']}}}(A_i)}} A_{{ij'}}}}")
        _step("4b. Selection", formula, "Hard attention keeps one key per query; top-k keeps the k largest "
              "weights and rescales them to sum to 1.", s.weights, q_lab, k_lab, weights=True)
    out_labels = [f"d{j}" for j in range(s.output.shape[1])]
    _step("5. Weighted sum", r"O = A V,\quad o_i = \sum_j A_{ij} v_j", "Each output row mixes the value rows "
          "by its weights.", s.output, q_lab, out_labels, col_title="dimension")
    left, right = st.columns([2, 3])
    with left:
        st.markdown("**Breadth**")
        st.latex(r"H_i = -\sum_j A_{ij} \log A_{ij}")
        st.caption(f"The entropy of each row in nats: 0 when a query looks at one key, log(keys) = "
                   f"{np.log(max(len(k_lab), 1)):.2f} when it spreads evenly over all {len(k_lab)}. Mean "
                   f"{s.entropy.mean():.2f} nats, {s.entropy_norm.mean():.0%} of the widest possible.")
    show_chart(viz.row_bars(s.entropy, q_lab, title="Entropy of each query's weights",
                            xmax=float(np.log(max(len(k_lab), 2))), axis_title="nats"), "lab_entropy",
               key="lab_entropy", where=right)
    return s


def _step(title: str, formula: str, text: str, values: np.ndarray, rows: list[str], cols: list[str], *,
          weights: bool = False, col_title: str = "key") -> None:
    left, right = st.columns([2, 3])
    with left:
        st.markdown(f"**{title}**")
        st.latex(formula)
        st.caption(text)
    name = title.split(". ", 1)[1].lower().replace(" ", "_")  # "4. Softmax" -> "softmax"
    show_chart(viz.matrix(values, rows, cols, weights=weights, col_title=col_title), f"lab_{name}",
               key=f"lab_step_{name}", where=right)


def compare_table(inp: LabInput, options: dict) -> None:
    """Each choice changed on its own: breadth (entropy) and how much the output moves."""
    d = inp.step_q.shape[1]
    additive = options.get("additive") or mech.Additive.random(d, d, d, inp.seed)
    changes = [(f"score: {SCORE_LABELS[s]}", {"score": s, "additive": additive})
               for s in mech.SCORES if s != options["score"]]
    changes.append(("span: global", {"window": None}) if options.get("window") is not None else
                   ("span: local, w = 1", {"window": 1}))
    changes += [(f"selection: {SELECTION_LABELS[s]}", {"selection": s, "top": options.get("top", 2)})
                for s in mech.SELECTIONS if s != options["selection"]]
    changes += [(f"temperature τ = {t:g}", {"temperature": t}) for t in (0.25, 4.0) if t != options["temperature"]]
    rows = mech.compare(inp.step_q, inp.step_k, inp.step_v, options, changes)
    table = pd.DataFrame([{"variant": r.label, "entropy (nats)": r.entropy, "breadth": r.breadth,
                           "output change": r.output_change} for r in rows])
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "breadth": st.column_config.ProgressColumn("breadth", min_value=0.0, max_value=1.0, format="%.2f",
                                                   help="Mean entropy / log(keys seen): 0 = one key, 1 = uniform."),
        "entropy (nats)": st.column_config.NumberColumn(format="%.3f"),
        "output change": st.column_config.NumberColumn(format="%.3f", help="‖O − O_chosen‖ / ‖O_chosen‖")})


# -- multi-head -----------------------------------------------------------------------------
def show_multi_head(inp: LabInput, options: dict) -> None:
    """Split into heads, attend in each, concatenate, project; for a sentence, the check against
    the model's own attention."""
    d = inp.q.shape[1]
    d_head = d // inp.n_heads
    head_options = dict(options)
    if options["score"] == "additive":
        head_options["additive"] = mech.Additive.random(d_head, d_head, d_head, inp.seed)
    mh = mech.multi_head(inp.q, inp.k, inp.v, inp.n_heads, inp.w_o, **head_options)
    st.latex(r"\text{head}_h = \text{attention}(Q_h, K_h, V_h),\quad "
             r"O = [\text{head}_1; \dots; \text{head}_H]\, W_O")
    st.caption(f"Q, K and V ({d} columns) are cut into {inp.n_heads} heads of {d_head} columns; each head "
               "attends on its own, the outputs are put side by side and mixed by W_O "
               f"({'the model’s own' if inp.reference is not None else 'random from the seed'}).")
    show_chart(viz.head_grid(mh.weights[None], inp.query_labels, inp.key_labels, title="Weights of each head"),
               "lab_heads", key="lab_heads_grid")
    if inp.reference is not None and _is_bert_variant(options):
        gap = float(np.abs(mh.weights - inp.reference).max())
        st.success(f"These weights are minilm-l6's own: the largest difference from the model's attention in "
                   f"this layer is {gap:.1e}.")
    c1, c2 = st.columns(2)
    dims = [f"d{j}" for j in range(d)]
    show_chart(viz.matrix(mh.concat, inp.query_labels, dims, title="Heads side by side", col_title="dimension"),
               "lab_concat", key="lab_concat", where=c1)
    show_chart(viz.matrix(mh.output, inp.query_labels, dims, title="Projected output O", col_title="dimension"),
               "lab_mh_out", key="lab_mh_out", where=c2)


def _is_bert_variant(options: dict) -> bool:
    """Whether the options are those a BERT layer uses itself: scaled, global, soft, τ = 1."""
    return (options["score"] == "scaled" and options.get("window") is None and options["selection"] == "soft"
            and options["temperature"] == 1.0)


# -- cost -----------------------------------------------------------------------------------
def cost_view() -> None:
    """Formulas for global, local and top-k attention as n grows, and a measured run on demand."""
    c = st.columns(4)
    d = c[0].select_slider("Head dimension d", (16, 32, 64, 128), 64, key="lab_cost_d")
    window = c[1].select_slider("Window w", (8, 16, 32, 64, 128, 256), 64, key="lab_cost_w")
    top = c[2].select_slider("k (top-k)", (8, 16, 32, 64, 128), 32, key="lab_cost_k")
    # a hosted demo's $ATTNVIZ_MAX_TOKENS bounds the longest n (512, a few milliseconds, is always offered)
    offered = [n for n in COST_LENGTHS[2:] if n <= token_cap(COST_LENGTHS[-1])] or COST_LENGTHS[2:3]
    longest = c[3].select_slider("Longest n", offered, min(4096, offered[-1]), key="lab_cost_n",
                                 format_func=lambda n: f"{n:,}",
                                 help="Up to 16,384 takes about a minute." if offered[-1] == COST_LENGTHS[-1] else
                                 f"This server measures up to {offered[-1]:,}.")
    lengths = [n for n in COST_LENGTHS if n <= longest]
    settings = dict(d=d, window=window, top=top)
    if st.button("Measure on this machine", icon=":material/timer:", key="lab_cost_run"):
        key = ("lab_cost", tuple(lengths), d, window, top)
        take_cancelled(key)  # a click asks for it again
        need = max(min(cost.expected_bytes(m, n, d, window), cost.MEMORY_BUDGET) for m in cost.METHODS for n in lengths)
        with friendly_errors():
            try:
                with job("Measuring attention's cost", int(need), key=key) as update:
                    st.session_state["lab_cost"] = (settings, cost.measure(lengths, d=d, window=window, top=top,
                                                                           progress=update))
            except cost.Busy as e:  # another visitor's run: not an error of this one (said outside the job's box,
                st.info(str(e))     # which is emptied when the job ends)
    saved_settings, measured = st.session_state.get("lab_cost", (None, []))
    if saved_settings != settings:
        measured = []
    formula = {m: ([mech.cost_formula(n, m, d, window, top).flops for n in lengths],
                   [mech.cost_formula(n, m, d, window, top).bytes for n in lengths]) for m in mech.COST_METHODS}
    rate = _throughput(measured, d, window, top)
    show_chart(viz.cost_chart(lengths, formula, [p for p in measured if p.n <= longest], throughput=rate,
                              title="One attention head, float32"), "lab_cost", key="lab_cost_chart")
    if measured:
        st.caption(f"Dashed: the formulas, flops turned into seconds at {rate / 1e9:.1f} GFLOP/s, the speed of "
                   "the largest measured global run. Solid: measured here, one CPU thread "
                   f"({sum(p.skipped is None for p in measured)} runs).")
        _cost_table(measured, d, window, top, rate)
    else:
        st.caption(f"Dashed: the formulas, flops turned into seconds at an assumed {rate / 1e9:.0f} GFLOP/s. "
                   "Press the button to measure them here.")
    st.markdown(COST_NOTES)


def _throughput(measured: list, d: int, window: int, top: int) -> float:
    """flop/s of the largest measured global run (1e10 before any run)."""
    runs = [p for p in measured if p.method == "global" and p.seconds]
    if not runs:
        return 1e10
    p = max(runs, key=lambda p: p.n)
    return mech.cost_formula(p.n, "global", d, window, top).flops / p.seconds


def _cost_table(measured: list, d: int, window: int, top: int, rate: float) -> None:
    rows = []
    for p in measured:
        f = mech.cost_formula(p.n, p.method if p.method != "fused" else "global", d, window, top)
        rows.append({"method": p.method, "n": p.n, "time (ms)": None if p.seconds is None else p.seconds * 1e3,
                     "time / formula": None if p.seconds is None else p.seconds * rate / f.flops,
                     "memory (MB)": None if p.peak_bytes is None else p.peak_bytes / 1e6,
                     "memory / formula": None if p.peak_bytes is None else p.peak_bytes / f.bytes,
                     "note": p.skipped or ""})
    with st.expander("Measured numbers"):
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config={
            c: st.column_config.NumberColumn(format="%.3g") for c in
            ("time (ms)", "time / formula", "memory (MB)", "memory / formula")})


COST_NOTES = """
**Where the measured curves leave the formulas, and why**

- **Short sequences cost more than the formula says.** Each call pays a fixed price (Python,
  dispatching the operations, allocating the outputs) of tens of microseconds; below a few
  hundred tokens that price, not the n² work, is most of the time, so the measured curves start flat.
- **Global memory is about twice n².** The formula counts one n × n matrix; the plain code holds
  two at its peak, the scores and the softmax weights.
- **Local attention holds about five times n(2w + 1) numbers.** It is computed block by block
  (as Longformer does): each block of w queries scores its own block and both neighbours, so
  its scores and weights are 3w wide instead of 2w + 1, and it keeps padded copies of K and V,
  each n × d, as large as the scores when d is near 2w. Still linear in n: the price of
  regular, fast matrix products instead of a gather per query.
- **Top-k is not cheaper in time.** Every pair must be scored to find the k best keys, so time
  still grows as n², and picking the k largest of n scores per query costs about as much again
  as scoring them. This straightforward code also holds the whole n × n score matrix before it
  picks, so its memory follows global; only the weighted sum shrinks to n·k. Keeping memory at
  n·k needs the scores computed in slices of queries.
- **The fused kernel has global's time but linear memory.** torch's
  `scaled_dot_product_attention` computes exact global attention tile by tile (FlashAttention's
  idea) and never holds the n × n matrix: the n² memory of the formula is a property of the
  plain code, not of attention.
- **Large matrices run slower per flop** once they no longer fit in the CPU caches, and a busy
  machine adds noise: the median of several runs is shown.
"""
