"""One model shared by many sessions: captures from several threads at once, each with its own
input, give exactly the numbers of a sequential run, and leave nothing behind on the model.

The app's sessions are threads of one process sharing each loaded model (st.cache_resource).
Model.lock keeps two forward passes on one model from interleaving, and the attention
recorder is a TorchFunctionMode, whose stack belongs to the thread that entered it.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from at_once import at_once

import attnviz
from attnviz.lab import custom

SENTENCES = [
    "The cat sat on the mat.",
    "A dog ran across the busy street to fetch the ball.",
    "Attention is all you need.",
    "She sells sea shells by the sea shore, said the teacher twice.",
    "Why?",
    "Paris is the capital of France and Berlin is the capital of Germany.",
    "The old man the boat.",
    "Colourless green ideas sleep furiously.",
]
THREADS = 8


def run_together(fn, inputs: list, rounds: int = 2) -> list:
    """fn(input) for every input, from THREADS threads released at the same moment, ``rounds``
    times over; returns the results of the last round in input order."""
    start = threading.Barrier(len(inputs))

    def one(x):
        start.wait()
        return fn(x)

    with ThreadPoolExecutor(len(inputs)) as pool:
        for _ in range(rounds):
            out = list(pool.map(one, inputs))
    return out


def no_leftovers(net: torch.nn.Module) -> None:
    """Nothing left on the shared model or in this thread: no hooks but transformers' own
    output-capturing ones (installed once, stateless: they write to a per-context ContextVar,
    which is empty again), no torch function mode still active."""
    from transformers.utils import output_capturing

    for m in net.modules():
        assert not m._forward_pre_hooks, type(m).__name__
        for hook in m._forward_hooks.values():
            assert hook.__module__ == output_capturing.__name__, (type(m).__name__, hook)
    assert output_capturing._active_collector.get() is None
    assert not torch.overrides._get_current_function_mode_stack()


def test_threads_sharing_a_transformers_model_get_their_own_numbers(minilm):
    sequential = [attnviz.capture(minilm, s) for s in SENTENCES]
    together = run_together(lambda s: attnviz.capture(minilm, s), SENTENCES)
    for s, a, b in zip(SENTENCES, sequential, together):
        assert b.tokens == a.tokens, s
        # equal but for the order of float sums, to a float16 map's last bit: two captures at once compute
        # on half the threads each (attnviz.device.share_threads); another sentence's numbers differ by far more
        np.testing.assert_allclose(b.attn["encoder"], a.attn["encoder"], rtol=2**-10, atol=1e-6, err_msg=s)
    lengths = {r.attn["encoder"].shape[-1] for r in together}
    assert len(lengths) > 4  # the inputs really differ
    no_leftovers(minilm.net)


@pytest.fixture(scope="module")
def toy() -> attnviz.Model:
    net = custom.CustomNet(custom.CustomConfig(task="reverse", length=8, d_model=32, n_heads=4, n_layers=2,
                                               attention="local", window=2), seed=3)
    return custom.as_model(net, "toy", torch.device("cpu"))


def test_threads_sharing_a_recorded_model_get_their_own_maps(toy):
    """attnviz's own models are read through the recorder (a TorchFunctionMode)."""
    digits = [f"{i}{(3 * i) % 10}{(7 * i) % 10}{i}5{9 - i}1{(i * i) % 10}" for i in range(THREADS)]
    sequential = [attnviz.capture(toy, d) for d in digits]
    together = run_together(lambda d: attnviz.capture(toy, d), digits)
    for d, a, b in zip(digits, sequential, together):
        assert b.tokens == a.tokens == list(d)
        np.testing.assert_allclose(b.attn["encoder"], a.attn["encoder"], rtol=0, atol=1e-6, err_msg=d)
    no_leftovers(toy.net)


def test_the_recorder_is_per_thread_even_without_the_lock(toy):
    """Many threads recording on the same net at once, bypassing Model.lock: each recorder
    holds only its own thread's calls (2 layers -> 2 maps), with its own input's numbers."""
    digits = [str(10_000_000 + 1_234_567 * i)[-8:] for i in range(THREADS)]
    with torch.inference_mode():
        sequential = [toy.net.run(d)[2] for d in digits]
        together = run_together(lambda d: toy.net.run(d)[2], digits, rounds=3)
    for d, a, b in zip(digits, sequential, together):
        assert b.shape == (2, 4, 8, 8)
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6, err_msg=d)
    no_leftovers(toy.net)


def test_sessions_loading_different_models_at_once():
    """Three sessions opening three models at the same moment, in a fresh process (transformers
    not imported yet): all load. (Without attnviz.models.TRANSFORMERS_LOCK, transformers' lazy
    names race: "module 'transformers' has no attribute 'AutoConfig'".)"""
    assert at_once("import attnviz", "attnviz.load_model(arg)", ["minilm-l6", "dinov2-small", "t5-small-titler"]) == []
