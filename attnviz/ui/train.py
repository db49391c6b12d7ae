"""Streamlit blocks of "Build your own": the design form of a toy model or a classifier,
training with a live curve and a stop button, the held-out results of a classifier (accuracy,
confusion, attention on held-out texts and images), inspecting a toy model's answers and
attention, saving, and uploading.

Training runs in the script itself, a few steps between chart updates; its state (model,
optimizer, history: a :class:`TrainRun`) lives in the session. Any click reruns the script,
which interrupts the loop between two steps; the rerun then carries on from the same state
until the target step, so Stop only has to lower the target to the steps already done.
"""
from __future__ import annotations

import hashlib
import html
import io
import secrets
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

import attnviz
import attnviz.limits as limits
from attnviz.analysis.flow import rollout
from attnviz.capture import estimate_bytes
from attnviz.errors import AttnvizError
from attnviz.inputs import MAX_MODEL_UPLOAD_MB
from attnviz.lab import custom, datasets, tasks
from attnviz.lab.classify import ARCHS, TEXT_ARCHS, Classifier
from attnviz.lab.custom import ATTENTIONS, CustomConfig, CustomNet
from attnviz.lab.toy_tasks import TASKS, VOCAB, example, target
from attnviz.lab.train import Data, Evaluation, Trainer, evaluate, evaluate_classifier
from attnviz.models import upload
from attnviz.ui.charts import show_chart
from attnviz.ui.common import for_visitor, job, take_cancelled
from attnviz.ui.home import PAGES
from attnviz.ui.inputs import open_with
from attnviz.ui.models import add_own_model, forget_own_model, get_model, own_models
from attnviz.viz import classify as cviz
from attnviz.viz import mechanics as viz

RUN_KEY = "train_run"
CLASSIFIER_RUN_KEY = "train_cls_run"
KINDS = {"toy": "a sequence-to-sequence toy model", "text": "a text classifier", "image": "an image classifier"}
SHOWN_EXAMPLES = 12  # held-out texts or images shown with their attention
PICK_KEY = "train_inspect"  # widget key of the model being inspected
OWNER_KEY = "train_owner"  # this session's opaque owner id of saved models (see owner())
REDRAW_S = 0.5  # seconds between two updates of the live chart
JUST_TRAINED = "the model trained above"
OPEN_TEXT = (("pages/text.py", "Open in the text explorer", ":material/notes:"),
             ("pages/flow.py", "Open in attention flow", ":material/account_tree:"))
OPEN_IMAGE = (("pages/image.py", "Open in the image explorer", ":material/image:"),
              ("pages/flow.py", "Open in attention flow", ":material/account_tree:"))
TASK_HINTS = {"reverse": "Reverse: position i reads position n − 1 − i, an anti-diagonal.",
              "copy": "Copy: each position reads itself, the diagonal.",
              "sort": "Sort: each position looks for the digits that belong there.",
              "histogram": "Histogram: each position gathers the positions that hold its digit.",
              "agreement": "Agreement: the masked verb (0) must find its subject (2 = key, 3 = keys) past the "
                           "attractors; 1 the, 4 of, 5 is, 6 are, 7 old, 8 that, 9 '.'."}


@dataclass
class TrainRun:
    """A training in this session: the trainer (model, optimizer, history, and a classifier's
    data), the step it runs to, and its held-out accuracy (and a classifier's evaluation) once
    it stops."""

    trainer: Trainer
    target: int
    held_out: float | None = None
    evaluation: Evaluation | None = None

    @property
    def net(self) -> CustomNet | Classifier:
        return self.trainer.net

    @property
    def data(self) -> Data | None:
        return self.trainer.data

    def title(self) -> str:
        cfg = self.net.config
        if isinstance(self.net, CustomNet):
            return (f"**{cfg.task}**, {cfg.attention} attention, {cfg.n_layers} × {cfg.n_heads} heads, "
                    f"d_model {cfg.d_model}")
        return f"**{cfg.arch}** on {cfg.task}, {cfg.n_classes} classes, d_model {cfg.d_model}"


def kind_picker() -> str:
    """What to build: a toy model, a text classifier or an image classifier."""
    return st.radio("Build", list(KINDS), key="train_kind", horizontal=True, format_func=lambda k: KINDS[k])


