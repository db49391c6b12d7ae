"""Streamlit blocks of "Build your own": the design form, training with a live curve and a stop
button, inspecting a model's answers and attention, saving, and uploading.

Training runs in the script itself, a few steps between chart updates; its state (model,
optimizer, history: a :class:`TrainRun`) lives in the session. Any click reruns the script,
which interrupts the loop between two steps; the rerun then carries on from the same state
until the target step, so Stop only has to lower the target to the steps already done.
"""
from __future__ import annotations

import io
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from attnviz.errors import AttnvizError
from attnviz.models import custom, upload
from attnviz.models.custom import ATTENTIONS, CustomConfig, CustomNet
from attnviz.models.toy_tasks import TASKS, VOCAB, example, target
from attnviz.models.train import Trainer, evaluate
from attnviz.ui.home import PAGES
from attnviz.ui.models import get_model
from attnviz.viz import mechanics as viz
from attnviz.viz.heatmap import png_config

RUN_KEY = "train_run"
PICK_KEY = "train_inspect"  # widget key of the model being inspected
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
    """A training in this session: the trainer (model, optimizer, history), the step it runs
    to, and its held-out accuracy once it stops."""

    trainer: Trainer
    target: int
    held_out: float | None = None

    @property
    def net(self) -> CustomNet:
        return self.trainer.net


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
    """Train and Stop buttons, the live loss/accuracy chart, and the training itself."""
    c1, c2, c3 = st.columns([1, 1, 4], vertical_alignment="center")
    run: TrainRun | None = st.session_state.get(RUN_KEY)
    if c1.button("Train", type="primary", icon=":material/play_arrow:", key="train_start"):
        run = TrainRun(Trainer(CustomNet(config, seed=seed), seed=seed), target=steps)
        st.session_state[RUN_KEY] = run
    if c2.button("Stop", icon=":material/stop:", key="train_stop") and run is not None:
        run.target = len(run.trainer.history)
    if run is None:
        c3.caption("Press Train: a few seconds on the CPU for the default design.")
        return None
    status, chart = c3.empty(), st.empty()
    if len(run.trainer.history) < run.target:
        run.held_out = None
        last = [0.0]

        def on_step(step) -> None:
            if time.monotonic() - last[0] > REDRAW_S or step.step == run.target:
                _draw(run, status, chart)
                last[0] = time.monotonic()

        run.trainer.run(run.target - len(run.trainer.history), on_step=on_step)
    if run.held_out is None:
        run.held_out = evaluate(run.net)
    _draw(run, status, chart)
    return run


def _draw(run: TrainRun, status, chart) -> None:
    h = run.trainer.history
    cfg = run.net.config
    if not h:
        status.caption("No steps yet.")
        return
    held = f" · held-out accuracy {run.held_out:.1%}" if run.held_out is not None else ""
    status.markdown(f"**{cfg.task}**, {cfg.attention} attention, {cfg.n_layers} × {cfg.n_heads} heads, "
                    f"d_model {cfg.d_model} · step {h[-1].step} of {run.target} · {h[-1].seconds:.1f} s · "
                    f"batch accuracy {h[-1].accuracy:.1%}{held}")
    chart.plotly_chart(viz.training_chart([s.step for s in h], [s.loss for s in h], [s.accuracy for s in h],
                                          title="Training: loss and token accuracy on fresh examples"),
                       config=png_config("training"), key=f"train_chart_{len(h)}_{run.held_out is not None}")


# -- saving and uploading --------------------------------------------------------------------
def save_block(run: TrainRun) -> None:
    """Name and save the model just trained (then it is the one inspected below)."""
    cfg = run.net.config
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    name = c1.text_input("Name", custom.free_name(f"{cfg.task}-{cfg.attention}-{cfg.n_layers}x{cfg.n_heads}"),
                         key="train_name", help="Letters, digits, '-' and '_'; saved models are never overwritten.")
    if c2.button("Save", icon=":material/save:", key="train_save"):
        folder = custom.save(run.net, custom.saved_dir() / custom.free_name(name))
        st.session_state[PICK_KEY] = str(folder)  # the picker below is not drawn yet: it may be set
        st.success(f"Saved in {folder}: model.safetensors and config.json.")


