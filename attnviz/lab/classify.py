"""attnviz's own attention classifiers: one label per text or per image.

Four architectures (ARCHS), the ones the classic attention articles build:

- ``lstm-attention``: token embedding -> bidirectional LSTM (or GRU) -> additive attention
  pooling -> linear. The pooling scores every state h_t [d_model] with one learned query,
  ``s_t = u^T tanh(W h_t + b)``, and the class is read from ``sum_t softmax(s)_t h_t``: one
  weight per token.
- ``attention-lstm``: token embedding -> attention over the embeddings (the same additive
  scoring, ``s_t = u^T tanh(W e_t + b)``) -> each embedding scaled by ``n a_t`` (uniform
  weights leave it as it was) -> bidirectional LSTM (or GRU) -> its last states -> linear.
- ``transformer``: [CLS] + tokens -> embedding + learned positions -> n_layers blocks of
  :mod:`attnviz.lab.blocks` (padding masked) -> LayerNorm -> linear on [CLS].
- ``vit`` (images): the image [3, side, side] cut into patches of ``patch`` px, each projected
  to d_model -> [CLS] + patches + learned positions -> blocks -> LayerNorm -> linear on [CLS].

Every attention is computed by ``F.scaled_dot_product_attention``, so that
:func:`attnviz.record_attention` records it as for any model. The pooling of the two LSTM
architectures is one query over the n tokens: the recorder sees a map [batch, 1, 1, n], and
:func:`attnviz.capture` shows it as the row of a ``[POOL]`` token (these modules say
``pools = True``). Their additive scores go in as the float mask with all-zero queries and
keys (softmax(0 + s)), and the weights themselves are obtained by attending over the identity
matrix as values.

Token id 0 is padding, 1 an unknown word, 2 [CLS]; padding gets no attention weight.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from attnviz.errors import AttnvizError
from attnviz.lab.blocks import Block
from attnviz.lab.vocab import Encoded

ARCHS = {
    "lstm-attention": "a bidirectional LSTM whose states are pooled by additive attention",
    "attention-lstm": "attention over the word embeddings, then an LSTM",
    "transformer": "transformer blocks with a [CLS] token and a classification head",
    "vit": "a small vision transformer: patches, [CLS], attention",
}
TEXT_ARCHS = ("lstm-attention", "attention-lstm", "transformer")
PAD, UNK, CLS = 0, 1, 2
SPECIALS = ["[PAD]", "[UNK]", "[CLS]"]
MAX_PATCHES = 1024  # a ViT's attention is [layers, heads, patches + 1, patches + 1]
WORD = re.compile(r"[\w']+|[^\w\s]")
LIMITS = {"length": (2, 512), "d_model": (8, 512), "n_heads": (1, 16), "n_layers": (1, 8),
          "n_classes": (2, 100), "vocab_size": (4, 50_000), "patch": (1, 64)}


def words(text: str) -> list[str]:
    """A text cut into lower-case words and punctuation marks."""
    return WORD.findall(text.lower())


@dataclass(frozen=True)
class ClassifierConfig:
    """One classifier. arch: one of ARCHS; task: what it was trained on (sentiment, csv, digits,
    images); n_classes: how many labels; length: the most tokens a text is read to (text), or
    the side of the square input image in px (vit); vocab_size: words known, specials included
    (text); d_model: width; n_heads, n_layers: the transformer's (transformer, vit); patch: side
    of a patch in px (vit); cell: lstm or gru (the LSTM architectures)."""

    arch: str
    task: str
    n_classes: int
    length: int
    vocab_size: int = 4
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    patch: int = 4
    cell: str = "lstm"

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise AttnvizError(f"Unknown architecture '{self.arch}'; the classifiers are {', '.join(ARCHS)}.")
        if self.cell not in ("lstm", "gru"):
            raise AttnvizError(f"cell must be lstm or gru, not {self.cell!r}.")
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or not low <= value <= high:
                raise AttnvizError(f"{name} must be a whole number from {low} to {high}, not {value!r}.")
        if self.d_model % self.n_heads or (self.arch in TEXT_ARCHS[:2] and self.d_model % 2):
            raise AttnvizError(f"d_model ({self.d_model}) must be even and a multiple of the heads ({self.n_heads}).")
        if self.arch == "vit" and self.length % self.patch:
            raise AttnvizError(f"The image side ({self.length} px) must be a multiple of the patch ({self.patch} px).")
        if self.arch == "vit" and (self.length // self.patch) ** 2 > MAX_PATCHES:
            raise AttnvizError(f"{self.length} px images in {self.patch} px patches make "
                               f"{(self.length // self.patch) ** 2:,} patches; at most {MAX_PATCHES:,} are allowed.")

    @property
    def num_hidden_layers(self) -> int:  # the name Model.n_layers reads
        return self.n_layers if self.arch in ("transformer", "vit") else 1

    @classmethod
    def from_json(cls, data: dict) -> "ClassifierConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class AttentionWeights(nn.Module):
    """Additive attention of one learned query over n vectors x [batch, n, d]: weights
    [batch, n], ``softmax_t(u^T tanh(W x_t + b))`` over the tokens that ``keep`` [batch, n]
    marks as real."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.project = nn.Linear(d, d)
        self.u = nn.Linear(d, 1, bias=False)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        batch, n, _ = x.shape
        scores = self.u(torch.tanh(self.project(x)))[..., 0].masked_fill(~keep, float("-inf"))  # [batch, n]
        zero = x.new_zeros(batch, 1, 1, 1)  # one head, one query, width 1: q k^T = 0
        eye = torch.eye(n, device=x.device, dtype=x.dtype).expand(batch, 1, n, n)  # values: weights come out
        weights = F.scaled_dot_product_attention(zero, zero.expand(batch, 1, n, 1), eye,
                                                 attn_mask=scores[:, None, None, :])
        return weights[:, 0, 0]  # [batch, n]


