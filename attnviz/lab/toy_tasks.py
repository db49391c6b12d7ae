"""Toy tasks for the small custom attention models: sequences of digits in, one digit out per
position.

Every task maps an input ``x [length]`` of digits 0-9 to a target ``y [length]`` of digits,
position by position, so that a model that reads the whole input (no causal mask) and predicts
one token per position can learn it; token accuracy is the share of positions right.

- copy: y = x (attention looks at the diagonal);
- reverse: y_i = x_{n-1-i} (an anti-diagonal);
- sort: y = x sorted ascending;
- histogram: y_i = how many times x_i occurs in x (capped at 9); attention gathers the keys that
  hold the same digit as the query (Weiss et al. 2021, "Thinking Like Transformers").
"""
from __future__ import annotations

import numpy as np

from attnviz.errors import AttnvizError
from attnviz.lab.vocab import Encoded

VOCAB = [str(d) for d in range(10)]  # token id = the digit
TASKS = {
    "copy": "repeat the input",
    "reverse": "the input backwards",
    "sort": "the input's digits in ascending order",
    "histogram": "at each position, how often its digit occurs in the input",
}


def target(task: str, x: np.ndarray) -> np.ndarray:
    """The right answer ``[..., length]`` for inputs ``x [..., length]`` of token ids."""
    if task == "copy":
        return x.copy()
    if task == "reverse":
        return x[..., ::-1].copy()
    if task == "sort":
        return np.sort(x, axis=-1)
    if task == "histogram":
        same = x[..., :, None] == x[..., None, :]  # [..., query position, key position]
        return np.minimum(same.sum(-1), len(VOCAB) - 1)
    raise AttnvizError(f"Unknown task '{task}'; the tasks are {', '.join(TASKS)}.")


def batch(task: str, size: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``size`` random inputs of ``length`` digits and their targets, int64 ``[size, length]``."""
    x = rng.integers(0, len(VOCAB), size=(size, length))
    return x, target(task, x)


def encode(text: str, max_len: int) -> tuple[list[int], list[str]]:
    """Token ids of a text of digits (spaces and commas between them are ignored), and
    warnings. Anything else than digits is refused; past ``max_len`` it is cut."""
    chars = [c for c in text if not c.isspace() and c != ","]
    bad = sorted({c for c in chars if c not in VOCAB})
    if bad:
        raise AttnvizError(
            f"This model reads only the digits 0-9, not {' '.join(repr(c) for c in bad[:5])}: "
            f"try a sequence like '3 1 4 1 5 9 2 6'.")
    if not chars:
        raise AttnvizError("The input is empty: type some digits, like '3 1 4 1 5 9 2 6'.")
    warnings = []
    if len(chars) > max_len:
        warnings.append(f"The input has {len(chars)} digits; this model reads at most {max_len}, "
                        f"so it was cut to the first {max_len}.")
        chars = chars[:max_len]
    return [VOCAB.index(c) for c in chars], warnings


def example(task: str, length: int, seed: int = 0) -> str:
    """A random input for ``task`` as text, digits separated by spaces."""
    x, _ = batch(task, 1, length, np.random.default_rng(seed))
    return " ".join(VOCAB[i] for i in x[0])


class DigitTokenizer:
    """Reads a text of digits for a model trained on ``length`` of them (see :func:`encode`);
    a shorter or longer input is read with a warning."""

    def __init__(self, length: int) -> None:
        self.length = length

    def encode(self, text: str) -> Encoded:
        ids, warnings = encode(text, self.length)
        if len(ids) != self.length:
            warnings.append(f"This model was trained on {self.length} digits; on {len(ids)} "
                            "its answers and attention may not make sense.")
        return Encoded(ids, [VOCAB[i] for i in ids], [False] * len(ids), warnings)
