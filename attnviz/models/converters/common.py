"""What every converter does the same way: check a state dict against the model class it is
for, and write (then load back) an image model's folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

Progress = Callable[[float, str], None]  # (fraction in [0, 1], message)


def check_state_dict(state: dict, model_cls, config, skip: tuple[str, ...] = ()) -> None:
    """Raise unless ``state`` holds exactly the tensors (names and shapes) that an empty
    ``model_cls(config)`` has, leaving out the names in ``skip`` (tied weights that are not
    stored). The empty model is built on the meta device: nothing is allocated."""
    with torch.device("meta"):
        model = model_cls(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in skip}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        missing = sorted(set(expected) - set(got))
        unexpected = sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        raise ValueError(f"state dict mismatch: missing {missing}, unexpected {unexpected}, shapes {wrong}")


def preprocessor_config(processor: str, resize: int, crop: int, mean: list[float], std: list[float]) -> dict:
    """A ``preprocessor_config.json`` for transformers' image processors: shortest edge to
    ``resize`` px (bicubic), centre crop ``crop`` px, rescale to [0, 1], normalise per channel."""
    return {
        "image_processor_type": processor,
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": resize},
        "resample": 3,  # PIL bicubic
        "do_center_crop": True,
        "crop_size": {"height": crop, "width": crop},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": mean,
        "image_std": std,
    }


def write_image_folder(out_dir: Path, state: dict[str, torch.Tensor], config, preprocessor: dict,
                       model_cls, progress: Progress) -> None:
    """Write ``model.safetensors``, ``config.json`` and ``preprocessor_config.json`` into
    ``out_dir``, then load the folder back with ``model_cls`` and raise unless every weight
    matched by name and shape (tensors keep the hub checkpoints' names, which transformers
    renames to its in-memory modules at load time, so loading is the check that counts)."""
    out_dir = Path(out_dir)
    progress(0.6, "writing model.safetensors")
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out_dir)
    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    progress(0.8, "checking that the folder loads")
    _, info = model_cls.from_pretrained(out_dir, output_loading_info=True)
    problems = {kind: names for kind, names in info.items() if names}
    if problems:
        raise ValueError(f"converted {model_cls.__name__} does not load cleanly: {problems}")
    progress(1.0, "done")
