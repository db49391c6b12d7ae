"""Streamlit blocks of "Which picture to trust": the input, the explanation of one output by
seven methods, the faithfulness scoreboard beside the maps (text highlighting, or one overlay
per method on the photo), and the scoreboard averaged over many inputs.

Explanations are cached across sessions per (model, input, output, size, methods) in a cache
bounded by bytes (``EXPLANATIONS``): moving a display control never reruns the model. An
explanation not in the cache runs as a job of the visitor (attnviz.jobs), one per input.
"""
from __future__ import annotations

import hashlib

import streamlit as st

import attnviz.families as families
import attnviz.limits as limits
from attnviz.analysis import faithfulness as faith
from attnviz.analysis.tokens import token_axis
from attnviz.cache import ByteCache
from attnviz.explain import DEFAULT_METHODS, METHODS, Explanation, estimate_bytes, explain
from attnviz.inputs import clean_text, open_image
from attnviz.models.bundled import DEFAULT_IMAGE_MODEL, DEFAULT_TEXT_MODEL
from attnviz.models.loader import Model
from attnviz.samples import SAMPLES, sample_bytes
from attnviz.ui.charts import show_chart
from attnviz.ui.common import cached_job, progress_bar
from attnviz.ui.inputs import MANY_TEXTS, TEXT, input_size_picker, photo_input
from attnviz.ui.models import get_model, model_picker
from attnviz.ui.overlay import style_controls
from attnviz.ui.views import Photo
from attnviz.viz import explain as viz

# by the output explained (the family's OUTPUT, attnviz.families)
DEFAULT_TEXTS = {"next token": "The keys to the old cabinet are on the", "target": MANY_TEXTS[0],
                 "own": "1 2 4 1 3 0 7 9"}  # a Build-your-own agreement model: the key of the keys [MASK] old .
DEFAULT_TEXT = "The keys to the old cabinet are on the table."
MAX_MANY = 64  # inputs averaged over at most
EXPLAIN_CACHE_SHARE = 16  # explanations keep at most this share of the result cache's budget


def has_class_head(model: Model) -> bool:
    """Whether the model ends in a classification head (its class is ``...For...Classification``)."""
    name = type(model.net).__name__
    return "For" in name and name.endswith("Classification")


def target_input(model: Model) -> str | None:
    """The output to explain, where the family lets the user choose it (None: the default)."""
    output = families.of(model).OUTPUT
    if output == "next token":
        label, hint = "Next token to explain", "empty: the model's top prediction; one token, e.g. ' table'"
    elif output == "target":
        label, hint = "Target to explain", "empty: the model writes its own"
    elif has_class_head(model):
        label, hint = "Class to explain", "empty: the top class; a label or an index"
    else:
        return None
    return st.text_input(label, key=f"explain_target_{model.family}", placeholder=hint) or None


def explanation_bytes(e: Explanation) -> int:
    """What an explanation holds: its scores and the picture the model saw."""
    return sum(v.nbytes for v in e.scores.values()) + (e.image.nbytes if e.image is not None else 0) + 1000


EXPLANATIONS: ByteCache[Explanation] = ByteCache(lambda: limits.budget(limits.CACHE_BYTES) // EXPLAIN_CACHE_SHARE,
                                                 explanation_bytes)


def method_choice() -> tuple[str, ...]:
    """The methods explained: DEFAULT_METHODS, and value zeroing when its checkbox is ticked."""
    slow = st.checkbox("Include value zeroing (slow)", key="explain_value_zeroing",
                       help="Value zeroing runs every layer once per input token (a 12-layer model on 20 tokens: "
                            "240 layer passes, seconds on a CPU; at most 512 tokens); the other mixing methods "
                            "(attention-norm, ALTI, GlobEnc) take one pass.")
    return DEFAULT_METHODS + ("value_zeroing",) * slow


def run_explain(name: str, model: Model, input, digest: str, *, target: str | None = None, size: int | None = None,
                methods: tuple[str, ...] = DEFAULT_METHODS) -> Explanation:
    """The explanation of ``input`` (named by ``digest``) by model ``name``, cached across
    sessions per (model, input, output, size, methods); one not in the cache runs as a job of
    this visitor (``ui.common.job``: its place in line, a Cancel button)."""
    need = estimate_bytes(model, input, size=size, methods=tuple(methods))
    return cached_job(EXPLANATIONS, (name, digest, target, size, tuple(methods)), f"Explaining with {name}", need,
                      lambda progress: explain(model, input, target=target, size=size, methods=tuple(methods),
                                               progress=progress))


def text_digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def text_choice() -> tuple[str, Model, str, str | None]:
    """Model on the left, the text and the output to explain on the right:
    (model name, model, text, target)."""
    left, right = st.columns([1, 2], gap="large")
    with left:
        name = model_picker(TEXT, DEFAULT_TEXT_MODEL)
        model = get_model(name)
    with right:
        default = DEFAULT_TEXTS.get(families.of(model).OUTPUT, DEFAULT_TEXT)
        text = st.text_area("Text", value=default, height=90, key=f"explain_text_{model.family}",
                            help="Press Ctrl+Enter (or click outside) to explain it.")
        target = target_input(model)
    return name, model, clean_text(text), target


def image_choice() -> tuple[str, Model, Photo, int]:
    """Model and input size on the left, the photo on the right: (name, model, photo, size)."""
    settings, source = st.columns([1, 2], gap="large")
    with settings:
        name = model_picker(("image",), DEFAULT_IMAGE_MODEL)  # the families that read a photo alone
        model = get_model(name)
        size = input_size_picker(model, smallest=True)  # blank-out costs a pass per patch
    with source:
        photo = photo_input()
    return name, model, photo, size


