"""Which model trains on which task, in one place for the command line and the app.

A task is a toy task (copy, reverse, sort, histogram: sequence to sequence, the transformer
only), ``sentiment`` or ``csv:FILE`` (text classification: lstm-attention, attention-lstm,
transformer), or ``digits`` or ``images:DIR`` (image classification: vit). :func:`train` builds
the data and the model, trains it, measures it on held-out data and saves it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from attnviz.errors import AttnvizError
from attnviz.lab import custom, datasets
from attnviz.lab.classify import ARCHS, TEXT_ARCHS, Classifier, ClassifierConfig
from attnviz.lab.custom import CustomConfig, CustomNet
from attnviz.lab.toy_tasks import TASKS as TOY_TASKS
from attnviz.lab.train import Data, Evaluation, Trainer, evaluate, evaluate_classifier

TEXT_TASKS = ("sentiment", "csv")
IMAGE_TASKS = ("digits", "images")
DEFAULT_STEPS = {"toy": 300, "text": 300, "image": 1500}
IMAGE_SIDE, PATCH = 32, 8
LEARNING_RATES = {"vit": 1e-3}  # the others train at attnviz.lab.train.LEARNING_RATE


def kind_of(task: str) -> str:
    """"toy", "text" or "image" for a task name (``csv:FILE`` and ``images:DIR`` by their prefix)."""
    name = task.split(":", 1)[0]
    if name in TOY_TASKS:
        return "toy"
    if name in TEXT_TASKS:
        return "text"
    if name in IMAGE_TASKS:
        return "image"
    raise AttnvizError(f"Unknown task '{task}'; the tasks are {', '.join(TOY_TASKS)}, sentiment, digits, "
                       "csv:FILE and images:DIR.")


def check(task: str, arch: str) -> str:
    """The task's kind, once ``arch`` is known to fit it; AttnvizError otherwise."""
    kind = kind_of(task)
    if arch not in ARCHS:
        raise AttnvizError(f"Unknown architecture '{arch}'; choose one of {', '.join(ARCHS)}.")
    fits = {"toy": ("transformer",), "text": TEXT_ARCHS, "image": ("vit",)}[kind]
    if arch not in fits:
        what = {"toy": "a sequence-to-sequence toy task", "text": "a text task", "image": "an image task"}[kind]
        raise AttnvizError(f"{arch} does not fit {task}: {task.split(':')[0]} is {what}, trained with "
                           f"{' or '.join(fits)}.")
    return kind


def load_data(task: str, seed: int = 0) -> Data:
    """The data of a classification task (``csv:FILE``, ``images:DIR``: read from disk)."""
    name, _, path = task.partition(":")
    if name in ("csv", "images") and not path:
        raise AttnvizError(f"Give the {'file' if name == 'csv' else 'folder'} after the colon: {name}:PATH.")
    if name == "sentiment":
        return datasets.sentiment(seed)
    if name == "digits":
        return datasets.digits(IMAGE_SIDE, seed)
    if name == "csv":
        try:
            return datasets.read_csv(Path(path).read_bytes(), Path(path).name, seed)
        except OSError as e:
            raise AttnvizError(f"Cannot read {path}: {e.strerror}") from None
    if name == "images":
        return datasets.read_image_folder(Path(path), IMAGE_SIDE, seed)
    raise AttnvizError(f"{task} is not a classification task.")


def build(arch: str, data: Data, seed: int = 0) -> Classifier:
    """A fresh classifier of ``arch`` for ``data`` (default sizes: d_model 64, 2 layers of 4
    heads; the ViT reads IMAGE_SIDE px images in PATCH px patches)."""
    if data.kind == "image":
        cfg = ClassifierConfig(arch=arch, task=data.task, n_classes=len(data.labels), length=data.side, patch=PATCH)
        return Classifier(cfg, None, data.labels, seed=seed)
    cfg = ClassifierConfig(arch=arch, task=data.task, n_classes=len(data.labels), length=data.length,
                           vocab_size=len(data.vocab))
    return Classifier(cfg, data.vocab, data.labels, seed=seed)


def trainer(arch: str, net: CustomNet | Classifier, data: Data | None, seed: int) -> Trainer:
    """The Trainer of a net (learning rate by architecture)."""
    if data is None:
        return Trainer(net, seed=seed)
    return Trainer(net, seed=seed, data=data, lr=LEARNING_RATES.get(arch, 3e-3))


@dataclass
class Report:
    """What :func:`train` did: the task and arch, held-out ``accuracy``, training ``seconds``
    and ``steps``, the classifier's ``evaluation`` (None for a toy task), where it was saved."""

    task: str
    arch: str
    accuracy: float
    seconds: float
    steps: int
    folder: Path
    evaluation: Evaluation | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        out = {"task": self.task, "arch": self.arch, "accuracy": round(self.accuracy, 4),
               "seconds": round(self.seconds, 2), "steps": self.steps}
        if self.evaluation is not None and self.evaluation.rationale_mass is not None:
            out["rationale_mass"] = round(self.evaluation.rationale_mass, 4)
            out["chance_mass"] = round(self.evaluation.chance_mass, 4)
        return out


def train(task: str, arch: str, out: Path, steps: int | None = None, seed: int = 0) -> Report:
    """Train ``arch`` on ``task`` for ``steps`` (default DEFAULT_STEPS of its kind), measure it
    on held-out data, and save it into ``out`` (which must not exist yet)."""
    kind = check(task, arch)
    steps = DEFAULT_STEPS[kind] if steps is None else steps
    if not 1 <= steps <= 100_000:
        raise AttnvizError(f"--steps must be from 1 to 100000, not {steps}.")
    if Path(out).exists():
        raise AttnvizError(f"{out} exists already: give a new folder to save into.")
    data = None if kind == "toy" else load_data(task, seed)
    net = CustomNet(CustomConfig(task=task), seed=seed) if data is None else build(arch, data, seed)
    run = trainer(arch, net, data, seed)
    run.run(steps)
    evaluation = None if data is None else evaluate_classifier(net, data)
    accuracy = evaluate(net) if data is None else evaluation.accuracy
    net.trained = dict(net.trained, held_out=round(accuracy, 4), task=task)
    folder = custom.save(net, out)
    return Report(task, arch, accuracy, run.seconds, len(run.history), folder, evaluation)