class _Recurrent(nn.Module):
    """Bidirectional LSTM or GRU, d_model / 2 wide each way, over padded ids [batch, n]."""

    def __init__(self, cfg: ClassifierConfig) -> None:
        super().__init__()
        rnn = nn.LSTM if cfg.cell == "lstm" else nn.GRU
        self.rnn = rnn(cfg.d_model, cfg.d_model // 2, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """States [batch, n, d_model] (zero at padding) and the last states of both directions
        [batch, d_model]."""
        lengths = keep.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, last = self.rnn(packed)
        h = last[0] if isinstance(last, tuple) else last  # [2, batch, d_model / 2]
        states, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return states, torch.cat([h[0], h[1]], dim=-1)


class Classifier(nn.Module):
    """ids [batch, n] (text; 0 = padding) or pixels [batch, 3, side, side] (vit) -> logits
    [batch, n_classes]. ``vocab``: the words of its token ids; ``labels``: the class names;
    ``trained``: notes on its training, saved with it."""

    def __init__(self, config: ClassifierConfig, vocab: list[str] | None = None, labels: list[str] | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        self.config, self.trained = config, {}
        self.vocab = list(vocab or SPECIALS)
        self.labels = list(labels or [str(i) for i in range(config.n_classes)])
        if len(self.labels) != config.n_classes or (config.arch != "vit" and len(self.vocab) != config.vocab_size):
            raise AttnvizError("The vocabulary or labels do not match the classifier's config.")
        self.pools = config.arch in ("lstm-attention", "attention-lstm")
        d = config.d_model
        with torch.random.fork_rng(devices=[]):  # seeded weights, the global generator untouched
            torch.manual_seed(seed)
            if config.arch == "vit":
                self.patches = nn.Conv2d(3, d, config.patch, stride=config.patch)
                self.cls = nn.Parameter(torch.zeros(1, 1, d))
                self.positions = nn.Parameter(torch.randn(1, 1 + (config.length // config.patch) ** 2, d) * 0.02)
            else:
                self.tokens = nn.Embedding(config.vocab_size, d, padding_idx=PAD)
            if config.arch in ("transformer", "vit"):
                if config.arch == "transformer":
                    self.positions = nn.Parameter(torch.randn(1, config.length + 1, d) * 0.02)
                self.blocks = nn.ModuleList(Block(d, config.n_heads) for _ in range(config.n_layers))
                self.norm = nn.LayerNorm(d)
            else:
                self.attention = AttentionWeights(d)
                self.recurrent = _Recurrent(config)
            self.head = nn.Linear(d, config.n_classes)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arch = self.config.arch
        if arch == "vit":
            p = self.patches(x).flatten(2).transpose(1, 2)  # [batch, patches, d]
            h = torch.cat([self.cls.expand(len(x), -1, -1), p], dim=1) + self.positions
            for block in self.blocks:
                h = block(h)
            return self.head(self.norm(h[:, 0]))
        keep = x != PAD
        if arch == "transformer":
            x = torch.cat([torch.full_like(x[:, :1], CLS), x], dim=1)
            keep = torch.cat([torch.ones_like(keep[:, :1]), keep], dim=1)
            h = self.tokens(x) + self.positions[:, :x.shape[1]]
            for block in self.blocks:
                h = block(h, keep)
            return self.head(self.norm(h[:, 0]))
        e = self.tokens(x)
        if arch == "lstm-attention":
            states, _ = self.recurrent(e, keep)
            weights = self.attention(states, keep)  # [batch, n]
            return self.head(torch.einsum("bn,bnd->bd", weights, states))
        weights = self.attention(e, keep)
        scaled = e * (weights * keep.sum(1, keepdim=True))[..., None]  # uniform weights: e unchanged
        _, last = self.recurrent(scaled, keep)
        return self.head(last)

    def to_json(self) -> dict:
        """What config.json holds besides the weights (see attnviz.lab.custom.save)."""
        return {"model": "classifier", **asdict(self.config), "labels": self.labels,
                "vocab": self.vocab if self.config.arch != "vit" else None}


class WordTokenizer:
    """Reads a text for a text classifier: lower-case words and punctuation (:func:`words`),
    at most ``length`` of them, ids from the classifier's vocabulary (unknown words read as
    [UNK], shown as themselves). A transformer's [CLS] is added by the model itself, and shown
    first."""

    def __init__(self, vocab: list[str], length: int, cls: bool) -> None:
        self.index = {w: i for i, w in enumerate(vocab)}
        self.length, self.cls = length, cls

    def ids(self, tokens: list[str]) -> list[int]:
        return [self.index.get(t, UNK) if t not in SPECIALS else UNK for t in tokens]

    def encode(self, text: str) -> Encoded:
        tokens, warnings = words(text), []
        if not tokens:
            raise AttnvizError("The text has no words to read.")
        if len(tokens) > self.length:
            warnings.append(f"The text has {len(tokens)} words; this model reads at most {self.length}, "
                            f"so it was cut to the first {self.length}.")
            tokens = tokens[:self.length]
        ids = self.ids(tokens)
        unknown = sorted({t for t, i in zip(tokens, ids) if i == UNK})
        if unknown:
            warnings.append(f"{len(unknown)} word(s) this model never saw read as unknown: {', '.join(unknown[:8])}.")
        shown = (["[CLS]"] if self.cls else []) + tokens
        return Encoded(ids, shown, [self.cls and i == 0 for i in range(len(shown))], warnings)
