"""Model families: what attnviz reads from each kind of architecture, one module per family.

This registry is what :mod:`attnviz.mixing` asks; each module says, for the models of its
family it covers, where their attention layers keep what context mixing reads (an
:class:`attnviz.families.anatomy.Anatomy`: per layer the value and output projections split by
head, the norms, the layer scale) and how to run their layers on an input exactly as
:func:`attnviz.capture` does. A family module has two functions:

- ``anatomy(model) -> Anatomy``, or an AttnvizError naming what mixing covers;
- ``forward(model, input, size=None) -> callable``: a function of no arguments that runs the
  model's layers once on ``input`` (tokenised or resized as capture does it).

Adding a family is one module and one line of FAMILIES (keyed by ``Model.family``).
"""
from __future__ import annotations

from types import ModuleType

from attnviz.errors import AttnvizError
from attnviz.families import custom, decoder, encoder, image, seq2seq
from attnviz.families.anatomy import COVERED
from attnviz.models.model import Model

FAMILIES: dict[str, ModuleType] = {
    "encoder": encoder,
    "decoder": decoder,
    "image": image,
    "encoder-decoder": seq2seq,
    "custom": custom,
}


def family_of(model: Model) -> ModuleType:
    """The family module that reads ``model``, or an AttnvizError saying what mixing covers."""
    module = FAMILIES.get(model.family)
    if module is None:
        raise AttnvizError(f"Context mixing does not cover {model.name} (a {model.family} model); "
                           f"it applies to {COVERED}.")
    return module