# -- design and training --------------------------------------------------------------------
def design_form() -> tuple[CustomConfig, int, int]:
    """The architecture and the toy task; returns (config, steps, seed)."""
    c = st.columns(4)
    task = c[0].selectbox("Task", list(TASKS), index=list(TASKS).index("reverse"), key="train_task",
                          format_func=lambda t: f"{t}: {TASKS[t]}")
    attention = c[1].selectbox("Attention", list(ATTENTIONS), key="train_attention",
                               format_func=lambda a: f"{a}: {ATTENTIONS[a]}")
    length = c[2].slider("Sequence length", 4, 16, 12, key="train_length")
    window = c[3].slider("Window w (local)", 1, 15, 2, key="train_window", disabled=attention != "local",
                         help="Local attention sees the keys with |i − j| ≤ w; each layer widens the reach by w.")
    c = st.columns(4)
    layers = c[0].slider("Layers", 1, 4, 2, key="train_layers")
    heads = c[1].select_slider("Heads", (1, 2, 4, 8), 4, key="train_heads")
    d_model = c[2].select_slider("d_model", (16, 32, 64, 128), 64, key="train_d_model",
                                 help="Width of the model; each head gets d_model / heads of it.")
    steps = c[3].number_input("Steps", 1, 5000, 300, step=50, key="train_steps",
                              help="Training stops after this many steps of 64 random examples, or at Stop.")
    seed = 0
    config = CustomConfig(task=task, length=length, d_model=d_model, n_heads=heads, n_layers=layers,
                          attention=attention, window=window)
    if attention == "local" and task in ("reverse", "sort") and layers * window < length - 1:
        st.info(f"With {layers} layer(s) of window {window}, a position reaches at most {layers * window} "
                f"positions away, but {task} needs {length - 1}: expect it to fail, which is the lesson.")
    return config, int(steps), seed


def training(config: CustomConfig, steps: int, seed: int) -> TrainRun | None:
    """Train and Stop buttons, the live loss/accuracy chart, and the training of a toy model."""
    return _training(lambda: Trainer(CustomNet(config, seed=seed), seed=seed), steps, RUN_KEY, "train")


def _training(make: Callable[[], Trainer], steps: int, key: str, prefix: str) -> TrainRun | None:
    """Train (a new run from ``make``) and Stop buttons, the live chart, and the training
    itself, for the run kept in the session under ``key``; widget keys start with ``prefix``."""
    c1, c2, c3 = st.columns([1, 1, 4], vertical_alignment="center")
    run: TrainRun | None = st.session_state.get(key)
    if c1.button("Train", type="primary", icon=":material/play_arrow:", key=f"{prefix}_start"):
        run = TrainRun(make(), target=steps)
        st.session_state[key] = run
    if c2.button("Stop", icon=":material/stop:", key=f"{prefix}_stop") and run is not None:
        run.target = len(run.trainer.history)
    if run is None:
        c3.caption("Press Train: a few seconds on the CPU for the default design.")
        return None
    status, chart = c3.empty(), st.empty()
    if take_cancelled((prefix, id(run))):  # Cancel while it trained: as Stop
        run.target = len(run.trainer.history)
    if len(run.trainer.history) < run.target:
        run.held_out = None
    if run.held_out is None:  # training and the held-out evaluation: one job, each training step a step
        last = [0.0]
        first, remaining = len(run.trainer.history), run.target - len(run.trainer.history)
        with job(f"Training {run.title()}", run.trainer.memory_bytes(), key=(prefix, id(run))) as progress:
            def on_step(step) -> None:
                if time.monotonic() - last[0] > REDRAW_S or step.step == run.target:
                    _draw(run, status, chart)
                    last[0] = time.monotonic()
                progress((step.step - first) / remaining, f"Training: step {step.step} of {run.target}")

            run.trainer.run(remaining, on_step=on_step)
            if run.data is None:
                run.held_out = evaluate(run.net)
            else:
                run.evaluation = evaluate_classifier(run.net, run.data)
                run.held_out = run.evaluation.accuracy
    _draw(run, status, chart)
    return run


