"""The scheduler every heavy computation goes through (attnviz.jobs): turns round the visitors
(a short request of one visitor runs between the steps of another's long ones), memory admitted
once and never exceeded, no deadlock under a randomized load of jobs, gates and cancellations,
cancellation between steps, per-visitor quotas, and the status a waiting job reports.

The tests that are about real work run real captures and explanations of the bundled models on
their own Scheduler (one worker, no time slice, so that every checkpoint hands the worker over
when another job can go on): the order they assert follows from the turns, not from timing."""
from __future__ import annotations

import random
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
import torch

import attnviz
from attnviz import device, jobs, limits
from attnviz.capture import estimate_bytes
from attnviz.explain import explain
from attnviz.ui.visitor import visitor_of, xsrf_token

LONG_TEXT = " ".join(f"Sentence {i} tells how the river met the old stone bridge." for i in range(20))  # ~260 tokens


def scheduler(memory: int = 10**12, workers: int = 1, quota: float = 0.0, clock=time.monotonic) -> jobs.Scheduler:
    return jobs.Scheduler(lambda: memory, lambda: workers, lambda: quota, slice_s=0.0, clock=clock)


def in_thread(fn, *args) -> tuple[threading.Thread, dict]:
    """Run fn(*args) in a thread; the dict gets "value" or "error"."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def until(condition, timeout: float = 120.0) -> None:
    """Wait (polling) until condition() holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def same_capture(a: attnviz.AttentionResult, b: attnviz.AttentionResult) -> None:
    assert a.tokens == b.tokens
    for stack in a.stacks:
        for layer in (0, a.shape(stack)[0] - 1):
            np.testing.assert_allclose(a.attention(layer, 0, stack), b.attention(layer, 0, stack), rtol=0, atol=1e-5)


# -- fairness -------------------------------------------------------------------------------------
def test_a_short_request_runs_between_the_steps_of_another_visitors_long_ones(smollm, minilm):
    """One visitor reads two long texts on smollm2-135m (30 attention layers, a step each), the
    other asks for one sentence on minilm-l6 once the first long capture has begun: with one
    worker, the sentence is done before either long capture, and all three results are those
    of captures made alone (the two long ones shared the model step by step, in its recorded
    mode)."""
    s = scheduler(workers=1)
    finished: list[str] = []

    def run(visitor: str, name: str, model, text: str):
        with s.job(visitor, name, estimate_bytes(model, text)):
            result = attnviz.capture(model, text)
        finished.append(name)
        return result

    long_texts = [LONG_TEXT, LONG_TEXT.replace("river", "road")]
    readers = [in_thread(run, "reader", f"long {i}", smollm, t) for i, t in enumerate(long_texts)]
    until(lambda: any(j.what == "long 0" and j.fraction > 0 for j, _ in s.jobs()))
    asker = in_thread(run, "asker", "sentence", minilm, "The cat sat on the mat.")
    for thread, _ in [*readers, asker]:
        thread.join(300)
    assert finished.index("sentence") == 0, finished
    for (_, out), text in zip(readers, long_texts):
        same_capture(out["value"], attnviz.capture(smollm, text))
    same_capture(asker[1]["value"], attnviz.capture(minilm, "The cat sat on the mat."))
    assert smollm.net.config._attn_implementation == "eager" and s.jobs() == []


