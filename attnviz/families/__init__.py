"""Model families: the one registry that capture, explain, context mixing, batch runs and the
pages ask about a model, instead of comparing family names. One module per family, keyed in
FAMILIES by ``Model.family`` (the loader decides it from transformers' model classes, see
attnviz.models.loader). A family module says:

- ``NAME``: its ``Model.family``;
- ``READS``: what a capture of it reads, and so which page input it needs: ``"text"`` (a text
  box), ``"image"`` (a photo), ``"image+prompt"`` (a photo and a prompt) or ``"own"``
  (attnviz's own models: a text, or a picture for an image classifier; see :func:`reads`);
- ``STACKS``: the stacks of its results (a windowed image model's per-stage stacks aside);
- ``OPTIONS``: the options of :func:`attnviz.capture` that apply to it, among ``"pair"`` (a
  tuple of two texts), ``"generate"``, ``"target"``, ``"prompt"`` and ``"size"``; None: none
  is checked (its capture reads what applies);
- ``EXTRA_TOKENS``: tokens its capture may add beyond the input and ``generate`` (an
  encoder-decoder's own target), for the capture's memory estimate;
- ``TOKEN_IDS``: whether it runs on token ids as given (:func:`attnviz.capture.capture_ids`,
  the induction probe);
- ``CAUSAL``: whether its self-attention is causal (a decoder's: each token sees those before
  it), as a capture of token ids says;
- ``shape(model)`` -> (layers, heads, hidden size, stacks, recorded): what a capture's memory
  grows with (attnviz.limits.capture_bytes), for :func:`attnviz.capture.estimate_bytes`;
- ``OUTPUT``: what :func:`attnviz.explain.explain` explains by default (``"next token"``,
  ``"target"``, ``"embedding or class"``, ``"class"``, ``"own"``), None where explain does not
  cover it;
- ``capture(model, input, *, target=None, generate=0, size=None, prompt=None, progress=None)``
  -> AttentionResult: the input tokenised or preprocessed and the model run, through the one
  recording path (attnviz.recording.forward) where the family runs it (with the family's
  placement step where its calls are not one per layer: a windowed model's); called by
  :func:`attnviz.capture` inside the capture's job, after the options were checked;
- for context mixing (:mod:`attnviz.mixing`), where it covers the family:
  ``anatomy(model) -> Anatomy`` (where its layers keep their value and output projections,
  norms and layer scale, or an AttnvizError naming what it covers) and
  ``forward(model, input, size=None) -> callable`` (runs the layers once on the input, as
  capture reads it). A family without them is not covered by mixing.

Adding a family is one module and one line of FAMILIES (docs/architecture.md shows one).
"""
from __future__ import annotations

from types import ModuleType

from attnviz.errors import AttnvizError
from attnviz.families import custom, decoder, encoder, image, seq2seq, vision_language
from attnviz.families.anatomy import COVERED
from attnviz.models.model import Model

FAMILIES: dict[str, ModuleType] = {
    "encoder": encoder,
    "decoder": decoder,
    "image": image,
    "encoder-decoder": seq2seq,
    "vision-language": vision_language,
    "custom": custom,
}


def get(name: str) -> ModuleType:
    """The family module of the family ``name`` (a ``Model.family``)."""
    module = FAMILIES.get(name)
    if module is None:
        raise AttnvizError(f"attnviz has no model family {name!r}; it reads {', '.join(FAMILIES)} models.")
    return module


def of(model: Model) -> ModuleType:
    """The family module of ``model``."""
    return get(model.family)


def reads(model: Model) -> str:
    """What a capture of ``model`` reads: its family's READS, and for attnviz's own models
    ("own") "image" when it is an image classifier, else "text"."""
    what = of(model).READS
    if what == "own":
        return "image" if model.image is not None else "text"
    return what


def family_of(model: Model) -> ModuleType:
    """The family module that reads ``model`` for context mixing, or an AttnvizError saying
    what mixing covers."""
    module = FAMILIES.get(model.family)
    if module is None or not hasattr(module, "anatomy"):
        raise AttnvizError(f"Context mixing does not cover {model.name} (a {model.family} model); "
                           f"it applies to {COVERED}.")
    return module