def _draw(run: TrainRun, status, chart) -> None:
    h = run.trainer.history
    if not h:
        status.caption("No steps yet.")
        return
    held = f" · held-out accuracy {run.held_out:.1%}" if run.held_out is not None else ""
    status.markdown(f"{run.title()} · step {h[-1].step} of {run.target} · {h[-1].seconds:.1f} s · "
                    f"batch accuracy {h[-1].accuracy:.1%}{held}")
    title = ("Training: loss and token accuracy on fresh examples" if run.data is None else
             "Training: loss and accuracy on each batch of training examples")
    show_chart(viz.training_chart([s.step for s in h], [s.loss for s in h], [s.accuracy for s in h],
                                  title=title, unit="token" if run.data is None else "example"), "training",
               key=f"train_chart_{len(h)}_{run.held_out is not None}", where=chart.container())


# -- saving and uploading --------------------------------------------------------------------
def owner() -> str:
    """Whom this session's saved models belong to, an opaque id (attnviz.lab.custom.save_owned
    keeps each owner's models apart, numbers their names per owner, and holds each owner to a
    count and a byte budget). A local server has one owner, its user. A hosted one has one per
    visitor: for now a random id kept in this session's state; the hosted mode's visitor id
    (kept by a cookie, so that a visitor's tabs share it) plugs in here."""
    if not limits.hosted():
        return "local"
    return st.session_state.setdefault(OWNER_KEY, secrets.token_hex(16))


def save_model(net: CustomNet | Classifier, name: str) -> str | None:
    """Save ``net`` under ``name`` as this session's owner's; say what was saved (and which of
    the owner's oldest models made room) and return its label, or say why not and return None."""
    try:
        saved = custom.save_owned(net, name, owner())
    except AttnvizError as e:
        st.error(for_visitor(str(e)))
        return None
    for old in saved.removed:
        forget_own_model(f"saved:{old}")
    (st.warning if saved.removed else st.success)(saved.message())
    return add_own_model(saved.folder, "saved")


def save_block(run: TrainRun) -> None:
    """Name and save the model just trained (then it is the one inspected below)."""
    cfg = run.net.config
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    default = custom.free_name(f"{cfg.task}-{cfg.attention}-{cfg.n_layers}x{cfg.n_heads}", custom.owner_dir(owner()))
    name = c1.text_input("Name", default, key="train_name",
                         help="Letters, digits, '-' and '_'; saved models are never overwritten.")
    if c2.button("Save", icon=":material/save:", key="train_save"):
        label = save_model(run.net, name)
        if label is not None:
            st.session_state[PICK_KEY] = label  # the picker below is not drawn yet


def upload_block() -> None:
    """Upload a model (a zip, or its files): a custom one becomes the one inspected below; a
    transformers one can be opened in the other pages. A refused upload is said here, and
    the rest of the page goes on. A hosted server takes one zip (of at most
    MAX_MODEL_UPLOAD_MB), so that what a visitor sends at once is bounded too."""
    one_zip = limits.hosted()
    files = st.file_uploader("A zip of the model folder" if one_zip else
                             "A zip of the model folder, or its files (config.json, *.safetensors, tokenizer files)",
                             type=["zip"] if one_zip else ["zip", "json", "safetensors", "txt", "model"],
                             accept_multiple_files=not one_zip, key="train_upload", max_upload_size=MAX_MODEL_UPLOAD_MB,
                             help="Pickle weights (*.bin, *.pt) are refused; nothing uploaded is run.")
    files = [files] if one_zip and files is not None else files
    if not files:
        return
    ids = tuple(f.file_id for f in files)
    done = st.session_state.get("train_uploaded")
    if done is None or done[0] != ids:  # unpack and load once per upload, not on every rerun
        done = (ids, *_unpack_and_load(files))
        st.session_state["train_uploaded"] = done
    _, extracted, refused = done
    if refused is not None:
        st.error(refused)
        return
    label = add_own_model(extracted.folder)
    model = get_model(label)
    for line in extracted.skipped:
        st.caption(f"Left out: {line}")
    st.success(f"Unpacked a {model.family} model as '{label}' ({', '.join(extracted.files)}); "
               "only this session can see it.")
    if not isinstance(model.net, CustomNet):  # a toy model is inspected below; others open elsewhere
        open_buttons(label, None, image=model.image is not None, key="upload")