def upload_block() -> None:
    """Upload a model (a zip, or its files): a custom one becomes the one inspected below; a
    transformers one can be opened in the other pages. A refused upload is said here, and
    the rest of the page goes on."""
    files = st.file_uploader("A zip of the model folder, or its files (config.json, *.safetensors, tokenizer files)",
                             type=["zip", "json", "safetensors", "txt", "model"], accept_multiple_files=True,
                             key="train_upload", help="Pickle weights (*.bin, *.pt) are refused; nothing uploaded is run.")
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
    model = get_model(str(extracted.folder))
    for line in extracted.skipped:
        st.caption(f"Left out: {line}")
    st.success(f"Unpacked a {model.family} model into {extracted.folder} ({', '.join(extracted.files)}).")
    if model.family != "custom":
        open_buttons(extracted.folder, None, image=model.family == "image", key="upload")


def _unpack_and_load(files) -> tuple[upload.Extracted | None, str | None]:
    """(what was unpacked, None) for an upload that unpacks and loads, else (None, why it was
    refused); a model refused at loading has its folder removed. A custom model becomes the
    one inspected below."""
    try:
        with st.spinner("Checking and unpacking…"):
            extracted = upload.extract([(f.name, f.getvalue()) for f in files])
    except AttnvizError as e:
        return None, str(e)
    try:
        model = get_model(str(extracted.folder))
    except AttnvizError as e:  # e.g. a config.json of absurd sizes, or weights of other shapes
        upload.discard(extracted.folder)
        return None, str(e)
    if model.family == "custom":
        st.session_state[PICK_KEY] = str(extracted.folder)
    return extracted, None


# -- inspecting and opening elsewhere --------------------------------------------------------
def pick_model(run: TrainRun | None) -> tuple[Path | None, CustomNet] | None:
    """The model to inspect: (None, the one just trained), or (its folder, a model saved or
    uploaded here); None when there is none yet."""
    options = ([JUST_TRAINED] if run is not None and run.trainer.history else []) + [str(f) for f in custom.saved_models()]
    if not options:
        st.caption("Train a model, or upload one, to inspect it here.")
        return None
    if st.session_state.get(PICK_KEY) not in options:
        st.session_state.pop(PICK_KEY, None)
    choice = st.selectbox("Model", options, key=PICK_KEY,
                          format_func=lambda o: o if o == JUST_TRAINED else f"{Path(o).name} ({Path(o).parent.name})",
                          help="Saved models live in ~/.cache/attnviz/custom, uploads in ~/.cache/attnviz/uploads.")
    if choice == JUST_TRAINED:
        return None, run.net
    return Path(choice), get_model(choice).net


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
    st.plotly_chart(viz.head_grid(attn, tokens, tokens, row_names=[f"layer {l}" for l in range(cfg.n_layers)]),
                    config=png_config(f"{name}_attention"), key="train_grid")
    return text


def open_buttons(folder: Path, text: str | None, *, image: bool = False, key: str = "inspect") -> None:
    """Buttons that make ``folder`` the model of another page (with ``text`` as its input) and go there."""
    pages = [p for p in (OPEN_IMAGE if image else OPEN_TEXT) if p[0] in {path for path, *_ in PAGES}]
    with st.container(horizontal=True):
        for path, label, icon in pages:
            if st.button(label, icon=icon, key=f"train_open_{key}_{path}"):
                st.session_state["model"] = str(folder)  # the key attnviz.ui.models.model_picker reads
                st.session_state["flow_kind"] = "image" if image else "text"  # the flow page's input kind
                if text is not None:
                    st.session_state["text_text"] = text  # the text pages' input box
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