def test_a_capture_and_an_explanation_on_one_model_keep_their_modes(minilm):
    """Three visitors on one model, one worker: a long capture (the model switched to its
    recorded attention), an explanation asked for meanwhile (the model as loaded, eager, with
    gradients), then a sentence's capture. The explanation waits for the long capture's forward
    pass to end (no pass runs in the other's mode); the sentence joins the recorded mode that a
    holder older than the explanation's request still holds, so it is done before the
    explanation (with one worker, a step each in turn). All three give the numbers they give
    alone."""
    s = scheduler(workers=1)
    methods = ("attention", "grad_x_input", "blankout")
    finished: list[str] = []

    def run(visitor: str, work):
        with s.job(visitor, visitor, 10**6):
            value = work()
        finished.append(visitor)
        return value

    long = in_thread(run, "long", lambda: attnviz.capture(minilm, LONG_TEXT))
    until(lambda: any(j.what == "long" and j.fraction > 0 for j, _ in s.jobs()))
    explained = in_thread(run, "explain", lambda: explain(minilm, "The keys to the old cabinet are on the table.",
                                                          methods=methods))
    until(lambda: any(j.what == "explain" and j.want is not None for j, _ in s.jobs()))
    sentence = in_thread(run, "sentence", lambda: attnviz.capture(minilm, "The cat sat on the mat."))
    for thread, _ in (long, explained, sentence):
        thread.join(300)
    assert finished[-1] == "explain" and set(finished) == {"long", "sentence", "explain"}, finished
    same_capture(long[1]["value"], attnviz.capture(minilm, LONG_TEXT))
    same_capture(sentence[1]["value"], attnviz.capture(minilm, "The cat sat on the mat."))
    alone = explain(minilm, "The keys to the old cabinet are on the table.", methods=methods)
    for m in methods:
        np.testing.assert_allclose(explained[1]["value"].scores[m], alone.scores[m], rtol=1e-4, atol=1e-6)
    assert minilm.net.config._attn_implementation == "eager" and minilm.gate.holders == 0


def test_a_captures_estimate_covers_the_tokens_and_what_the_result_keeps(minilm, smollm, t5, dinov2, photo):
    """capture.estimate_bytes, made before anything is tokenised (what a job is admitted for),
    counts at least the tokens each model reads and at least the bytes its result keeps."""
    from attnviz.limits import capture_bytes
    from attnviz.models.loader import capture_shape

    for model, given in [(minilm, LONG_TEXT), (smollm, LONG_TEXT), (smollm, "Hi"), (t5, "A short source text."),
                         (dinov2, photo)]:
        result = attnviz.capture(model, given)
        shape = capture_shape(model.net.config, model.family, type(model.net))
        n = max(len(result.tokens), len(result.target_tokens or []))
        assert estimate_bytes(model, given) >= max(capture_bytes(n, *shape), result.nbytes), model.name