def _unpack_and_load(files) -> tuple[upload.Extracted | None, str | None]:
    """(what was unpacked, None) for an upload that unpacks and loads, else (None, why it was
    refused); a model refused at loading has its folder removed. A custom model becomes the
    one inspected below."""
    try:
        with st.spinner("Checking and unpacking…"):
            extracted = upload.extract([(f.name, f.getvalue()) for f in files])
    except AttnvizError as e:
        return None, for_visitor(str(e))
    label = add_own_model(extracted.folder)
    try:
        model = get_model(label)
    except AttnvizError as e:  # e.g. a config.json of absurd sizes, or weights of other shapes
        forget_own_model(label)
        upload.discard(extracted.folder)
        return None, for_visitor(str(e))
    if isinstance(model.net, CustomNet):
        st.session_state[PICK_KEY] = label
    return extracted, None


# -- inspecting and opening elsewhere --------------------------------------------------------
def pick_model(run: TrainRun | None) -> tuple[str | None, CustomNet] | None:
    """The toy model to inspect: (None, the one just trained), or (its label, a toy model this
    session saved or uploaded, or, unless hosted, one saved here before); None when there is
    none yet."""
    for folder in [] if limits.hosted() else custom.saved_models():
        add_own_model(folder, "saved")
    toys = [label for label, folder in own_models().items()
            if custom.is_custom(Path(folder)) and not custom.is_classifier(Path(folder))]
    options = ([JUST_TRAINED] if run is not None and run.trainer.history else []) + toys
    if not options:
        st.caption("Train a model, or upload one, to inspect it here.")
        return None
    if st.session_state.get(PICK_KEY) not in options:
        st.session_state.pop(PICK_KEY, None)
    choice = st.selectbox("Model", options, key=PICK_KEY,
                          help="Models saved or uploaded in this session" + ("." if limits.hosted() else
                               ", and those saved here before (in the store's custom/ folder)."))
    if choice == JUST_TRAINED:
        return None, run.net
    return choice, get_model(choice).net


def inspect(net: CustomNet, name: str) -> str:
    """The model's answer to an input and every head's attention; returns the input text."""
    cfg = net.config
    text = st.text_input("Input digits", example(cfg.task, cfg.length, seed=1), key=f"train_input_{cfg.task}_{cfg.length}",
                         help=f"{cfg.length} digits 0-9 (spaces optional).")
    ids, predicted, attn, warnings = net.run(text)
    for w in warnings:
        st.warning(w)
    right = target(cfg.task, np.array(ids))
    table = pd.DataFrame([[VOCAB[i] for i in ids], [VOCAB[i] for i in predicted], [VOCAB[i] for i in right],
                          ["✓" if p == r else "✗" for p, r in zip(predicted, right)]],
                         index=["input", "answer", "right answer", ""], columns=[str(i) for i in range(len(ids))])
    st.dataframe(table, width="stretch")
    tokens = [f"{i}:{VOCAB[t]}" for i, t in enumerate(ids)]
    st.caption(f"Every head's attention, rows: queries, columns: keys (position:digit). {TASK_HINTS[cfg.task]}")
    show_chart(viz.head_grid(attn, tokens, tokens, row_names=[f"layer {l}" for l in range(cfg.n_layers)]),
               f"{name}_attention", key="train_grid")
    return text


def open_buttons(label: str, text: str | None, *, image: bool = False, key: str = "inspect") -> None:
    """Buttons that make this session's model ``label`` the model of another page (with
    ``text`` as its input) and go there, and one that downloads its folder as a zip."""
    folder = Path(own_models()[label])
    pages = [p for p in (OPEN_IMAGE if image else OPEN_TEXT) if p[0] in {path for path, *_ in PAGES}]
    with st.container(horizontal=True):
        for path, title, icon in pages:
            if st.button(title, icon=icon, key=f"train_open_{key}_{path}"):
                open_with(label, image=image, text=text)
                st.switch_page(path)
        st.download_button("Download .zip", data=lambda: _zip(folder), file_name=f"{folder.name}.zip",
                           mime="application/zip", on_click="ignore", icon=":material/download:",
                           key=f"train_zip_{key}")


def _zip(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.iterdir()):
            z.write(f, f"{folder.name}/{f.name}")
    return buf.getvalue()


# -- classifiers ------------------------------------------------------------------------------
DATA_SOURCES = {"sentiment": "synthetic reviews (the deciding words are known)",
                "csv": "your CSV or TSV file (text, label)",
                "digits": "handwritten digits (scikit-learn, 1,797 scans)",
                "images": "your zip of class folders"}