def output_line(e: Explanation) -> None:
    """What was explained, in one line, and the blank-out replacement."""
    out = e.output
    what = out["what"]
    if "token" in out:
        what += f": “{out['token']}” (log p = {out['log_prob']:.3f}, {out['chosen']})"
    elif "class" in out:
        what += f": {out['class']} (log p = {out['log_prob']:.3f}, {out['chosen']})"
    elif "target" in out:
        what += f": “{out['target']}” (log p = {out['log_prob']:.2f}, {out['chosen']})"
    blank = out["blankout"]
    st.markdown(f"**Explained:** {what}. **Blank-out:** {blank['measure']}, replaced by `{blank['replacement']}`.")
    for w in e.warnings:
        st.warning(w)
    for method, why in e.skipped.items():
        st.info(f"{method} is left out on this input: {why}.")


def scoreboard_block(e: Explanation, spread: dict[str, faith.Agreement] | None = None, key: str = "explain_board") -> None:
    """The Spearman correlation of every method with blank-out on this input (and over many)."""
    fig = viz.scoreboard(e.spearman(), spread, title="Which picture follows blank-out?", output=e.output)
    show_chart(fig, f"{e.model}_faithfulness", key=key)
    st.caption(f"Spearman's rank correlation with blank-out over the {sum(not s for s in e.special)} non-special "
               f"{'patches' if e.kind == 'image' else 'tokens'}; 1 = the same ranking, 0 = unrelated, "
               "− = reversed. “—”: undefined (a constant ranking).")


def highlight_block(e: Explanation) -> None:
    """The input as running text, each token's (or word's) background by the chosen methods'
    scores, one paragraph per method."""
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    methods = c1.multiselect("Highlight by", list(e.scores), default=list(e.scores), key="explain_highlight",
                             format_func=lambda m: viz.method_label(m, e.output))
    merge = c2.toggle("Merge sub-words into words", key="explain_merge",
                      help="A word's score is the sum of its tokens' scores.")
    axis = token_axis(e.tokens, e.special, e.word_spans, merge=merge)
    special = [e.special[s] for s, _ in axis.spans]
    pieces = viz.running_text(e.tokens, e.special, axis)
    rho = e.spearman()
    for m in methods:
        caption = viz.method_label(m, e.output) + ("" if m == "blankout" else f" · ρ {viz.rho_text(rho.get(m))}")
        st.markdown(viz.highlight_html(pieces, viz.unit_scores(e.scores[m], axis), special, caption=caption),
                    unsafe_allow_html=True)
    st.caption("Red: the score is positive, blue: negative; the stronger the colour, the larger |score| against the "
               "largest of this text. Hover a word for its exact value. Grey: special tokens (never blanked).")


def overlays_block(e: Explanation, photo: Photo) -> None:
    """One overlay per method on the photo, side by side."""
    with st.expander("Overlay style"):
        style = style_controls()
    fig = viz.method_overlays(photo.display, e.grid, e.scores, e.spearman(), style)
    show_chart(fig, f"{e.model}_methods", key="explain_overlays")
    st.caption("Each map is scaled on its own (its minimum to its top percentile); CLS and registers have no place "
               "on the photo. Gradient methods are signed: dark is negative or small.")


def many_inputs(kind: str) -> list[tuple[str, object]]:
    """(digest, input) for the many-inputs scoreboard: the example texts (editable, one per
    line) or the sample photos."""
    if kind == "image":
        return [(hashlib.sha1(sample_bytes(n)).hexdigest(), open_image(sample_bytes(n), f"{n}.png")) for n in SAMPLES]
    typed = st.text_area("Texts, one per line", "\n".join(MANY_TEXTS), height=150, key="explain_many_texts")
    texts = [clean_text(t) for t in typed.splitlines() if t.strip()][:MAX_MANY]
    return [(text_digest(t), t) for t in texts]


def many_block(kind: str, name: str, model: Model, e: Explanation, *, size: int | None = None) -> None:
    """Each method's correlation with blank-out averaged over many inputs (mean ± std)."""
    if not st.toggle("Average over many inputs", key="explain_many",
                     help="Every input is explained by the same model and methods, and each method's correlation "
                          "with blank-out is averaged."):
        return
    slow = st.checkbox("Include integrated gradients (slower)", key="explain_many_ig")
    inputs = many_inputs(kind)
    if not inputs:
        st.info("Add a few texts to average over.")
        return
    methods = tuple(m for m in METHODS if (m in e.scores or m in e.skipped) and (slow or m != "integrated_gradients"))
    per_input = []
    with progress_bar(f"Explaining {len(inputs)} inputs…") as update:
        for i, (digest, value) in enumerate(inputs):
            per_input.append(run_explain(name, model, value, digest, size=size, methods=methods).spearman())
            update((i + 1) / len(inputs), f"Explaining {len(inputs)} inputs… {i + 1}/{len(inputs)}")
    what = "sample photos" if kind == "image" else "texts"
    spread = faith.summarise(per_input)
    scoreboard_block(e, spread, key="explain_board_many")
    st.caption(f"Orange: the mean over {len(inputs)} {what}, bars ± 1 standard deviation; each input's own output "
               "is explained (its top prediction, class or own embedding)"
               + (", and its routes followed at its own threshold (about 5% of the edges kept)." if "routes" in spread
                  else "."))
