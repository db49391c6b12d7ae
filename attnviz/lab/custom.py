"""attnviz's own small attention model, for the toy tasks of :mod:`attnviz.lab.toy_tasks`, and
the saving and loading of every lab model.

    digits [batch, n] -> token embedding + learned position embedding
      -> n_layers x ( x + Attention(LayerNorm(x)),  x + MLP(LayerNorm(x)) )
      -> LayerNorm -> linear -> logits [batch, n, 10], one digit per position

Every position sees every other (no causal mask), so one forward pass answers the whole
sequence. Each layer is a :class:`attnviz.lab.blocks.Block` whose attention is one of
ATTENTIONS (global, local, additive).

On disk a model is a folder with ``model.safetensors`` and ``config.json``, which holds
``"attnviz_custom": true``, the architecture (:class:`CustomConfig`, or for a classifier
``"model": "classifier"``, its :class:`~attnviz.lab.classify.ClassifierConfig`, labels and
vocabulary) and notes on its training;
:func:`attnviz.load_model` on that folder calls :func:`load`. The app saves them with
:func:`save_owned` under ``store.home()/custom/<owner>/<name>``, where ``<owner>`` is a digest
of the visitor's opaque id, so names are numbered per visitor and tell nobody about another's
saves. A save never overwrites one (a loaded model is cached by its folder), so a new save
takes a new name; each visitor keeps at most ``limits.SAVED_MODELS`` models of at most
``limits.SAVED_BYTES`` together, the oldest removed first.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import attnviz.limits as limits
from attnviz.errors import AttnvizError
from attnviz.lab.blocks import ATTENTIONS, Block
from attnviz.lab.classify import Classifier, ClassifierConfig, WordTokenizer
from attnviz.lab.datasets import IMAGE_MEAN, IMAGE_STD
from attnviz.lab.toy_tasks import AGREEMENT_MIN_LENGTH, TASKS, VOCAB, DigitTokenizer
from attnviz.models import store
from attnviz.models.model import ImageSpec, Model
from attnviz.recorder import record_attention

FORMAT_VERSION = 1
WEIGHTS, CONFIG = "model.safetensors", "config.json"
LIMITS = {"length": (1, 256), "d_model": (4, 1024), "n_heads": (1, 64), "n_layers": (1, 12), "window": (0, 256)}


@dataclass(frozen=True)
class CustomConfig:
    """The architecture. length: the sequence length it is trained on (and the longest it
    reads); d_model: width of the residual stream, split into n_heads heads; window: local
    attention's half-width w (keys with |i - j| <= w); task: the toy task it learns."""

    task: str = "reverse"
    length: int = 12
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    attention: str = "global"
    window: int = 2

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise AttnvizError(f"Unknown task '{self.task}'; the tasks are {', '.join(TASKS)}.")
        if self.attention not in ATTENTIONS:
            raise AttnvizError(f"Unknown attention '{self.attention}'; the kinds are {', '.join(ATTENTIONS)}.")
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or not low <= value <= high:
                raise AttnvizError(f"{name} must be a whole number from {low} to {high}, not {value!r}.")
        if self.task == "agreement" and self.length < AGREEMENT_MIN_LENGTH:
            raise AttnvizError(f"The agreement task needs at least {AGREEMENT_MIN_LENGTH} positions, not {self.length}.")
        if self.d_model % self.n_heads:
            raise AttnvizError(f"d_model ({self.d_model}) must be a multiple of the number of heads ({self.n_heads}).")

    @property
    def num_hidden_layers(self) -> int:  # the name Model.n_layers reads
        return self.n_layers

    @classmethod
    def from_json(cls, data: dict) -> "CustomConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class CustomNet(nn.Module):
    """The whole model: token ids [batch, n] -> logits [batch, n, len(VOCAB)].

    ``trained``: notes on its training (steps, accuracy, seconds), saved with it.
    """

    def __init__(self, config: CustomConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.trained: dict = {}
        with torch.random.fork_rng(devices=[]):  # seeded weights, the global generator untouched
            torch.manual_seed(seed)
            self.tokens = nn.Embedding(len(VOCAB), config.d_model)
            self.positions = nn.Embedding(config.length, config.d_model)
            self.blocks = nn.ModuleList(Block(config.d_model, config.n_heads, config.attention, config.window)
                                        for _ in range(config.n_layers))
            self.norm = nn.LayerNorm(config.d_model)
            self.head = nn.Linear(config.d_model, len(VOCAB))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.forward_embeddings(self.tokens(ids))

    def forward_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """The model from token embeddings ``x [batch, n, d_model]`` (what gradient methods
        differentiate): positions added, the layers, the head -> logits [batch, n, 10]."""
        x = x + self.positions(torch.arange(x.shape[1], device=x.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def run(self, text: str) -> tuple[list[int], list[int], np.ndarray, list[str]]:
        """Read a text of digits: (input ids, predicted ids, attention float32
        [layers, heads, queries, keys], warnings). Runs without gradients; call it in eval mode."""
        encoded = DigitTokenizer(self.config.length).encode(text)
        with torch.inference_mode(), record_attention() as rec:
            logits = self(torch.tensor([encoded.ids], device=self.device))
        attn = np.stack([m[0].cpu().numpy() for m in rec.maps])  # one [heads, n, n] per layer
        return encoded.ids, logits[0].argmax(-1).tolist(), attn, encoded.warnings


def saved_dir() -> Path:
    """Where the app saves custom models: ``store.home()/custom`` (a folder per owner inside)."""
    return store.home() / "custom"


def owner_dir(owner: str) -> Path:
    """The folder of one owner's saved models: ``saved_dir()/<digest of owner>``. ``owner`` is
    an opaque string (the visitor's id); the digest keeps it out of paths and off the disk."""
    return saved_dir() / hashlib.sha256(str(owner).encode()).hexdigest()[:24]


def free_name(name: str, folder: Path) -> str:
    """``name`` made a safe folder name (letters, digits, '-', '_'), with "-2", "-3"... added
    when ``folder`` (one owner's, so the numbers count that owner's saves alone) has it."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:64] or "model"
    candidate, i = base, 1
    while (folder / candidate).exists():
        i += 1
        candidate = f"{base}-{i}"
    return candidate


def saved_models(owner: str | None = None) -> list[Path]:
    """Folders of custom models saved here, newest first: ``owner``'s, or every owner's (a local
    server, where all visitors are one). Uploads are not among them: those belong to the
    session that sent them."""
    pattern = f"{owner_dir(owner).name}/*/{CONFIG}" if owner is not None else f"*/*/{CONFIG}"
    custom = [p.parent for p in saved_dir().glob(pattern) if is_custom(p.parent)]
    return sorted(custom, key=_mtime, reverse=True)


def _mtime(folder: Path) -> float:
    try:
        return folder.stat().st_mtime
    except OSError:  # removed meanwhile
        return 0.0


def folder_bytes(folder: Path) -> int:
    """Bytes of the files in ``folder``."""
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


@dataclass(frozen=True)
class Saved:
    """What :func:`save_owned` did: the folder written, and the names of the owner's older
    models it removed to stay within the owner's budget (oldest first)."""

    folder: Path
    removed: tuple[str, ...] = ()

    def message(self) -> str:
        """One line for the visitor: the name saved under, and what was removed, and why."""
        line = f"Saved as '{self.folder.name}': model.safetensors and config.json."
        if self.removed:
            names = ", ".join(f"'{n}'" for n in self.removed)
            line += (f" To keep within {limits.budget(limits.SAVED_MODELS)} models and "
                     f"{limits.budget(limits.SAVED_BYTES) / 1e6:,.0f} MB of saved models per visitor, the oldest "
                     f"{'was' if len(self.removed) == 1 else 'were'} removed: {names}.")
        return line


_SAVING = threading.Lock()  # one save and prune at a time, so two tabs of one owner never race


def save_owned(net: CustomNet | Classifier, name: str, owner: str) -> Saved:
    """Save ``net`` as one of ``owner``'s models (``owner``: an opaque visitor id) under
    ``name``, numbered within the owner's models when taken, then remove the owner's oldest
    models until at most ``limits.SAVED_MODELS`` of at most ``limits.SAVED_BYTES`` together are
    left (the new one always stays). A model larger than the byte budget alone is refused
    before anything is written."""
    size = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    room = limits.budget(limits.SAVED_BYTES)
    if size > room:
        raise AttnvizError(f"This model's weights take {size / 1e6:,.1f} MB; a visitor may keep at most "
                           f"{room / 1e6:,.0f} MB of saved models. Make it smaller to save it.")
    with _SAVING:
        home = owner_dir(owner)
        folder = save(net, home / free_name(name, home))
        most, kept, total, removed = limits.budget(limits.SAVED_MODELS), 0, 0, []
        for old in [folder] + [f for f in saved_models(owner) if f != folder]:  # newest first
            size = folder_bytes(old)
            if old == folder or (not removed and kept < most and total + size <= room):
                kept, total = kept + 1, total + size
            else:  # it and every older one go
                shutil.rmtree(old, ignore_errors=True)
                removed.append(old.name)
    return Saved(folder, tuple(reversed(removed)))


def is_classifier(folder: Path) -> bool:
    """Whether the lab model saved in ``folder`` is a classifier (not a toy-task model)."""
    try:
        return json.loads((folder / CONFIG).read_text()).get("model") == "classifier"
    except (OSError, ValueError, AttributeError):
        return False


def is_custom(folder: Path) -> bool:
    """Whether ``folder`` holds one of attnviz's own (Build your own) models."""
    try:
        return json.loads((folder / CONFIG).read_text()).get("attnviz_custom") is True
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


def save(net: CustomNet | Classifier, folder: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``folder``, which must not exist.
    config.json: ``"attnviz_custom": true``, the format version, the architecture (for a
    classifier also ``"model": "classifier"``, its vocabulary and labels) and ``trained``."""
    folder = Path(folder)
    if folder.exists():
        raise AttnvizError(f"{folder} exists already: save under another name.")
    folder.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    body = net.to_json() if isinstance(net, Classifier) else asdict(net.config)
    config = {"attnviz_custom": True, "format": FORMAT_VERSION, **body, "trained": net.trained}
    (folder / CONFIG).write_text(json.dumps(config, indent=1))
    return folder


def load(folder: str | Path, name: str, device: torch.device) -> Model:
    """The custom model saved in ``folder`` (see :func:`save`), in eval mode on ``device``."""
    folder = Path(folder)
    try:
        data = json.loads((folder / CONFIG).read_text())
        net = _classifier(data) if data.get("model") == "classifier" else CustomNet(CustomConfig.from_json(data))
        net.load_state_dict(load_file(str(folder / WEIGHTS)))
    except (OSError, ValueError) as e:
        raise AttnvizError(f"Cannot read the custom model '{name}': {str(e).splitlines()[0]}") from None
    except RuntimeError as e:  # shapes or names that do not match the config
        raise AttnvizError(f"The weights of '{name}' do not match its config.json: {str(e).splitlines()[0]}") from None
    net.trained = data.get("trained") or {}
    return as_model(net, name, device)


def _classifier(data: dict) -> Classifier:
    vocab, labels = data.get("vocab"), data.get("labels")
    if not all(isinstance(x, list) and all(isinstance(w, str) for w in x) for x in (vocab or [], labels)):
        raise ValueError("its vocab and labels must be lists of strings")
    return Classifier(ClassifierConfig.from_json(data), vocab, labels)


def as_model(net: CustomNet | Classifier, name: str, device: torch.device | None = None) -> Model:
    """``net`` (saved or not) as a Model for :func:`attnviz.capture`, in eval mode on ``device``:
    text models read text with their tokenizer, the ViT reads images of its own side."""
    device = device or net.device
    net.eval().to(device)
    cfg = net.config
    if isinstance(net, CustomNet):
        return Model(name, "custom", net, device, max_tokens=cfg.length, tokenizer=DigitTokenizer(cfg.length))
    if cfg.arch == "vit":
        spec = ImageSpec(size=cfg.length, patch=cfg.patch, mean=IMAGE_MEAN, std=IMAGE_STD)
        return Model(name, "custom", net, device, max_tokens=(cfg.length // cfg.patch) ** 2 + 1, image=spec)
    return Model(name, "custom", net, device, max_tokens=cfg.length,
                 tokenizer=WordTokenizer(net.vocab, cfg.length, cls=cfg.arch == "transformer"))
