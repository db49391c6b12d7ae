"""Comparisons: two models (or two checkpoints of one) on one text, or two texts on one model,
with every head's map put on a common axis of words (attnviz.analysis.align).

:func:`align_models` and :func:`align_inputs` give an :class:`Aligned` pair of stacks
``[layers, heads, words, words]``; :func:`same_head_divergence` and :func:`closest_head` turn
it into one number per head (the JS divergence of attnviz.analysis.similarity, averaged over
the query words).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnviz.analysis.align import token_words, word_axis, word_spans
from attnviz.analysis.similarity import cross_divergence
from attnviz.analysis.tokens import reduce
from attnviz.errors import AttnvizError
from attnviz.inputs import clean_text
from attnviz.models.loader import Model
from attnviz.result import AttentionResult


def source_stack(result: AttentionResult) -> str:
    """The self-attention over the input text: the encoder's, else the decoder's."""
    return "encoder" if "encoder" in result.attn else "decoder"


def token_spans(model: Model, text: str, n_tokens: int) -> list[tuple[int, int] | None]:
    """Character range of each of the ``n_tokens`` tokens the capture of ``text`` read
    (None for special tokens), from the tokenizer's offsets."""
    enc = model.tokenizer(clean_text(text), return_offsets_mapping=True, return_special_tokens_mask=True)
    offsets, special = enc.get("offset_mapping"), enc["special_tokens_mask"]
    if offsets is None:
        raise AttnvizError(f"{model.name}'s tokenizer gives no character offsets, so its tokens cannot be aligned.")
    spans = [None if s else (int(a), int(b)) for (a, b), s in zip(offsets, special)]
    if len(spans) < n_tokens:
        raise AttnvizError(f"{model.name} read {n_tokens} tokens but its tokenizer gives {len(spans)}.")
    return spans[:n_tokens]


@dataclass
class Aligned:
    """Two stacks on common word axes: ``a[layer, head, word, word]`` and ``b`` (same words,
    possibly other layers and heads); ``labels`` one per word; ``names`` of A and B."""

    a: np.ndarray
    b: np.ndarray
    labels: list[str]
    names: tuple[str, str]


def _owners(model: Model, result: AttentionResult, text: str) -> tuple[np.ndarray, list[tuple[int, int]], str]:
    text = clean_text(text)
    words = word_spans(text)
    return token_words(token_spans(model, text, len(result.tokens)), words), words, text


def _on_words(result: AttentionResult, owner: np.ndarray, kept: list[int], labels: list[str]) -> np.ndarray:
    axis = word_axis(owner, kept, labels)
    return reduce(result.attn[source_stack(result)], axis, axis)


def align_tokens(result_a: AttentionResult, result_b: AttentionResult) -> Aligned:
    """Two captures that read the same tokens (two checkpoints sharing a tokenizer, two
    Build-your-own models on one digit sequence): their self-attention as it is, token by token."""
    if result_a.tokens != result_b.tokens:
        raise AttnvizError("the two captures read different tokens; align them on words instead")
    a = result_a.attn[source_stack(result_a)].astype(np.float32)
    b = result_b.attn[source_stack(result_b)].astype(np.float32)
    return Aligned(a, b, list(result_a.tokens), (result_a.model, result_b.model))


def align_models(model_a: Model, result_a: AttentionResult, model_b: Model, result_b: AttentionResult,
                 text: str) -> Aligned:
    """Two models' captures of the same ``text``: token by token when they read the same
    tokens (:func:`align_tokens`), else on the words both read."""
    if result_a.tokens == result_b.tokens:
        return align_tokens(result_a, result_b)
    owner_a, words, clean = _owners(model_a, result_a, text)
    owner_b, _, _ = _owners(model_b, result_b, text)
    kept = [w for w in range(len(words)) if (owner_a == w).any() and (owner_b == w).any()]
    if not kept:
        raise AttnvizError("the two models share no word of this text")
    labels = [clean[slice(*words[w])] for w in kept]
    return Aligned(_on_words(result_a, owner_a, kept, labels), _on_words(result_b, owner_b, kept, labels), labels,
                   (result_a.model, result_b.model))


def align_inputs(model: Model, result_a: AttentionResult, text_a: str, result_b: AttentionResult,
                 text_b: str) -> Aligned:
    """One model's captures of two texts with the same number of words, word by word."""
    owner_a, words_a, clean_a = _owners(model, result_a, text_a)
    owner_b, words_b, clean_b = _owners(model, result_b, text_b)
    if len(words_a) != len(words_b):
        raise AttnvizError(f"the texts have {len(words_a)} and {len(words_b)} words; two inputs are compared word "
                           "by word, so give them the same number of words")
    kept = [w for w in range(len(words_a)) if (owner_a == w).any() and (owner_b == w).any()]
    la = [clean_a[slice(*words_a[w])] for w in kept]
    lb = [clean_b[slice(*words_b[w])] for w in kept]
    labels = [x if x == y else f"{x}/{y}" for x, y in zip(la, lb)]
    return Aligned(_on_words(result_a, owner_a, kept, labels), _on_words(result_b, owner_b, kept, labels), labels,
                   ("A", "B"))


def same_head_divergence(aligned: Aligned) -> np.ndarray:
    """``[layers, heads]``: each head of A against the same head of B (same architecture:
    two checkpoints, or two inputs on one model)."""
    if aligned.a.shape[:2] != aligned.b.shape[:2]:
        raise AttnvizError("the two models have different layers or heads; compare each head with B's closest")
    n_layers, n_heads, w, _ = aligned.a.shape
    out = np.empty((n_layers, n_heads))
    for layer in range(n_layers):
        out[layer] = np.diag(cross_divergence(aligned.a[layer], aligned.b[layer]))
    return out


def closest_head(aligned: Aligned) -> tuple[np.ndarray, np.ndarray]:
    """For each head of A (``[layers_a, heads_a]``): the divergence to its closest head of B,
    and that head's index ``layer * heads_b + head``."""
    la, ha, w, _ = aligned.a.shape
    d = cross_divergence(aligned.a.reshape(la * ha, w, w), aligned.b.reshape(-1, w, w))
    return d.min(1).reshape(la, ha), d.argmin(1).reshape(la, ha)
