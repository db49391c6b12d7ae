"""Inputs shared by the batch tests: short, varied sentences, deterministic."""
from __future__ import annotations

import json
from pathlib import Path

SUBJECTS = ["The cat", "A tired student", "Our neighbour", "The old bridge", "Every morning, the baker"]
VERBS = ["watched", "ignored", "painted", "counted", "remembered"]
OBJECTS = ["the river.", "three red apples!", "a long, quiet road.", "the stars; then slept.", "nothing at all?"]


def sentences(n: int) -> list[str]:
    return [f"{SUBJECTS[i % 5]} {VERBS[(i // 5) % 5]} {OBJECTS[(i * 3) % 5]} ({i})" for i in range(n)]


def write_jsonl(path: Path, n: int) -> Path:
    """``n`` inputs: strings, and every third an object with an id of its own."""
    lines = []
    for i, text in enumerate(sentences(n)):
        lines.append(json.dumps({"id": f"s{i}", "text": text} if i % 3 == 0 else text))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def sorted_table(table):
    return table.sort_by([("input_index", "ascending"), ("stack", "ascending"), ("layer", "ascending"),
                          ("head", "ascending")])