@st.cache_resource(max_entries=4, show_spinner="Preparing the data…")
def _builtin_data(task: str, seed: int) -> Data:
    return tasks.load_data(task, seed)


@st.cache_resource(max_entries=2, show_spinner="Reading your file…")
def _uploaded_data(task: str, name: str, sha: str, _data: bytes, seed: int) -> Data:  # one per file content
    if task == "csv":
        return datasets.read_csv(_data, name, seed)
    return datasets.read_image_zip(_data, name, tasks.IMAGE_SIDE, seed)


def classifier_form(kind: str) -> tuple[Data | None, str, int, int]:
    """The data and architecture of a text or image classifier; returns (data, arch, steps,
    seed). data is None while an upload is missing or refused (the refusal is said here)."""
    c = st.columns([2, 2, 1])
    sources = ["sentiment", "csv"] if kind == "text" else ["digits", "images"]
    source = c[0].radio("Data", sources, key=f"train_{kind}_data", format_func=DATA_SOURCES.get)
    if kind == "text":
        arch = c[1].selectbox("Architecture", TEXT_ARCHS, key="train_arch", format_func=lambda a: f"{a}: {ARCHS[a]}")
    else:
        arch = "vit"
        c[1].markdown(f"**vit**: {ARCHS['vit']}, {tasks.IMAGE_SIDE} px images in {tasks.PATCH} px patches.")
    steps = int(c[2].number_input("Steps", 1, 20_000, tasks.DEFAULT_STEPS[kind], step=50, key=f"train_{kind}_steps",
                                  help="Training stops after this many steps of 64 examples, or at Stop."))
    seed = 0
    if source in ("sentiment", "digits"):
        return _builtin_data(source, seed), arch, steps, seed
    file = st.file_uploader(DATA_SOURCES[source], type=["csv", "tsv", "txt"] if source == "csv" else ["zip"],
                            key=f"train_{source}_file",
                            help=(f"One row per example: the text, then its label; at most {datasets.MAX_CSV_BYTES >> 20} MB "
                                  f"and {datasets.MAX_ROWS:,} rows, UTF-8." if source == "csv" else
                                  f"A folder per class, images inside (PNG, JPEG...); at most "
                                  f"{datasets.MAX_ZIP_BYTES >> 20} MB and {datasets.MAX_IMAGES:,} files."))
    if file is None:
        st.info("Upload a file to train on it.")
        return None, arch, steps, seed
    raw = file.getvalue()
    try:
        data = _uploaded_data(source, file.name, hashlib.sha256(raw).hexdigest(), raw, seed)
    except AttnvizError as e:
        st.error(str(e))
        return None, arch, steps, seed
    for note in data.notes:
        st.caption(note)
    st.caption(f"{len(data.train_y):,} training and {len(data.test_y):,} held-out examples, "
               f"{len(data.labels)} classes: {', '.join(data.labels[:10])}{' …' if len(data.labels) > 10 else ''}.")
    return data, arch, steps, seed


def classifier_training(data: Data, arch: str, steps: int, seed: int) -> TrainRun | None:
    """Train and Stop, the live chart, and the training of a classifier on ``data``."""
    run = st.session_state.get(CLASSIFIER_RUN_KEY)
    if run is not None and (run.data is not data or run.net.config.arch != arch):
        st.caption("The data or architecture changed: press Train to start over with them.")
    return _training(lambda: tasks.trainer(arch, tasks.build(arch, data, seed), data, seed), steps,
                     CLASSIFIER_RUN_KEY, "train_cls")


def classifier_results(run: TrainRun) -> None:
    """Held-out accuracy, the confusion matrix, and the attention that decides on held-out
    texts or images (with the rationale's share for synthetic reviews)."""
    ev, data = run.evaluation, run.data
    if ev is None:
        return
    c = st.columns(3)
    c[0].metric("Held-out accuracy", f"{ev.accuracy:.1%}", help=f"On {len(data.test_y):,} examples never trained on.")
    majority = np.bincount(data.test_y).max() / len(data.test_y)
    c[1].metric("Always the commonest class", f"{majority:.1%}", help="The accuracy of a model that learned nothing.")
    if ev.rationale_mass is not None:
        c[2].metric("Attention on the rationale", f"{ev.rationale_mass:.1%}",
                    delta=f"{ev.rationale_mass / ev.chance_mass:.1f} × uniform ({ev.chance_mass:.1%})",
                    help="Mean share of the attention that decides on the words that decide the label (cue "
                         "words and negations), against the share of those words, which uniform attention gives.")
    show_chart(cviz.confusion_chart(ev.confusion, data.labels, title="Held-out examples: true × predicted"),
               "confusion", key="train_confusion")
    if data.kind == "text":
        _text_examples(run)
    else:
        _image_examples(run)


