"""Training a :class:`~attnviz.lab.custom.CustomNet` on its toy task, on the CPU.

Every step draws a fresh batch of random inputs (seeded), so the accuracy of a step, measured
before its update, is on data the model has never seen. The training can be resumed: a
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
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from attnviz.device import cpu_threads
from attnviz.lab.custom import CustomNet
from attnviz.lab.toy_tasks import batch

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
    """Trains ``net`` (on the CPU, in place) with AdamW on batches of ``batch_size`` inputs."""

    def __init__(self, net: CustomNet, batch_size: int = BATCH_SIZE, lr: float = LEARNING_RATE, seed: int = 0,
                 threads: int = 1) -> None:
        self.net = net
        self.threads = threads
        self.batch_size = batch_size
        self.optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
        self.rng = np.random.default_rng(seed)
        self.history: list[Step] = []
        self.seconds = 0.0

    def step(self) -> Step:
        """One update on a fresh batch."""
        started = time.perf_counter()
        cfg = self.net.config
        x, y = (torch.from_numpy(a) for a in batch(cfg.task, self.batch_size, cfg.length, self.rng))
        self.net.train()
        logits = self.net(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
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
