"""How attnviz's own models read text: an input becomes token ids, the token strings shown for
them, which of them are special, and warnings (what was cut or not known).

A lab model's :class:`~attnviz.models.model.Model` holds one of these as its ``tokenizer``;
:func:`attnviz.capture` calls its ``encode(text)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Encoded:
    """One input, read: ``ids [n]`` for the model; ``tokens`` to show, one per position the
    model attends over (n, or n + 1 when the model puts a [CLS] of its own first);
    ``special`` one flag per shown token (True for the ones the model adds); ``warnings``."""

    ids: list[int]
    tokens: list[str]
    special: list[bool]
    warnings: list[str] = field(default_factory=list)
