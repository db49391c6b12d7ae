"""Text for a model: tokenising it and describing its tokens.

Shared by attnviz.capture and attnviz.explain, so that a capture and an explanation of the same
text read the same tokens: :func:`tokenize` (the tokenizer's encoding, cut to the model's
length with a warning, the user's special-token strings kept as text), :func:`token_strings`
(readable token strings), :func:`special_flags` (which tokens are special) and
:func:`word_spans` (which tokens make each word); :func:`one_text` refuses a pair where a
model reads one text.
"""
from __future__ import annotations

from typing import Union

from attnviz.errors import AttnvizError
from attnviz.inputs import clean_text
from attnviz.models.model import Model

TextInput = Union[str, tuple[str, str]]  # a text, or a pair of texts (segments A and B of an encoder)


def one_text(input: TextInput, model: Model) -> str:
    """``input`` cleaned (attnviz.inputs.clean_text), or an AttnvizError when it is a pair."""
    if isinstance(input, tuple):
        raise AttnvizError(f"{model.name} takes one text, not a pair.")
    return clean_text(str(input))


def tokenize(model: Model, text: str, pair: str | None = None, limit: int | None = None):
    """(the tokenizer's encoding of ``text``, or of the pair ``(text, pair)``, as torch tensors
    with its special-tokens mask and, for a pair, its token type ids; warnings): tokenised with
    the model's tokenizer, cut to ``limit`` tokens (the model's ``max_tokens`` by default) with
    a warning. ``text`` and ``pair`` are cleaned first (attnviz.inputs.clean_text); a blank
    ``pair`` is none.

    Special-token strings the user typed ("[SEP]", "<|im_start|>") are split like any text
    (``split_special_tokens``), so that they stay the user's words; where the tokenizer still
    reads one as a special token (T5's "</s>"), a warning says so. Text of which most tokens
    are the unknown token (a model uploaded without its vocabulary) gets a warning too."""
    text = clean_text(str(text))
    pair = clean_text(str(pair)) if pair is not None and str(pair).strip() else None
    limit = limit or model.max_tokens
    kwargs = dict(return_tensors="pt", return_special_tokens_mask=True, return_token_type_ids=pair is not None,
                  split_special_tokens=True)
    enc = model.tokenizer(text, pair, truncation=False, verbose=False, **kwargs)  # the length warning is ours, below
    warnings = []
    n = enc["input_ids"].shape[1]
    if n > limit:
        warnings.append(f"The input has {n} tokens; {model.name} reads at most {limit}, so it was cut to the first {limit}.")
        enc = model.tokenizer(text, pair, truncation=True, max_length=limit, **kwargs)
    ids, added = enc["input_ids"][0].tolist(), enc["special_tokens_mask"][0].tolist()
    specials = set(model.tokenizer.all_special_ids)
    typed = sorted({model.tokenizer.convert_ids_to_tokens(i) for i, a in zip(ids, added) if not a and i in specials}
                   - {model.tokenizer.unk_token})
    if typed:
        warnings.append(f"{model.name} reads {', '.join(repr(t) for t in typed)} in the text as its special "
                        "token (its tokenizer cannot split it); it is shown as the text's own token.")
    words = [i for i, a in zip(ids, added) if not a]
    unknown = sum(i == model.tokenizer.unk_token_id for i in words)
    if model.tokenizer.unk_token_id is not None and len(words) >= 2 and unknown > len(words) / 2:
        warnings.append(f"{unknown} of {len(words)} tokens are unknown to {model.name}'s tokenizer "
                        f"({model.tokenizer.unk_token}): its vocabulary may be missing or not this model's.")
    return enc, warnings


def token_strings(model: Model, ids: list[int]) -> list[str]:
    """Readable token strings: byte-level pieces decoded, SentencePiece's '▁' shown as a space."""
    raw = model.tokenizer.convert_ids_to_tokens(ids)
    if any(t.startswith(("Ġ", "Ċ")) for t in raw):  # byte-level BPE (GPT-2, Llama 3, SmolLM)
        return [model.tokenizer.decode([i]) for i in ids]
    return [t.replace("▁", " ") for t in raw]


def special_flags(model: Model, ids: list[int], enc=None) -> list[bool]:
    """Which of the tokens ``ids`` are special ([CLS], [SEP], BOS, </s>, padding). The first
    tokens, those of ``enc`` (an encoding from :func:`tokenize`), are special when the
    tokenizer added them (a special-token string the user typed is the user's text); later
    ones (generated) when their id is a special one. The unknown token is never special: it
    stands for real input (an emoji, a character the vocabulary lacks)."""
    added = [bool(a) for a in enc["special_tokens_mask"][0].tolist()] if enc is not None else []
    specials = set(model.tokenizer.all_special_ids) - {model.tokenizer.unk_token_id}
    return added[:len(ids)] + [i in specials for i in ids[len(added):]]


def word_spans(enc, n: int) -> list[tuple[int, int]]:
    """[start, end) ranges of the first ``n`` tokens of ``enc`` (an encoding from
    :func:`tokenize`), one per word (a special token is a word of its own; without word ids,
    as from a slow tokenizer, every token is)."""
    word_ids = enc.word_ids(0) if enc.encodings else [None] * n
    spans: list[tuple[int, int]] = []
    for i, w in enumerate(word_ids[:n]):
        if spans and w is not None and word_ids[spans[-1][0]] == w:
            spans[-1] = (spans[-1][0], i + 1)
        else:
            spans.append((i, i + 1))
    return spans
