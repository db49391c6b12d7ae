"""Loading a model by name: a bundled name, a local folder or a Hugging Face hub id.

Only safetensors weights are loaded; ``trust_remote_code`` is never enabled. Transformers
models are loaded with eager attention so that they return their attention probabilities.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import attnviz.limits as limits
from attnviz.device import default_device
from attnviz.errors import AttnvizError
from attnviz.limits import token_cap
from attnviz.models import TRANSFORMERS_LOCK, store
from attnviz.models.bundled import BUNDLED
from attnviz.models.model import ImageSpec, Model

DECODER_TOKEN_CAP = 8192  # SmolLM2's context; attention is recorded, not materialised (attnviz.lazy)
SEQ2SEQ_TOKEN_CAP = 512
IMAGE_TOKEN_CAP = 4096  # patches


@dataclass(frozen=True)
class Loading:
    """What loading a checkpoint needs to know of its family (the family itself, what it reads
    and how it is captured, is attnviz.families', above the model store).

    auto_class: the transformers auto class of a checkpoint of the family; ``backbone``: a bare
    backbone named in the config (``...Model``) is loaded as it is rather than by the auto
    class. stacks: the attention stacks a capture gives. text_cap: the family's cap on text
    length (None: what the model embeds, at most DECODER_TOKEN_CAP for a capture's budget).
    images: an image model (its sizes in its vision config, its text tower's in its text
    config; patches capped at IMAGE_TOKEN_CAP; a tokenizer only for a text tower; its image
    settings read from its image processor). processor: a vision-language model, read with its
    processor (tokenizer and image processor), its maps not recorded lazily."""
    auto_class: str
    backbone: bool = True
    stacks: int = 1
    text_cap: int | None = None
    images: bool = False
    processor: bool = False


# Model.family -> how a checkpoint of it is loaded ("custom": attnviz's own, loaded by FOLDER_FORMATS)
LOADING = {
    "encoder": Loading("AutoModel"),
    "decoder": Loading("AutoModelForCausalLM", text_cap=DECODER_TOKEN_CAP),
    "encoder-decoder": Loading("AutoModelForSeq2SeqLM", backbone=False, stacks=3, text_cap=SEQ2SEQ_TOKEN_CAP),
    "image": Loading("AutoModel", images=True),
    "vision-language": Loading("AutoModelForImageTextToText", backbone=False, text_cap=DECODER_TOKEN_CAP,
                               processor=True),
}
MIN_TOKENS = 16  # a model whose capture budget does not reach this many tokens is refused
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MAX_LAYERS = 256  # deeper configs are refused before even an empty model is built to count them
log = logging.getLogger("attnviz")
# attnviz's own folder formats: the key in config.json that marks one -> the function that loads
# such a folder (folder, name, device) -> Model. attnviz.lab registers "attnviz_custom" when
# attnviz is imported, so that nothing in attnviz.models imports the lab.
FOLDER_FORMATS: dict[str, Callable[[Path, str, torch.device], Model]] = {}


def load_model(name, progress: store.Progress = store.no_progress, device: torch.device | None = None, *,
               label: str | None = None, tokenizer=None, processor=None) -> Model:
    """Load ``name``: a bundled name (fetched on first use), a local folder, or a hub id; or
    wrap a transformers model already loaded, given as ``name`` with its ``tokenizer`` or
    ``processor`` (see :func:`from_net`).

    ``label`` is what messages and the result call the model (default: ``name``); a hosted
    demo passes one for uploads, so that no server path reaches a visitor. Whatever goes wrong
    while reading the files (malformed JSON nested thousands deep, a tokenizer.json of the wrong
    shape, a config with zero heads) becomes one AttnvizError naming the model.
    """
    if not isinstance(name, (str, os.PathLike)):
        return from_net(name, tokenizer=tokenizer, processor=processor)
    name = str(name).strip()
    if not name:
        raise AttnvizError("No model name given.")
    label = label or name
    device = device or default_device()
    try:
        return _load(name, label, progress, device)
    except AttnvizError:
        raise
    except MemoryError:
        raise AttnvizError(f"'{label}' needs more memory than this server has; it was not loaded.") from None
    except Exception as e:  # malformed files reach transformers' and tokenizers' internals
        log.info("loading %s failed", label, exc_info=True)  # the server log, never the page or terminal
        raise AttnvizError(f"Cannot load '{label}': its files are malformed or describe something attnviz cannot "
                           f"run ({type(e).__name__}).") from None


def _load(name: str, label: str, progress: store.Progress, device: torch.device) -> Model:
    if name in BUNDLED:
        folder = store.ensure(name, progress)
        return _load_folder(folder, label, device)
    path = Path(name).expanduser()
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except OSError:  # e.g. a name too long to be a path
        is_dir = exists = False
    if is_dir:
        return _load_folder(path, label, device)
    if exists:
        raise AttnvizError(f"'{label}' is a file; give the folder that holds config.json and *.safetensors.")
    if HUB_ID.match(name) and not name.startswith((".", "/")):
        return _load_hub(name, device)
    raise AttnvizError(
        f"Unknown model '{label}': not a bundled name ({', '.join(BUNDLED)}), "
        "not an existing folder, and not a hub id like 'org/name'."
    )


def check_folder(folder: Path, label: str | None = None) -> None:
    """Refuse folders that are not loadable safely: no config.json, or pickle weights only.
    Messages call the folder ``label`` (default: its path)."""
    label = label or str(folder)
    if not (folder / "config.json").is_file():
        raise AttnvizError(f"'{label}' has no config.json: it is not a model folder.")
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise AttnvizError(
                f"'{label}' holds only pickle weights ({', '.join(pickles[:3])}); attnviz loads only "
                "*.safetensors because unpickling can run arbitrary code. Convert them once, in a "
                "Python you trust, with model.save_pretrained(folder, safe_serialization=True)."
            )
        raise AttnvizError(f"'{label}' has no *.safetensors weights.")


def _load_folder(folder: Path, name: str, device: torch.device) -> Model:
    check_folder(folder, name)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise AttnvizError(f"The config.json of '{name}' is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise AttnvizError(f"The config.json of '{name}' must hold a JSON object.")
    for key, load in FOLDER_FORMATS.items():
        if config.get(key):
            return load(folder, name, device)
    return _load_transformers(str(folder), name, device, local_files_only=True)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub's host answers at all (a quick check, so that offline fails at once
    instead of after the client's retries). ``HF_HUB_OFFLINE=1`` counts as unreachable."""
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


def _mapping(name: str) -> dict:
    """One of transformers' model-class mappings, model_type -> class name."""
    from transformers.models.auto import modeling_auto

    return getattr(modeling_auto, name)


def _what_it_is(config) -> str | None:
    """A one-line reason why attnviz cannot show this kind of model, or None when it can."""
    kind = config.model_type
    for mapping, what in (("MODEL_FOR_CTC_MAPPING_NAMES", "a speech model"),
                          ("MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES", "a speech model"),
                          ("MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES", "an audio model"),
                          ("MODEL_FOR_TEXT_TO_WAVEFORM_MAPPING_NAMES", "a speech model"),
                          ("MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING_NAMES", "a video model"),
                          ("MODEL_FOR_TIME_SERIES_PREDICTION_MAPPING_NAMES", "a time-series model"),
                          ("MODEL_FOR_TIME_SERIES_CLASSIFICATION_MAPPING_NAMES", "a time-series model")):
        if kind in _mapping(mapping):
            return what
    if kind in _mapping("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES") and (
            getattr(config, "is_encoder_decoder", False) or getattr(config, "image_token_id", None) is None):
        return ("a vision-language model whose image tokens attnviz cannot place (it reads LLaVA-, PaliGemma- "
                "and Idefics3-style models: a decoder reading image tokens in its prompt)")
    if not any(str(k).endswith(("heads", "n_head")) for k, _ in _flat_items(config.to_dict())):
        return "a network without attention layers (no attention heads in its config)"
    return None


def _family(config) -> str:
    """encoder, decoder, encoder-decoder, image or vision-language, from what transformers says
    the model is (its model-class mappings), not from its name.

    Two-tower image-text models (CLIP, SigLIP) are "image": a picture goes to the vision tower
    and a text to the text tower (see Model.towers). A model_type that transformers has as a
    causal language model and not as a masked one is a decoder even without its LM head."""
    kind = config.model_type
    archs = getattr(config, "architectures", None) or []
    if kind in _mapping("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES") and hasattr(config, "vision_config"):
        return "vision-language"
    if getattr(config, "is_encoder_decoder", False) or kind in _mapping("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"):
        return "encoder-decoder"
    if (kind in _mapping("MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES")
            or kind in _mapping("MODEL_FOR_IMAGE_MAPPING_NAMES")
            or kind in _mapping("MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES")
            or (hasattr(config, "num_channels") and hasattr(config, "patch_size") and not hasattr(config, "vocab_size"))):
        return "image"
    causal = _mapping("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES")
    if (any(a in causal.values() for a in archs) or getattr(config, "is_decoder", False)
            or (kind in causal and kind not in _mapping("MODEL_FOR_MASKED_LM_MAPPING_NAMES"))):
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
    """The transformers class that loads a checkpoint of this config and family: the language
    model head when the checkpoint has one, else the bare backbone it names."""
    import transformers as tf

    loading = LOADING[family]
    return (loading.backbone and _backbone_class(config)) or getattr(tf, loading.auto_class)


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


def check_size(config, cls, source: str, name: str, local: bool) -> torch.nn.Module:
    """Refuse, before any weight is allocated, a config whose model would be too large or larger
    than its weights; return the model built on the meta device (shapes only).

    Counted (:func:`load_bytes`): parameters **and** buffers, and what building the largest
    buffer takes beside them (a causal-mask buffer grows with max_position_embeddings squared: a
    9 kB GPT-Neo config claiming 30,000 positions asks for gigabytes of them), against the model
    budget (``limits.MODEL_BYTES``); depth against MAX_LAYERS, before even the empty model is
    built. Transformers fills weights missing from the checkpoint with fresh random
    ones, so a config describing more parameters than its safetensors hold is refused too.
    """
    depths = [v for k, v in _flat_items(config.to_dict()) if str(k).endswith(("layers", "layer")) and isinstance(v, int)]
    if any(d > MAX_LAYERS for d in depths):
        raise AttnvizError(f"The config.json of '{name}' asks for {max(depths):,} layers; attnviz loads at most "
                           f"{MAX_LAYERS}. Refused before loading anything.")
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated
            empty = cls.from_config(config) if hasattr(cls, "from_config") else cls._from_config(config)
    except (TypeError, ValueError, RuntimeError, AttributeError, KeyError, ZeroDivisionError) as e:
        raise AttnvizError(f"The config.json of '{name}' does not describe a model that can be built: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    params = sum(p.numel() for p in empty.parameters())
    held = load_bytes(empty)
    room = limits.budget(limits.MODEL_BYTES)
    if held > room:
        raise AttnvizError(f"The config.json of '{name}' describes a model that takes {held / 1e9:,.2f} GB to load "
                           f"(parameters and buffers); this server loads at most {room / 1e9:,.2f} GB. Refused before "
                           "loading anything.")
    weights = _weights_params(source, local)
    if weights is not None and params > 1.02 * weights + 1_000_000:
        raise AttnvizError(f"The config.json of '{name}' describes {params / 1e6:,.0f} million parameters but its "
                           f"weights hold only {weights / 1e6:,.0f} million: config and weights do not match "
                           "(check hidden_size, num_hidden_layers, vocab_size). Refused before loading anything.")
    return empty


def model_bytes(net: torch.nn.Module) -> int:
    """Bytes of a model's parameters (as float32, how attnviz loads them) and buffers (in their
    own dtype); works on a model built on the meta device."""
    params = sum(p.numel() for p in net.parameters()) * 4
    return params + sum(b.numel() * b.element_size() for b in net.buffers())


BUFFER_TEMPORARIES = 2  # building a buffer holds up to this many temporaries of its size beside it


def load_bytes(net: torch.nn.Module) -> int:
    """The peak memory of loading ``net`` (an upper estimate): :func:`model_bytes`, plus the
    temporaries of the largest buffer while it is built, BUFFER_TEMPORARIES of its size (GPT-Neo
    builds its causal mask of max_positions^2 booleans per layer as ones, then their lower
    triangle, and a local layer's band as a second triangle and their exclusive or).
    Parameters are not counted twice: safetensors are mapped, not copied. Checked against a
    measured peak in tests/test_hosted.py; works on a model built on the meta device."""
    largest = max((b.numel() * b.element_size() for b in net.buffers()), default=0)
    return model_bytes(net) + BUFFER_TEMPORARIES * largest


WINDOWED_TYPES = ("swin", "swinv2", "donut-swin")  # windows placed on each stage's grid: dense maps per stage


def positions(config) -> int | None:
    """The most positions a text config says its model reads: ``max_position_embeddings``, or
    MPT's ``max_seq_len`` (its ALiBi table is that long); None when it says nothing."""
    return getattr(config, "max_position_embeddings", None) or getattr(config, "max_seq_len", None)


def token_limit(config, family: str, name: str, cls=None) -> int:
    """The longest input a model of ``config`` is run on: what it can embed (its position table,
    less the offset some families start at), at most the family's cap, then lowered until a
    capture fits the capture budget (``limits.tokens_within``) and to $ATTNVIZ_MAX_TOKENS.

    Refuses a model for which not even MIN_TOKENS fit."""
    loading = LOADING[family]
    if loading.images:
        limit = IMAGE_TOKEN_CAP
    else:
        limit = min(positions(config) or DECODER_TOKEN_CAP, loading.text_cap or DECODER_TOKEN_CAP)
    fits = limits.tokens_within(int(limit), *capture_shape(config, family, cls))
    if fits < MIN_TOKENS:
        raise AttnvizError(f"A capture of '{name}' would need more memory than this server allows even for "
                           f"{MIN_TOKENS} tokens; it was not loaded.")
    return token_cap(fits)


def capture_shape(config, family: str, cls=None) -> tuple[int, int, int, int, bool]:
    """What a capture's memory grows with, read from a transformers ``config`` (the vision
    tower's for image models): (layers, heads, hidden size, stacks, recorded), the arguments
    of ``limits.capture_bytes`` after the length. ``recorded``: the model class ``cls`` runs
    SDPA or transformers' attention registry, so its attention is recorded, not materialised.

    A windowed model (Swin: ``depths[s]`` blocks of ``num_heads[s]`` heads in stage s, each
    stage a quarter of the previous one's patches) keeps dense maps per stage: its shape is
    given as one materialised layer over stage 1's patches with as many heads as the stages'
    maps hold together (the sum over s of depths[s] x num_heads[s] / 16^s, rounded up), and
    its widest stage's hidden size."""
    loading = LOADING[family]
    if config.model_type in WINDOWED_TYPES:
        depths, heads = list(config.depths), list(config.num_heads)
        held = sum(d * h / 16 ** s for s, (d, h) in enumerate(zip(depths, heads)))
        return 1, math.ceil(held), int(config.embed_dim) * 2 ** (len(depths) - 1), 1, False
    text = getattr(config, "text_config", None) if loading.images else None
    vision = getattr(config, "vision_config", None) if loading.images else None
    sizes = vision or text or config
    found = list(_flat_items(sizes.to_dict()))
    layers = _largest(found, ("num_hidden_layers", "num_layers", "n_layer", "encoder_layers"), ("depths",))
    heads = _largest(found, ("num_attention_heads", "num_heads", "n_head", "encoder_attention_heads"))
    hidden = _largest(found, ("hidden_size", "d_model", "n_embd", "embed_dim"))
    recorded = (bool(getattr(cls, "_supports_sdpa", False) or getattr(cls, "_supports_attention_backend", False))
                and not loading.processor)
    return int(layers), int(heads), int(hidden), loading.stacks, recorded


def _largest(found: list[tuple[str, object]], keys: tuple[str, ...], summed: tuple[str, ...] = ()) -> int:
    """The largest positive integer among the (key, value) pairs ``found`` for ``keys`` (a list counts by its
    largest item), or by its sum for ``summed``; 1 when none is there."""
    values = [1]
    for key, v in found:
        items = v if isinstance(v, (list, tuple)) else [v]
        ints = [int(i) for i in items if isinstance(i, int) and not isinstance(i, bool) and i > 0]
        if key in keys and ints:
            values.append(max(ints))
        elif key in summed and ints:
            values.append(sum(ints))
    return max(values)


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
        raise AttnvizError(f"Cannot read the configuration of '{name}': {_first_line(e, source, name)}") from None
    why_not = _what_it_is(config)
    if why_not:
        raise AttnvizError(f"'{name}' is {why_not} (model type '{config.model_type}'); attnviz shows the "
                           "attention of text and image models only.")
    family = _family(config)
    cls = _net_class(config, family)
    empty = check_size(config, cls, source, name, local_files_only)
    cap = token_limit(config, family, name, type(empty))
    model_kwargs = dict(kwargs, attn_implementation="eager", use_safetensors=True, dtype=torch.float32)
    try:
        net = cls.from_pretrained(source, **model_kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        if "mismatched_sizes" in str(e):
            raise AttnvizError(f"Cannot load the weights of '{name}': some tensors in its *.safetensors have other "
                               "shapes than its config.json describes (check hidden_size, vocab_size and the "
                               "like).") from None
        raise AttnvizError(f"Cannot load the weights of '{name}': {_first_line(e, source, name)}") from None
    net.eval().to(device)
    if LOADING[family].processor:
        processor = _processor(source, name, kwargs)
        return wrap(net, name, family, device, processor.tokenizer, image_spec(net.config, processor), processor,
                    cap=cap)
    image = _image_spec(source, net.config, kwargs) if LOADING[family].images else None
    return wrap(net, name, family, device, _tokenizer(source, name, family, kwargs), image, cap=cap)


def _processor(source: str, name: str, kwargs):
    """A vision-language checkpoint's processor (its tokenizer and image processor, which
    together expand the image token of a prompt into the image's tokens)."""
    import transformers as tf

    try:
        processor = tf.AutoProcessor.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError) as e:
        raise AttnvizError(f"Cannot read the processor of '{name}' (a vision-language model needs its "
                           f"processor_config.json, image processor and tokenizer): {_first_line(e, source, name)}") from None
    if getattr(processor, "tokenizer", None) is None or getattr(processor, "image_processor", None) is None:
        raise AttnvizError(f"The processor of '{name}' has no tokenizer and image processor; a vision-language "
                           "model needs both.")
    return processor


def _tokenizer(source: str, name: str, family: str, kwargs):
    """The checkpoint's tokenizer; None for an image model without one (a two-tower model such
    as CLIP with its tokenizer gets it, for its text tower)."""
    import transformers as tf

    try:
        return tf.AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError) as e:
        if LOADING[family].images:
            return None
        raise AttnvizError(f"Cannot read the tokenizer of '{name}' (a {family} model needs one: tokenizer.json, "
                           f"or vocab files with tokenizer_config.json), or its files are malformed: "
                           f"{_first_line(e, source, name)}") from None


def text_limit(net: torch.nn.Module, family: str) -> int:
    """The longest text ``net`` can read: its (text) config's max_position_embeddings, lowered
    to what its learned position table can really embed (RoBERTa-style tables start counting
    at padding_idx + 1), and capped for decoders (DECODER_TOKEN_CAP) and encoder-decoders
    (SEQ2SEQ_TOKEN_CAP). A model without a limit (relative positions) gets the decoders' cap."""
    config = net.config.get_text_config() if hasattr(net.config, "get_text_config") else net.config
    limit = positions(config) or DECODER_TOKEN_CAP
    for path, module in net.named_modules():
        if (isinstance(module, torch.nn.Embedding) and "position" in path.rsplit(".", 1)[-1]
                and module.padding_idx is not None):
            limit = min(limit, module.num_embeddings - module.padding_idx - 1)
    cap = LOADING[family].text_cap
    return int(min(limit, cap) if cap else limit)


def wrap(net: torch.nn.Module, name: str, family: str, device: torch.device, tokenizer=None,
         image: ImageSpec | None = None, processor=None, cap: int | None = None) -> Model:
    """A Model around a loaded transformers ``net`` of ``family``, with its length caps: text as
    long as it can embed (:func:`text_limit`) and, with ``cap`` (the capture budget's, see
    :func:`token_limit`), at most that many tokens and image patches."""
    limit = text_limit(net, family) if tokenizer is not None else 0
    if cap is not None:
        limit = min(limit, cap)
    patches = (cap or token_cap(IMAGE_TOKEN_CAP)) if image is not None else 0
    return Model(name, family, net, device, max_tokens=token_cap(limit), tokenizer=tokenizer, image=image,
                 processor=processor, max_patches=patches)


def _first_line(error: Exception, source: str, name: str) -> str:
    """The first line of a library's message, with the model's folder called by its ``name``."""
    return (str(error).splitlines() or [type(error).__name__])[0].replace(source, name)


def _image_spec(source: str, config, kwargs) -> ImageSpec:
    """Mean, std and size from preprocessor_config.json when present, else from the config."""
    import transformers as tf

    try:
        proc = tf.AutoImageProcessor.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        proc = None  # no preprocessor config: the model's own defaults
    return image_spec(config, proc)


def image_spec(config, proc=None) -> ImageSpec:
    """The ImageSpec of a model ``config``: mean, std and size from its image processor
    ``proc`` when given (a processor holding one counts too), else the config's own defaults."""
    config = getattr(config, "vision_config", None) or config  # two towers, vision-language: the vision side
    mean, std, size = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), getattr(config, "image_size", 224)
    proc = getattr(proc, "image_processor", None) or proc
    if getattr(proc, "image_mean", None) is not None and getattr(proc, "image_std", None) is not None:
        mean, std = tuple(proc.image_mean), tuple(proc.image_std)
        crop = getattr(proc, "crop_size", None) or getattr(proc, "size", None) or {}
        crop = crop if isinstance(crop, dict) else dict(crop)
        size = crop.get("height") or crop.get("shortest_edge") or size
    patch = config.patch_size
    patch = int(patch if isinstance(patch, int) else patch[0])
    window, depths = getattr(config, "window_size", None), getattr(config, "depths", None)
    align = patch * window * 2 ** (len(depths) - 1) if isinstance(window, int) and depths else 0
    return ImageSpec(size=int(size), patch=patch, mean=mean, std=std, align=align)


def from_net(net, *, tokenizer=None, processor=None, name: str | None = None) -> Model:
    """A Model around a transformers model already loaded in this Python, with its
    ``tokenizer`` (text) or ``processor`` (images; a processor holding a tokenizer gives it too).

    The model's attention implementation is switched to eager (transformers returns attention
    probabilities only there); it is put in eval mode and stays on its device."""
    config = getattr(net, "config", None)
    if not isinstance(net, torch.nn.Module) or not hasattr(config, "model_type"):
        raise AttnvizError(f"load_model takes a name, a folder or a transformers model, not {type(net).__name__}; "
                           "for your own torch module, record its attention with attnviz.record_attention() "
                           "and make a result with AttentionResult.from_maps.")
    name = name or getattr(config, "name_or_path", "") or type(net).__name__
    why_not = _what_it_is(config)
    if why_not:
        raise AttnvizError(f"'{name}' is {why_not} (model type '{config.model_type}'); attnviz shows the "
                           "attention of text and image models only.")
    family = _family(config)
    tokenizer = tokenizer or getattr(processor, "tokenizer", None)
    loading = LOADING[family]
    if tokenizer is None and not loading.images:
        raise AttnvizError(f"'{name}' is a {family} model: give its tokenizer too, "
                           "load_model(model, tokenizer=tokenizer).")
    if getattr(config, "_attn_implementation", "eager") != "eager":
        net.set_attn_implementation("eager")
    if loading.processor and getattr(processor, "image_processor", None) is None:
        raise AttnvizError(f"'{name}' is a vision-language model: give its processor too, "
                           "load_model(model, processor=processor).")
    image = image_spec(config, processor) if loading.images or loading.processor else None
    device = next(net.parameters()).device
    return wrap(net.eval(), name, family, device, tokenizer, image, processor if loading.processor else None)