# -- memory and deadlock -----------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_jobs_never_exceed_the_memory_budget_and_all_end(seed):
    """64 jobs of 6 visitors on 16 threads, 3 workers: random sizes up to the whole budget, 1 to
    4 steps of numpy work, each step maybe inside one of two gates in one of two modes (with a
    setup that records the mode in place, and pauses while held), some cancelled by another
    thread. The bytes of the jobs
    inside their blocks never pass the budget, no gate is ever held in two modes or without
    its mode set up, and everything ends (no deadlock) with nothing left held."""
    rng = random.Random(seed)
    budget, workers = 100, 3
    s = jobs.Scheduler(lambda: budget, lambda: workers, slice_s=0.0)
    gates = [jobs.Gate(), jobs.Gate()]
    in_place: dict[int, str | None] = {0: None, 1: None}  # the mode set up on each gate
    lock = threading.Lock()
    inside = {"bytes": 0, "max": 0}
    holding = {0: {"a": 0, "b": 0}, 1: {"a": 0, "b": 0}}  # holders of each gate by mode
    errors: list[str] = []
    seen_states: set[str] = set()
    plans = [dict(visitor=f"v{rng.randrange(6)}", nbytes=rng.randint(1, budget), steps=rng.randint(1, 4),
                  gate=rng.choice([None, 0, 1]), mode=rng.choice("ab"), cancel=rng.random() < 0.2) for _ in range(64)]

    @contextmanager
    def setup(g: int, mode: str):
        with lock:
            in_place[g] = mode
        yield mode
        with lock:
            in_place[g] = None

    def one(plan: dict) -> None:
        with s.job(plan["visitor"], "random", plan["nbytes"], on_wait=lambda st: seen_states.add(st.state)) as job:
            if plan["cancel"]:
                threading.Timer(rng.random() * 0.01, job.cancel).start()
            with lock:
                inside["bytes"] += plan["nbytes"]
                inside["max"] = max(inside["max"], inside["bytes"])
            try:
                for step in job.steps(range(plan["steps"])):
                    g = plan["gate"]
                    if g is None:
                        np.linalg.svd(np.random.default_rng(step).normal(size=(40, 40)))
                        continue
                    mode = plan["mode"]
                    with jobs.hold(gates[g], mode, lambda g=g, mode=mode: setup(g, mode)) as value:
                        with lock:
                            holding[g][mode] += 1
                            if holding[g]["a"] and holding[g]["b"] or in_place[g] != mode or value != mode:
                                errors.append(f"gate {g}: {dict(holding[g])} held, {in_place[g]} in place")
                        try:
                            for _ in range(3):  # pauses while holding the gate
                                np.linalg.svd(np.random.default_rng(step).normal(size=(40, 40)))
                                jobs.checkpoint()
                        finally:
                            with lock:
                                holding[g][mode] -= 1
            finally:
                with lock:
                    inside["bytes"] -= plan["nbytes"]

    def worker(batch: list[dict]) -> None:
        for plan in batch:
            try:
                one(plan)
            except jobs.Cancelled:
                pass

    threads = [threading.Thread(target=worker, args=(plans[i::16],), daemon=True) for i in range(16)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "deadlock: jobs still waiting after 120 s"
    assert not errors, errors[:5]
    assert inside["max"] <= budget and inside["bytes"] == 0
    assert jobs.QUEUED in seen_states  # the budget was binding
    assert s.jobs() == [] and s.admitted_bytes == 0
    assert all(g.holders == 0 and g.mode is None for g in gates) and in_place == {0: None, 1: None}


def test_jobs_waiting_for_one_gate_in_two_modes_get_it_in_turn():
    """A job holds a gate in mode a; two others ask for it in modes b and c. When the holder
    leaves, the empty gate goes to the first of them in turn order, then to the other (neither
    blocks the other for ever)."""
    s = scheduler(workers=3)
    gate = jobs.Gate()
    release = threading.Event()
    order: list[str] = []

    def use(visitor: str, mode: str, wait: bool = False):
        with s.job(visitor, visitor, 1):
            with jobs.hold(gate, mode):
                order.append(visitor)
                if wait:
                    release.wait(30)

    holder = in_thread(use, "holder", "a", True)
    until(lambda: order == ["holder"])
    first = in_thread(use, "first", "b")
    until(lambda: any(j.what == "first" and j.want is not None for j, _ in s.jobs()))
    second = in_thread(use, "second", "c")
    until(lambda: any(j.what == "second" and j.want is not None for j, _ in s.jobs()))
    release.set()
    for thread, _ in (holder, first, second):
        thread.join(30)
    assert order == ["holder", "first", "second"] and gate.holders == 0 and s.jobs() == []


@pytest.mark.skipif(device.PROCESS_THREADS < 2, reason="needs a machine with two CPU threads or more")
def test_a_jobs_thread_takes_its_share_of_the_cpu_threads():
    """torch keeps its thread count per thread, and a new thread takes the count set last by
    any thread: a job whose thread starts while another thread trains on one thread (a
    cpu_threads(1) block) must still compute on all of them alone, on half each when two jobs
    compute at once, and on one inside a cpu_threads(1) block of its own."""
    s = jobs.Scheduler(lambda: 10**12, lambda: 2, slice_s=0.0, on_turn=device.share_threads)
    training, trained = threading.Event(), threading.Event()

    def train():
        with device.cpu_threads(1):
            training.set()
            trained.wait(30)

    trainer = in_thread(train)
    training.wait(30)
    both, seen = threading.Barrier(2), {}

    def run(name: str, pair: bool):
        with s.job(name, name, 1) as job:
            seen[name, "alone"] = torch.get_num_threads()
            if pair:
                both.wait(30)
                job.checkpoint()
                seen[name, "pair"] = torch.get_num_threads()
                both.wait(30)
            with device.cpu_threads(1):
                job.checkpoint()
                seen[name, "capped"] = torch.get_num_threads()
            job.checkpoint()
            seen[name, "after"] = torch.get_num_threads()

    thread, out = in_thread(run, "first", False)  # started while the trainer's thread runs on one
    thread.join(30)
    assert "error" not in out
    assert seen == {("first", "alone"): device.PROCESS_THREADS, ("first", "capped"): 1,
                    ("first", "after"): device.PROCESS_THREADS}
    pair = [in_thread(run, name, True) for name in ("a", "b")]
    for thread, out in pair:
        thread.join(30)
        assert "error" not in out
    assert seen["a", "pair"] == seen["b", "pair"] == device.PROCESS_THREADS // 2
    trained.set()
    trainer[0].join(30)


def test_long_jobs_leave_a_worker_to_short_ones():
    """Two workers; jobs that have held workers for more than long_s are long. Three long
    jobs of three visitors take turns on one worker (never two at once, once each has turned
    long), so a short request that comes meanwhile gets the other at once."""
    s = jobs.Scheduler(lambda: 10**12, lambda: 2, slice_s=0.0, long_s=0.05)
    stop, measuring, seen = threading.Event(), threading.Event(), {"long at once": 0, "short waited": None}

    def long_job(name: str):
        with s.job(name, name, 1) as job:
            while not stop.is_set():
                time.sleep(0.02)  # a step
                if measuring.is_set():  # a job that starts short may turn long while it runs, until its checkpoint
                    running = [j for j, st in s.jobs() if st.state == jobs.RUNNING and s.is_long(j)]
                    seen["long at once"] = max(seen["long at once"], len(running))
                if s.is_long(job):
                    seen[name] = True
                job.checkpoint()

    def short_job():
        asked = time.monotonic()
        with s.job("short", "short", 1):
            seen["short waited"] = time.monotonic() - asked

    threads = [in_thread(long_job, f"long{i}") for i in range(3)]
    until(lambda: all(f"long{i}" in seen for i in range(3)))  # each has had turns as a long job
    measuring.set()
    time.sleep(0.5)
    thread, out = in_thread(short_job)
    thread.join(30)
    stop.set()
    for t, o in threads:
        t.join(30)
        assert "error" not in o
    assert "error" not in out
    assert seen["long at once"] == 1
    assert seen["short waited"] < 0.5  # a worker was free for it: no long step to wait for


def test_a_job_over_the_whole_budget_is_refused_at_once():
    s = scheduler(memory=1000)
    with pytest.raises(attnviz.AttnvizError, match="more than the"):
        with s.job("v", "a huge job", 1001):
            pass
    assert s.jobs() == []


def test_jobs_that_do_not_fit_wait_and_a_blocked_job_is_not_starved():
    """Budget 100: a 60-byte job runs; a 50-byte job waits for memory (QUEUED, the head of the
    line). Short jobs of other visitors pass it, one after another, as many as come (a sentence
    must not wait minutes for a document because others passed before it); jobs that pass it
    and still run hold at most budget // OVERTAKE_SHARE bytes at once, so a third small job
    that would hold on waits; once the 60-byte job ends, the 50-byte one is admitted while the
    two that passed it still run."""
    s = scheduler(memory=100, workers=4)
    release_big, release_small, release_blocked = threading.Event(), threading.Event(), threading.Event()
    order: list[str] = []

    def run(visitor, name, nbytes, release=None):
        with s.job(visitor, name, nbytes):
            order.append(name)
            if release is not None:
                release.wait(30)

    big = in_thread(run, "a", "big", 60, release_big)
    until(lambda: order == ["big"])
    blocked = in_thread(run, "b", "blocked", 50, release_blocked)
    until(lambda: any(j.what == "blocked" and st.state == jobs.QUEUED for j, st in s.jobs()))
    for i in range(10):  # short requests, one after another: each passes the blocked job
        thread, out = in_thread(run, f"c{i}", f"quick{i}", 5)
        thread.join(30)
        assert "error" not in out and f"quick{i}" in order
    holding = [in_thread(run, f"d{i}", f"holding{i}", 5, release_small) for i in range(3)]
    allowed = 100 // jobs.OVERTAKE_SHARE // 5
    until(lambda: sum(name.startswith("holding") for name in order) == allowed)
    until(lambda: len(s.jobs()) == 2 + 3)
    states = {j.what: st for j, st in s.jobs()}
    assert states["blocked"].state == jobs.QUEUED and states["blocked"].place == 1
    assert sorted(st.state for what, st in states.items() if what.startswith("holding")) == \
        [jobs.QUEUED] * (3 - allowed) + [jobs.RUNNING] * allowed
    release_big.set()
    until(lambda: "blocked" in order)  # admitted while the jobs that passed it still run
    release_small.set()
    release_blocked.set()
    for thread, _ in [big, blocked, *holding]:
        thread.join(30)
    assert len(order) == 1 + 1 + 10 + 3 and s.admitted_bytes == 0


# -- cancellation -------------------------------------------------------------------------------------
def test_cancelled_between_steps_runs_no_further_step_and_frees_its_memory(minilm):
    """A job of five captures, one a step: cancelled from another thread during the second,
    it raises Cancelled at the next checkpoint, runs no third capture, and its bytes go to the
    job waiting for them."""
    s = scheduler(memory=100)
    texts = [f"Sentence number {i} about a cat." for i in range(5)]
    done: list[str] = []
    in_second, go_on = threading.Event(), threading.Event()

    def five():
        with s.job("a", "five captures", 80) as job:
            for i, text in enumerate(job.steps(texts)):
                done.append(attnviz.capture(minilm, text).tokens[2])
                if i == 1:
                    in_second.set()
                    go_on.wait(30)

    first = in_thread(five)
    in_second.wait(60)
    admitted, leave = threading.Event(), threading.Event()

    def other():
        with s.job("b", "waits for memory", 50):
            admitted.set()
            leave.wait(30)

    waiting = in_thread(other)
    until(lambda: any(j.what == "waits for memory" and st.state == jobs.QUEUED for j, st in s.jobs()))
    (job, _), = [(j, st) for j, st in s.jobs() if j.what == "five captures"]
    job.cancel()
    go_on.set()
    first[0].join(60)
    assert isinstance(first[1].get("error"), jobs.Cancelled) and len(done) == 2
    assert admitted.wait(30)
    assert [j.what for j, st in s.jobs()] == ["waits for memory"] and s.admitted_bytes == 50
    leave.set()
    waiting[0].join(30)


def test_a_capture_cancelled_between_layers_leaves_the_model_as_loaded(smollm):
    """Cancelled from its own progress callback at the third layer, a capture stops at that
    layer's checkpoint; the model's gate is free, its attention eager again, and the next
    capture gives the numbers it gives alone."""
    s = scheduler()
    calls = []
    with pytest.raises(jobs.Cancelled):
        with s.job("a", "capture", 10**6) as job:
            attnviz.capture(smollm, LONG_TEXT, progress=lambda f, m: (calls.append(f), f > 0.09 and job.cancel()))
    assert 3 <= len(calls) < 30
    assert smollm.gate.holders == 0 and smollm.net.config._attn_implementation == "eager"
    with s.job("a", "again", 10**6):
        again = attnviz.capture(smollm, "The cat sat on the mat.")
    same_capture(again, attnviz.capture(smollm, "The cat sat on the mat."))


# -- quotas and status --------------------------------------------------------------------------------
def test_a_visitor_over_its_quota_waits_for_the_window_while_others_run():
    """Quota 10 worker seconds a minute, a clock the test moves: a job that has held its worker
    for 12 s stops at its next checkpoint and reports QUOTA with about 50 s to wait (its 12 s
    leave the window after 48 s... until 10 remain); another visitor runs meanwhile; moved on
    past that, the job goes on."""
    now = [1000.0]
    s = scheduler(workers=2, quota=10.0, clock=lambda: now[0])
    seen: list[jobs.Status] = []
    steps_done = []

    def heavy():
        with s.job("heavy", "heavy", 1, on_wait=seen.append) as job:
            now[0] += 12.0  # 12 s of work
            job.checkpoint(0.5)
            steps_done.append("second step")

    thread, out = in_thread(heavy)
    until(lambda: any(st.state == jobs.QUOTA for st in seen))
    quota = [st for st in seen if st.state == jobs.QUOTA][-1]
    assert 49.9 <= quota.wait_s <= 50.1 and "your share" in quota.text()
    with s.job("light", "light", 1):  # another visitor is not held back
        pass
    assert not steps_done
    now[0] += 50.5
    thread.join(30)
    assert steps_done == ["second step"] and "error" not in out


def test_the_hosted_mode_sets_a_quota(monkeypatch):
    monkeypatch.delenv("ATTNVIZ_VISITOR_SECONDS", raising=False)
    monkeypatch.delenv(limits.HOSTED_ENV, raising=False)
    assert limits.budget(limits.VISITOR_SECONDS) == 0  # local: none
    monkeypatch.setenv(limits.HOSTED_ENV, "1")
    assert limits.budget(limits.VISITOR_SECONDS) == 60
    monkeypatch.setenv("ATTNVIZ_VISITOR_SECONDS", "30")
    assert limits.budget(limits.VISITOR_SECONDS) == 30


def test_waiting_jobs_report_their_place_and_an_estimate():
    """One worker held by visitor a; b and c wait (1st and 2nd in line, c's estimate at least
    b's); d does not fit in memory (queued behind them); then each runs in turn order."""
    s = scheduler(memory=100, workers=1)
    release = threading.Event()
    seen: dict[str, list[jobs.Status]] = {"b": [], "c": [], "d": []}
    order: list[str] = []

    def run(visitor, nbytes, hold=False):
        with s.job(visitor, f"job of {visitor}", nbytes, seconds=2.0,
                   on_wait=seen[visitor].append if visitor in seen else None):
            order.append(visitor)
            if hold:
                release.wait(30)

    a = in_thread(run, "a", 40, True)
    until(lambda: order == ["a"])
    b = in_thread(run, "b", 20)
    until(lambda: seen["b"])
    c = in_thread(run, "c", 20)
    until(lambda: seen["c"])
    d = in_thread(run, "d", 30)
    until(lambda: seen["d"])
    b_status, c_status, d_status = seen["b"][-1], seen["c"][-1], seen["d"][-1]
    assert (b_status.state, b_status.place) == (jobs.WAITING, 1) and "1st in line" in b_status.text()
    assert (c_status.state, c_status.place) == (jobs.WAITING, 2) and c_status.wait_s >= b_status.wait_s > 0
    assert (d_status.state, d_status.place) == (jobs.QUEUED, 3) and "waiting for memory" in d_status.text()
    release.set()
    for thread, out in (a, b, c, d):
        thread.join(30)
        assert "error" not in out
    assert order == ["a", "b", "c", "d"]


# -- visitors ----------------------------------------------------------------------------------------
def test_a_visitor_is_the_browsers_xsrf_token_whatever_its_mask():
    """Streamlit sets its XSRF cookie again with a new mask on later responses; the token, and
    so the visitor, stays. Another browser's token is another visitor; nonsense is none."""
    from streamlit.web.server.starlette.starlette_app_utils import generate_xsrf_token_string

    token, other = b"0123456789abcdef", b"fedcba9876543210"
    first, again = generate_xsrf_token_string(token, 1), generate_xsrf_token_string(token, 1)
    assert first != again and xsrf_token(first) == xsrf_token(again) == token
    assert visitor_of(first) == visitor_of(again) != visitor_of(generate_xsrf_token_string(other, 1))
    assert token.hex() not in visitor_of(first) and visitor_of(first).startswith("browser:")
    for bad in (None, "", "1|ab|cd|1", "2|zz|00|1", "2|0011|00|1", "not a cookie"):
        assert visitor_of(bad) is None