def _text_examples(run: TrainRun) -> None:
    ev, data = run.evaluation, run.data
    what = "the pooling attention" if run.net.pools else "the [CLS] row of the last layer, heads averaged"
    st.caption(f"Held-out texts, each word shaded by {what}"
               + (" (the words that decide the label are underlined)" if data.rationale is not None else "") + ".")
    lines = []
    for i in range(min(SHOWN_EXAMPLES, len(data.test_y))):
        truth, guess = data.labels[data.test_y[i]], data.labels[ev.predicted[i]]
        mark = "✓" if truth == guess else f"✗ {guess}"
        why = data.rationale[i] if data.rationale is not None else None
        lines.append(f"<div style='margin: 4px 0'><b>{html.escape(truth)}</b> {mark} · "
                     f"{cviz.shaded_words(data.test_words[i], ev.weights[i], why)}</div>")
    st.html("".join(lines))


def _image_examples(run: TrainRun) -> None:
    ev, data, net = run.evaluation, run.data, run.net
    grid = net.config.length // net.config.patch
    heats = cviz.class_heats(ev.weights, data.test_y, len(data.labels), grid)
    st.caption("Per class: the [CLS] row of the last layer (heads averaged), averaged over the class's held-out "
               "images, over the class's mean image.")
    means = [data.test[data.test_y == c].mean(0).astype(np.uint8) if (data.test_y == c).any() else data.test[0]
             for c in range(len(data.labels))]
    st.image([cviz.image_overlay(m, h) for m, h in zip(means, heats)], caption=data.labels, width=cviz.SHOWN_PX)
    st.caption("Held-out images: the last layer's [CLS] attention, then attention rollout through every layer "
               "(heads averaged, the residual added).")
    model = custom.as_model(net, "trained")
    shown, captions = [], []
    examples = range(min(SHOWN_EXAMPLES // 2, len(data.test_y)))
    need = max(estimate_bytes(model, Image.fromarray(data.test[i])) for i in examples)
    with job("Attention of the held-out images", need, key=("examples", id(run))) as progress:
        results = []
        for i in examples:
            results.append(attnviz.capture(model, Image.fromarray(data.test[i])))
            progress((i + 1) / len(examples))
    for i, result in zip(examples, results):
        rolled = rollout(result.attn["encoder"].astype(np.float32))[0, 1:]
        shown += [cviz.image_overlay(data.test[i], ev.weights[i].reshape(grid, grid)),
                  cviz.image_overlay(data.test[i], rolled.reshape(grid, grid))]
        truth, guess = data.labels[data.test_y[i]], data.labels[ev.predicted[i]]
        captions += [f"{truth} → {guess}: [CLS]", "rollout"]
    st.image(shown, caption=captions, width=cviz.SHOWN_PX)


def classifier_save(run: TrainRun) -> None:
    """Name and save the classifier; then buttons open it in the explorers."""
    cfg = run.net.config
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    name = c1.text_input("Name", custom.free_name(f"{cfg.task}-{cfg.arch}", custom.owner_dir(owner())),
                         key="train_cls_name", help="Letters, digits, '-' and '_'; saved models are never overwritten.")
    saved = st.session_state.get("train_cls_saved")
    if c2.button("Save", icon=":material/save:", key="train_cls_save"):
        label = save_model(run.net, name)
        saved = (id(run), label) if label is not None else saved
        st.session_state["train_cls_saved"] = saved
    if saved is not None and saved[0] == id(run) and saved[1] in own_models():
        label = saved[1]
        text = None if run.data.kind == "image" else " ".join(run.data.test_words[0])
        open_buttons(label, text, image=run.data.kind == "image", key="classifier")
