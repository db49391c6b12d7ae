"""Loading a model by name: a bundled name, a local folder or a Hugging Face hub id.

Only safetensors weights are loaded; ``trust_remote_code`` is never enabled. Transformers
models are loaded with eager attention so that they return their attention probabilities.
"""
from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attnviz.device import default_device
from attnviz.errors import AttnvizError
from attnviz.models import TRANSFORMERS_LOCK, store
from attnviz.models.bundled import BUNDLED

FAMILIES = ("encoder", "decoder", "encoder-decoder", "image", "custom")
DECODER_TOKEN_CAP = 8192  # SmolLM2's context; attention is recorded, not materialised (attnviz.lazy)
SEQ2SEQ_TOKEN_CAP = 512
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TOKEN_CAP_ENV = "ATTNVIZ_MAX_TOKENS"  # a hosted demo's cap on every input's length (see token_cap)
MAX_PARAMS = 2_000_000_000  # 8 GB in float32; a config describing more is refused before loading
MAX_LAYERS = 256  # deeper configs are refused before even an empty model is built to count them
IMAGE_MODEL_TYPES = {"vit", "dinov2", "dinov2_with_registers", "clip_vision_model", "clip", "deit",
                     "beit", "siglip_vision_model", "dinov3_vit", "vit_msn", "vit_mae"}


@dataclass(frozen=True)
class ImageSpec:
    """How a model wants its pixels: side of the default square input, patch size in pixels,
    and the per-channel mean/std applied after scaling to [0, 1]."""

    size: int
    patch: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass
class Model:
    """A loaded model, ready for :func:`attnviz.capture`.

    family: one of FAMILIES; max_tokens: the longest input it is run on (longer text is
    truncated with a warning); lock: held while the model runs, so that sessions sharing it
    never interleave.
    """

    name: str
    family: str
    net: torch.nn.Module
    device: torch.device
    max_tokens: int
    tokenizer: Any = None
    image: ImageSpec | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def n_layers(self) -> int:
        cfg = self.net.config
        return getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "num_layers", 0)


def token_cap(limit: int) -> int:
    """``limit`` lowered to $ATTNVIZ_MAX_TOKENS when that is set: the longest input (text tokens
    or image patches) any model is run on. A hosted demo sets it to bound each request's memory,
    which grows with layers x heads x tokens^2."""
    cap = os.environ.get(TOKEN_CAP_ENV, "").strip()
    return min(limit, int(cap)) if cap.isdigit() and int(cap) > 0 else limit


def load_model(name: str, progress: store.Progress = store.no_progress, device: torch.device | None = None) -> Model:
    """Load ``name``: a bundled name (fetched on first use), a local folder, or a hub id."""
    name = str(name).strip()
    if not name:
        raise AttnvizError("No model name given.")
    device = device or default_device()
    if name in BUNDLED:
        folder = store.ensure(name, progress)
        return _load_folder(folder, name, device)
    path = Path(name).expanduser()
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except OSError:  # e.g. a name too long to be a path
        is_dir = exists = False
    if is_dir:
        return _load_folder(path, name, device)
    if exists:
        raise AttnvizError(f"'{name}' is a file; give the folder that holds config.json and *.safetensors.")
    if HUB_ID.match(name) and not name.startswith((".", "/")):
        return _load_hub(name, device)
    raise AttnvizError(
        f"Unknown model '{name}': not a bundled name ({', '.join(BUNDLED)}), "
        "not an existing folder, and not a hub id like 'org/name'."
    )


def check_folder(folder: Path) -> None:
    """Refuse folders that are not loadable safely: no config.json, or pickle weights only."""
    if not (folder / "config.json").is_file():
        raise AttnvizError(f"{folder} has no config.json: it is not a model folder.")
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise AttnvizError(
                f"{folder} holds only pickle weights ({', '.join(pickles[:3])}); attnviz loads only "
                "*.safetensors because unpickling can run arbitrary code. Convert them once, in a "
                "Python you trust, with model.save_pretrained(folder, safe_serialization=True)."
            )
        raise AttnvizError(f"{folder} has no *.safetensors weights.")


