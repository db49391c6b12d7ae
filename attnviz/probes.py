"""Inputs built to probe what heads do, and the role scores measured on them.

:func:`induction_input` makes the input of the induction and duplicate-token scores (see
attnviz.analysis.roles): random ordinary tokens of the model's own vocabulary, repeated
twice, with the special tokens the tokenizer puts around any text (BOS for models that use
one, [CLS] ... [SEP] for BERT-like encoders, nothing for SmolLM2). :func:`induction_roles`
captures it and scores every head.
"""
from __future__ import annotations

import attnviz.families as families
from attnviz.analysis.roles import HeadRoles, Repeat, all_roles, head_roles_bytes, repeated_sequence
from attnviz.capture import Progress, bytes_at, capture_ids
from attnviz.errors import AttnvizError
from attnviz.models.loader import Model
from attnviz.result import AttentionResult

DEFAULT_PERIOD = 50  # tokens in each copy (as in the usual induction-head probes)


def special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """(ids before, ids after) the tokenizer puts around a text: found by encoding one short
    text with and without its special tokens."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return list(full[:start]), list(full[start + len(bare):])
    return [], []


def induction_input(model: Model, period: int = DEFAULT_PERIOD, seed: int = 0) -> tuple[list[int], Repeat]:
    """The repeated random token sequence for ``model`` (see the module docstring): ``period``
    distinct ids from its vocabulary without the special tokens, twice, inside the tokenizer's
    own special tokens. Returns (ids, where the two copies lie)."""
    if not families.of(model).TOKEN_IDS:
        raise AttnvizError(f"the induction probe needs a text encoder or decoder; {model.name} is of the {model.family!r} family.")
    tok = model.tokenizer
    prefix, suffix = special_frame(tok)
    most = (model.max_tokens - len(prefix) - len(suffix)) // 2
    if not 1 <= period <= most:
        raise AttnvizError(f"--length must be between 1 and {most} for {model.name} (it reads {model.max_tokens} tokens).")
    exclude = set(tok.all_special_ids) | {tok.unk_token_id} - {None}
    return repeated_sequence(len(tok), exclude, period, prefix=prefix, suffix=suffix, seed=seed)


def induction_roles(model: Model, period: int = DEFAULT_PERIOD, seed: int = 0, window: int = 2,
                    progress: Progress | None = None) -> tuple[AttentionResult, dict[str, HeadRoles]]:
    """Capture ``model`` on its :func:`induction_input` and score every head of every stack,
    induction and duplicate_token included. progress: the capture's (attnviz.capture)."""
    ids, repeat = induction_input(model, period, seed)
    result = capture_ids(model, ids, progress)
    return result, all_roles(result, repeat=repeat, window=window)


def induction_bytes(model: Model, period: int = DEFAULT_PERIOD) -> int:
    """What :func:`induction_roles` needs, bytes: the capture of its input and the role scores'
    working memory over it (not counted: reading a lazy stack's rows, attnviz.lazy.READ_BYTES)."""
    n = len(induction_input(model, period)[0])
    return bytes_at(model, n) + head_roles_bytes(n, n)
