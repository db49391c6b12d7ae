"""attnviz: look inside attention models.

    import attnviz
    model = attnviz.load_model("minilm-l6")    # a bundled name, a hub id or a local folder
    result = attnviz.capture(model, "The cat sat on the mat.")   # or a PIL image, or a pair
    result.save("cat.npz")
    mixed = attnviz.mixing(model, "The cat sat on the mat.")   # context mixing: docs/mixing.md
"""
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from attnviz import lab  # noqa: F401  (registers attnviz's own model format with the loader)
from attnviz.capture import capture
from attnviz.errors import AttnvizError
from attnviz.mixing import Mixing, mixing, value_norms
from attnviz.models.loader import Model, load_model
from attnviz.recorder import record_attention
from attnviz.result import AttentionResult, PatchGrid

try:
    __version__ = _version("attnviz")
except PackageNotFoundError:  # a clone that was never installed
    __version__ = "unknown"

__all__ = ["AttentionResult", "AttnvizError", "Mixing", "Model", "PatchGrid", "capture", "load_model", "mixing",
           "record_attention", "value_norms"]