def _load_folder(folder: Path, name: str, device: torch.device) -> Model:
    check_folder(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise AttnvizError(f"{folder}/config.json is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise AttnvizError(f"{folder}/config.json must hold a JSON object.")
    if config.get("attnviz_custom"):
        from attnviz.models import custom

        return custom.load(folder, name, device)
    return _load_transformers(str(folder), name, device, local_files_only=True)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub's host answers at all (a quick check, so that offline fails at once
    instead of after the client's retries). ``HF_HUB_OFFLINE=1`` counts as unreachable."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _load_hub(repo_id: str, device: torch.device) -> Model:
    from huggingface_hub import list_repo_files
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    offline = (f"Could not reach the Hugging Face hub for '{repo_id}'; offline, use a bundled model "
               f"({', '.join(BUNDLED)}) or a local folder.")
    if not _hub_reachable():
        raise AttnvizError(offline)
    try:
        files = list_repo_files(repo_id)
    except (RepositoryNotFoundError, HFValidationError):
        raise AttnvizError(f"There is no model '{repo_id}' on the Hugging Face hub.") from None
    except Exception:  # proxy refused, timeouts: all mean "cannot reach the hub"
        raise AttnvizError(offline) from None
    if not any(f.endswith(".safetensors") for f in files):
        raise AttnvizError(f"'{repo_id}' on the hub has no safetensors weights; attnviz refuses pickle weights.")
    return _load_transformers(repo_id, repo_id, device, local_files_only=False)


def _family(config) -> str:
    archs = " ".join(getattr(config, "architectures", None) or [])
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    if config.model_type in IMAGE_MODEL_TYPES:
        return "image"
    if "ForCausalLM" in archs or "LMHeadModel" in archs or getattr(config, "is_decoder", False):
        return "decoder"
    return "encoder"


def _backbone_class(config):
    """The class named in ``config.architectures`` when it is a bare backbone (``...Model`` or
    ``...WithProjection``) that transformers has; None otherwise (then AutoModel decides)."""
    import transformers as tf

    archs = getattr(config, "architectures", None) or []
    if archs and archs[0].endswith(("Model", "WithProjection")):
        return getattr(tf, archs[0], None)
    return None


def _net_class(config, family: str):
    """The transformers class that loads a checkpoint of this config and family."""
    import transformers as tf

    if family == "encoder-decoder":
        return tf.AutoModelForSeq2SeqLM
    if family == "decoder":
        return tf.AutoModelForCausalLM
    if config.model_type == "clip":  # a whole CLIP checkpoint: its image tower
        return tf.CLIPVisionModel
    return _backbone_class(config) or tf.AutoModel  # e.g. CLIPVisionModelWithProjection


def _weights_params(source: str, local: bool) -> int | None:
    """How many numbers the checkpoint's *.safetensors hold (read from their headers only;
    from the hub's metadata for a hub id); None when the hub does not say."""
    import math

    from safetensors import SafetensorError, safe_open

    if not local:
        from huggingface_hub import get_safetensors_metadata

        try:
            return sum(get_safetensors_metadata(source).parameter_count.values())
        except Exception:  # no metadata on the hub: the MAX_PARAMS bound alone applies
            return None
    total = 0
    for path in sorted(Path(source).glob("*.safetensors")):
        try:
            with safe_open(str(path), "pt") as f:
                total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        except (SafetensorError, OSError, ValueError) as e:
            raise AttnvizError(f"{path.name} is not a valid safetensors file: {str(e).splitlines()[0]}") from None
    return total


def check_size(config, cls, source: str, name: str, local: bool) -> None:
    """Refuse, before any weight is allocated, a config whose model would be too large
    (MAX_LAYERS, MAX_PARAMS) or larger than its weights: transformers fills weights missing
    from the checkpoint with fresh random ones, so a config.json claiming 10^9-wide layers or
    thousands of layers over small weights would otherwise allocate all of it."""
    depths = [v for k, v in _flat_items(config.to_dict()) if str(k).endswith(("layers", "layer")) and isinstance(v, int)]
    if any(d > MAX_LAYERS for d in depths):
        raise AttnvizError(f"The config.json of '{name}' asks for {max(depths):,} layers; attnviz loads at most "
                           f"{MAX_LAYERS}. Refused before loading anything.")
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated
            empty = cls.from_config(config) if hasattr(cls, "from_config") else cls._from_config(
                config.vision_config if config.model_type == "clip" else config)
    except (TypeError, ValueError, RuntimeError, AttributeError, KeyError) as e:
        raise AttnvizError(f"The config.json of '{name}' does not describe a model that can be built: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    params = sum(p.numel() for p in empty.parameters())
    if params > MAX_PARAMS:
        raise AttnvizError(f"The config.json of '{name}' describes {params:,} parameters; "
                           f"attnviz loads at most {MAX_PARAMS:,}. Refused before loading anything.")
    weights = _weights_params(source, local)
    if weights is not None and params > 1.02 * weights + 1_000_000:
        raise AttnvizError(f"The config.json of '{name}' describes {params / 1e6:,.0f} million parameters but its "
                           f"weights hold only {weights / 1e6:,.0f} million: config and weights do not match "
                           "(check hidden_size, num_hidden_layers, vocab_size). Refused before loading anything.")


def _flat_items(d: dict):
    """(key, value) pairs of a nested dict, sub-configs (text_config, vision_config) included."""
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat_items(v)
        else:
            yield k, v


def _load_transformers(source: str, name: str, device: torch.device, local_files_only: bool) -> Model:
    with TRANSFORMERS_LOCK:  # one at a time: see attnviz.models.TRANSFORMERS_LOCK
        return _load_transformers_unlocked(source, name, device, local_files_only)


def _load_transformers_unlocked(source: str, name: str, device: torch.device, local_files_only: bool) -> Model:
    import transformers as tf

    tf.utils.logging.disable_progress_bar()  # no "Loading weights" bars in logs and terminals
    kwargs = dict(local_files_only=local_files_only, trust_remote_code=False)
    try:
        config = tf.AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AttnvizError(f"Cannot read the configuration of '{name}': {str(e).splitlines()[0]}") from None
    family = _family(config)
    cls = _net_class(config, family)
    check_size(config, cls, source, name, local_files_only)
    model_kwargs = dict(kwargs, attn_implementation="eager", use_safetensors=True, dtype=torch.float32)
    try:
        net = cls.from_pretrained(source, **model_kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        if "mismatched_sizes" in str(e):
            raise AttnvizError(f"Cannot load the weights of '{name}': some tensors in its *.safetensors have other "
                               "shapes than its config.json describes (check hidden_size, vocab_size and the "
                               "like).") from None
        raise AttnvizError(f"Cannot load the weights of '{name}': {str(e).splitlines()[0]}") from None
    net.eval().to(device)
    if family == "image":
        return Model(name, family, net, device, max_tokens=0, image=_image_spec(source, net.config, kwargs))
    tokenizer = tf.AutoTokenizer.from_pretrained(source, **kwargs)
    # a model that does not say how long its inputs may be (relative positions) gets the decoders' cap
    limit = getattr(net.config, "max_position_embeddings", None) or DECODER_TOKEN_CAP
    if family == "decoder":
        limit = min(limit, DECODER_TOKEN_CAP)
    elif family == "encoder-decoder":
        limit = min(limit, SEQ2SEQ_TOKEN_CAP)
    return Model(name, family, net, device, max_tokens=token_cap(int(limit)), tokenizer=tokenizer)


def _image_spec(source: str, config, kwargs) -> ImageSpec:
    """Mean, std and size from preprocessor_config.json when present, else from the config."""
    import transformers as tf

    mean, std, size = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), getattr(config, "image_size", 224)
    try:
        proc = tf.AutoImageProcessor.from_pretrained(source, **kwargs)
        mean, std = tuple(proc.image_mean), tuple(proc.image_std)
        crop = getattr(proc, "crop_size", None) or getattr(proc, "size", None) or {}
        size = crop.get("height") or crop.get("shortest_edge") or size
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no preprocessor config: the model's own defaults above
    patch = config.patch_size
    return ImageSpec(size=int(size), patch=int(patch if isinstance(patch, int) else patch[0]),
                     mean=mean, std=std)
