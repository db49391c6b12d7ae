"""Training the lab's models on the CPU: a :class:`~attnviz.lab.custom.CustomNet` on its toy
task, or a :class:`~attnviz.lab.classify.Classifier` on a data set of :mod:`attnviz.lab.datasets`.

For a toy task every step draws a fresh batch of random inputs (seeded), so the accuracy of a
step, measured before its update, is on data the model has never seen; a classifier's batches
are drawn from its training part, and :func:`evaluate_classifier` measures it on the held-out
part. The training can be resumed: a
:class:`Trainer` keeps the optimizer, the random generator and the history between calls of
:meth:`Trainer.run`, which stops after a number of steps, when ``stop()`` says so, or when the
callback returns False.

A tiny model trains fastest on one CPU thread (:func:`attnviz.device.cpu_threads`): its
matrix products are too small to gain from being split across cores, and on a busy machine the
threads wait for each other (measured on a shared 2-core machine: 30 ms a step on one thread,
300 ms on two).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Union

import numpy as np
import torch
import torch.nn.functional as F

from attnviz.device import cpu_threads
from attnviz.lab.classify import Classifier
from attnviz.lab.custom import CustomNet
from attnviz.lab.datasets import ImageData, TextData
from attnviz.lab.toy_tasks import batch
from attnviz.recorder import record_attention

Data = Union[TextData, ImageData]

BATCH_SIZE = 64
LEARNING_RATE = 3e-3
EVAL_SIZE = 512


@dataclass(frozen=True)
class Step:
    """One training step: ``step`` (1-based), ``loss`` (mean cross-entropy, nats per token),
    ``accuracy`` (share of the batch's tokens predicted right, before the update), ``seconds``
    (training time since the first step)."""

    step: int
    loss: float
    accuracy: float
    seconds: float


class Trainer:
    """Trains ``net`` (on the CPU, in place) with AdamW on batches of ``batch_size`` inputs:
    fresh toy-task inputs for a CustomNet, else batches of ``data`` (a classifier's)."""

    def __init__(self, net: CustomNet | Classifier, batch_size: int = BATCH_SIZE, lr: float = LEARNING_RATE,
                 seed: int = 0, threads: int = 1, data: Data | None = None) -> None:
        self.net, self.data = net, data
        net.requires_grad_(True)  # a net shown as a Model has them frozen (attnviz.models.model.Model)
        self.threads = threads
        self.batch_size = batch_size
        self.optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
        self.rng = np.random.default_rng(seed)
        self.history: list[Step] = []
        self.seconds = 0.0

    def memory_bytes(self) -> int:
        """An upper estimate of what a step takes beyond the data: the parameters with their
        gradients and AdamW's two moments (4 float32 copies), and the batch's activations kept
        for the backward pass: per layer, 16 float32 arrays [batch, tokens, d_model] and 3 of
        the attention maps [batch, heads, tokens, tokens] (tokens: the most the model reads)."""
        cfg = self.net.config
        n = (cfg.length // cfg.patch) ** 2 + 1 if getattr(cfg, "arch", None) == "vit" else cfg.length + 1
        params = sum(p.numel() for p in self.net.parameters()) * 4 * 4
        per_layer = self.batch_size * (16 * n * cfg.d_model + 3 * cfg.n_heads * n * n) * 4
        return params + max(1, getattr(cfg, "n_layers", 1)) * per_layer

    def step(self) -> Step:
        """One update on a fresh batch."""
        started = time.perf_counter()
        cfg = self.net.config
        if self.data is not None:
            x, y = self.data.batch(self.batch_size, self.rng)
        else:
            x, y = (torch.from_numpy(a) for a in batch(cfg.task, self.batch_size, cfg.length, self.rng))
        self.net.train()
        logits = self.net(x)  # [batch, n, vocab] (toy task) or [batch, classes]
        loss = F.cross_entropy(logits.flatten(0, -2), y.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.seconds += time.perf_counter() - started
        accuracy = (logits.argmax(-1) == y).float().mean().item()
        done = Step(len(self.history) + 1, loss.item(), accuracy, self.seconds)
        self.history.append(done)
        self.net.trained = {"steps": done.step, "accuracy": round(accuracy, 4), "seconds": round(self.seconds, 1)}
        return done

    def run(self, steps: int, on_step: Callable[[Step], bool | None] | None = None,
            stop: Callable[[], bool] | None = None) -> list[Step]:
        """Up to ``steps`` more steps; stops early when ``stop()`` is true or ``on_step``
        returns False. Returns the steps taken; the model is left in eval mode."""
        taken = []
        with cpu_threads(self.threads):
            try:
                for _ in range(steps):
                    if stop is not None and stop():
                        break
                    taken.append(self.step())
                    if on_step is not None and on_step(taken[-1]) is False:
                        break
            finally:
                self.net.eval()
        return taken


def evaluate(net: CustomNet, size: int = EVAL_SIZE, seed: int = 12345) -> float:
    """Token accuracy of ``net`` on ``size`` fresh inputs of its task (a fixed seed)."""
    cfg = net.config
    x, y = (torch.from_numpy(a) for a in batch(cfg.task, size, cfg.length, np.random.default_rng(seed)))
    net.eval()
    with torch.inference_mode():
        return (net(x.to(net.device)).argmax(-1).cpu() == y).float().mean().item()


@dataclass
class Evaluation:
    """A classifier on its held-out examples. ``accuracy``: share right; ``confusion``
    [true class, predicted class]: counts; ``predicted`` [examples]; ``weights``: per example,
    the attention that decides, float [tokens or patches] summing to 1 (see
    :func:`pooling_weights`); ``rationale_mass``/``chance_mass`` (when the data knows its
    rationale): the mean over examples of the weight on the rationale tokens, and of the share
    of rationale tokens (what uniform attention would give)."""

    accuracy: float
    confusion: np.ndarray
    predicted: np.ndarray
    weights: list[np.ndarray]
    rationale_mass: float | None = None
    chance_mass: float | None = None


def pooling_weights(net: Classifier, maps: list[torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
    """The attention that decides a classifier's output, [batch, tokens or patches], from the
    maps recorded on a batch (each [batch, heads, queries, keys]): the pooling row of the LSTM
    architectures; for a transformer or ViT the [CLS] row of the last layer, mean over heads,
    with [CLS]'s weight on itself left out and the rest renormalised to sum to 1. ``keep``:
    bool [batch, tokens], False at padding."""
    if net.pools:
        return maps[0][:, :, 0].mean(1) * keep
    row = maps[-1][:, :, 0, 1:].mean(1) * keep
    return row / row.sum(1, keepdim=True).clamp(min=1e-12)


def evaluate_classifier(net: Classifier, data: Data, batch_size: int = 256) -> Evaluation:
    """``net`` on the held-out part of ``data``, in eval mode, without gradients."""
    x, y = data.held_out()
    net.eval()
    predicted, weights = [], []
    with torch.inference_mode():
        for start in range(0, len(y), batch_size):
            xb = x[start:start + batch_size].to(net.device)
            with record_attention() as rec:
                logits = net(xb)
            keep = xb != 0 if data.kind == "text" else torch.ones(len(xb), rec.maps[-1].shape[-1] - 1, dtype=torch.bool)
            w = pooling_weights(net, rec.maps, keep).cpu().numpy()
            predicted.append(logits.argmax(-1).cpu().numpy())
            weights += [row[:int(k.sum())] for row, k in zip(w, keep.cpu().numpy())]
    predicted = np.concatenate(predicted)
    truth = y.numpy()
    n = len(data.labels)
    confusion = np.bincount(truth * n + predicted, minlength=n * n).reshape(n, n)
    done = Evaluation(float((predicted == truth).mean()), confusion, predicted, weights)
    rationale = getattr(data, "rationale", None)
    if rationale is not None:
        done.rationale_mass = float(np.mean([w[r].sum() for w, r in zip(weights, rationale)]))
        done.chance_mass = float(np.mean([r.mean() for r in rationale]))
    return done
