"""attnviz's own small attention model, for the toy tasks of :mod:`attnviz.models.toy_tasks`.

    digits [batch, n] -> token embedding + learned position embedding
      -> n_layers x ( x + Attention(LayerNorm(x)),  x + MLP(LayerNorm(x)) )
      -> LayerNorm -> linear -> logits [batch, n, 10], one digit per position

Every position sees every other (no causal mask), so one forward pass answers the whole
sequence. The attention of each layer is one of ATTENTIONS:

- ``global``: softmax(q k^T / sqrt(d_head)) v over every key;
- ``local``: the same with keys outside ``|i - j| <= window`` masked out;
- ``additive`` (Bahdanau): score(i, j) = u^T tanh(q_i + k_j), one learned vector u per head,
  the query and key projections playing the roles of W_q and W_k.

One path for the attention maps: every kind calls ``F.scaled_dot_product_attention``, and
:func:`attnviz.recorder.record_attention` records the probabilities of each call, as it does
for any other model. Additive attention passes its scores as the float mask with all-zero
queries and keys, so that the call computes softmax(0 + scores) v: exactly additive attention,
trained and recorded like the others.

On disk a model is a folder with ``model.safetensors`` and ``config.json``, which holds
``"attnviz_custom": true``, the architecture (:class:`CustomConfig`) and notes on its training;
:func:`attnviz.load_model` on that folder calls :func:`load`. The app saves them under
``store.home()/custom/<name>`` and never overwrites one (a loaded model is cached by its
folder), so a new save takes a new name.
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from attnviz.errors import AttnvizError
from attnviz.models import store
from attnviz.models.loader import Model
from attnviz.models.toy_tasks import AGREEMENT_MIN_LENGTH, TASKS, VOCAB, encode
from attnviz.models.upload import uploads_dir
from attnviz.recorder import record_attention
from attnviz.result import AttentionResult

ATTENTIONS = {
    "global": "every position sees every other",
    "local": "each position sees only its neighbours within the window",
    "additive": "Bahdanau's v^T tanh(W_q q + W_k k) scores instead of dot products",
}
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


class Attention(nn.Module):
    """Multi-head self-attention of one kind (see the module docstring): x [batch, n, d_model]."""

    def __init__(self, cfg: CustomConfig) -> None:
        super().__init__()
        self.kind, self.heads, self.window = cfg.attention, cfg.n_heads, cfg.window
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        if self.kind == "additive":
            d_head = cfg.d_model // cfg.n_heads
            self.u = nn.Parameter(torch.randn(cfg.n_heads, d_head) / math.sqrt(d_head))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, n, d = x.shape
        # [batch, n, 3 d] -> three [batch, heads, n, d_head]
        q, k, v = self.qkv(x).view(batch, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.kind == "global":
            mixed = F.scaled_dot_product_attention(q, k, v)
        elif self.kind == "local":
            i = torch.arange(n, device=x.device)
            near = (i[:, None] - i[None, :]).abs() <= self.window  # [query, key], True = seen
            mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=near)
        else:
            # scores[b, h, i, j] = u_h . tanh(q_i + k_j), then softmax(0 . 0 + scores) v
            scores = torch.einsum("bhijd,hd->bhij", torch.tanh(q[:, :, :, None] + k[:, :, None]), self.u)
            zero = q.new_zeros(batch, self.heads, n, 1)
            mixed = F.scaled_dot_product_attention(zero, zero, v, attn_mask=scores)
        return self.out(mixed.transpose(1, 2).reshape(batch, n, d))


class Block(nn.Module):
    """One pre-norm layer: attention, then a two-layer MLP (4 x wider), each added to x."""

    def __init__(self, cfg: CustomConfig) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(),
                                 nn.Linear(4 * cfg.d_model, cfg.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


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
            self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
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
        ids, warnings = encode(text, self.config.length)
        if len(ids) != self.config.length:
            warnings.append(f"This model was trained on {self.config.length} digits; on {len(ids)} "
                            "its answers and attention may not make sense.")
        with torch.inference_mode(), record_attention() as rec:
            logits = self(torch.tensor([ids], device=self.device))
        attn = np.stack([m[0].cpu().numpy() for m in rec.maps])  # one [heads, n, n] per layer
        return ids, logits[0].argmax(-1).tolist(), attn, warnings

    def capture(self, input, name: str) -> AttentionResult:
        """The AttentionResult of one input, a text of digits (what attnviz.capture calls)."""
        if not isinstance(input, str):
            raise AttnvizError(f"{name} reads a text of digits, not {type(input).__name__}.")
        started = time.perf_counter()
        ids, _, attn, warnings = self.run(input)
        tokens = [VOCAB[i] for i in ids]
        return AttentionResult(
            kind="text", model=name, attn={"encoder": attn}, tokens=tokens,
            special=[False] * len(tokens), word_spans=[(i, i + 1) for i in range(len(tokens))],
            timings={"forward_s": time.perf_counter() - started}, warnings=warnings)


def saved_dir() -> Path:
    """Where the app saves custom models: ``store.home()/custom``."""
    return store.home() / "custom"


def free_name(name: str) -> str:
    """``name`` made a safe folder name (letters, digits, '-', '_'), with "-2", "-3"... added
    when a saved model already has it."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:64] or "model"
    candidate, i = base, 1
    while (saved_dir() / candidate).exists():
        i += 1
        candidate = f"{base}-{i}"
    return candidate


def saved_models() -> list[Path]:
    """Folders of custom models saved or uploaded here, newest first."""
    folders = [p.parent for root in (saved_dir(), uploads_dir()) for p in root.glob(f"*/{CONFIG}")]
    custom = [f for f in folders if _is_custom(f / CONFIG)]
    return sorted(custom, key=lambda f: f.stat().st_mtime, reverse=True)


def _is_custom(config: Path) -> bool:
    try:
        return json.loads(config.read_text()).get("attnviz_custom") is True
    except (OSError, ValueError, AttributeError):
        return False


def save(net: CustomNet, folder: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``folder``, which must not exist."""
    folder = Path(folder)
    if folder.exists():
        raise AttnvizError(f"{folder} exists already: save under another name.")
    folder.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    config = {"attnviz_custom": True, "format": FORMAT_VERSION, **asdict(net.config), "trained": net.trained}
    (folder / CONFIG).write_text(json.dumps(config, indent=1))
    return folder


def load(folder: str | Path, name: str, device: torch.device) -> Model:
    """The custom model saved in ``folder`` (see :func:`save`), in eval mode on ``device``."""
    folder = Path(folder)
    try:
        data = json.loads((folder / CONFIG).read_text())
        net = CustomNet(CustomConfig.from_json(data))
        net.load_state_dict(load_file(str(folder / WEIGHTS)))
    except (OSError, ValueError) as e:
        raise AttnvizError(f"Cannot read the custom model in {folder}: {str(e).splitlines()[0]}") from None
    except RuntimeError as e:  # shapes or names that do not match the config
        raise AttnvizError(f"The weights in {folder} do not match its config.json: {str(e).splitlines()[0]}") from None
    net.trained = data.get("trained") or {}
    net.eval().to(device)
    return Model(name, "custom", net, device, max_tokens=net.config.length)
