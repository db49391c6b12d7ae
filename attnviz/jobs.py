"""Heavy work, bounded and fair: the one way in for every long computation.

A **job** is one request's computation (a capture, an explanation, a training run). It runs on
the thread that asked for it, inside ``with SCHEDULER.job(visitor, what, nbytes) as job:``, and
is made of **steps**: the work between two :func:`checkpoint` calls (an attention layer of a
forward pass, one forward pass of blank-out, one input of many, a block of training steps).
Three things bound it:

- **Memory.** A job declares the bytes it will need (an upper estimate, from the model and the
  input's length) and is *admitted* once against one budget shared by every job
  (:func:`attnviz.limits.job_bytes`). It keeps those bytes until it ends, computing or
  waiting. A job that needs more than the whole budget is refused at once.
- **Workers.** At most ``limits.budget(limits.WORKERS)`` jobs compute at once. A job computes
  only while it holds a worker; at a checkpoint it hands its worker to a waiting job once it
  has held it for ``SLICE_S`` seconds (so a visitor's short request runs between the steps of
  another's long one), and at once when it is over its visitor's quota. A job that has
  held workers for ``LONG_S`` seconds in all is *long* (a document, an explanation, a
  training): at most ``workers - 1`` long jobs (at least one) compute at once, so a worker is
  left for short requests however many long jobs wait. As its turn starts (and at each
  checkpoint it keeps its worker), a job's thread takes its share of the CPU threads: all of
  them alone, half each when two compute (:func:`attnviz.device.share_threads`; the main
  thread, a command's or a notebook's, keeps the number its user set).
- **Gates.** A shared model is used through its :class:`Gate`, in a *mode* (capture switches a
  model's attention to the implementation it records; explain runs it as loaded): any number of
  jobs hold a gate at once in one mode, none in another, so jobs on one model interleave step
  by step without one of them changing the model under another's forward pass.

**Turns go round the visitors.** A visitor is an opaque key (the app's is a hash of the
browser's cookie, so that more tabs do not buy more turns; the command line's is ``LOCAL``).
A free worker goes to the waiting job whose visitor's jobs held workers least over the last
``WINDOW_S`` (among equals, whose visitor had a turn least recently, then whose job had one
least recently), and a running job hands its worker over at a checkpoint only to a job that
comes before it in that order. So a visitor with a short request is served before visitors
running long work (they have used more) and keeps the worker until it is done, while long jobs
of different visitors take turns: one visitor's long jobs hold another's short one back by a
step, not a run. Admission goes round the visitors by their last admission; a job that does not fit (the
*head*) is passed only by jobs that fit in the free memory, and only while the jobs that passed
it and still run hold at most ``budget // OVERTAKE_SHARE`` bytes (and no more than leaves room
for it): short requests pass a waiting document one after another, however many, but the head
is admitted once the jobs admitted before it end, so it is not starved either. With a quota
(``limits.VISITOR_SECONDS``, the hosted mode), a visitor whose jobs held workers for that many
seconds over the last ``WINDOW_S`` waits until the window has moved on.

**Why it cannot deadlock.** Memory is taken once, at admission, before any worker or gate; an
admitted job then waits only for a worker (and, when it asks for a gate it does not hold, for
that gate in its mode, granted together with the worker). A job never waits for anything while
it holds a worker: to wait (at a checkpoint, for a gate) it gives its worker back first. A job
holds at most one gate. So the only waits are (a) queued jobs for memory held by admitted jobs,
(b) admitted jobs for a worker and (c) for a gate held in another mode by admitted jobs. Every
job holding a worker runs to its next checkpoint without waiting and gives it back; a job
holding a gate needs nothing but a worker to go on (it already holds its gate), and once a job
waits for a gate in another mode, new holders of the gate's mode may join only while a holder
that entered before it asked is still in (so a short request need not wait for a long forward
pass of its mode), so the holders drain; jobs that hold memory finish and free it. No cycle, and nothing waits for ever. (A
mode's setup is run by the gate's first holder while no one else may enter; other holders never
wait for it while holding a worker: they are not let in until it is done.)

**Waiting is visible and can be cancelled.** While a job waits, the thread that runs it calls
its ``on_wait(status)`` every ``POLL_S`` with a :class:`Status`: the job's place in line and an
estimate of the seconds until it computes again. The app draws it with a Cancel button;
:meth:`Job.cancel` (or an exception raised by ``on_wait``, as Streamlit raises one in a page
that reruns) ends the job at its next checkpoint or wait, and its memory, worker and gate go to
the others.

Code below the app calls :func:`checkpoint` and :func:`hold` without knowing whether it runs in
a job: outside one (the command line, a notebook), a checkpoint does nothing and a gate is
waited for directly. :func:`within` gives the current job, or a new one for ``LOCAL``.
"""
from __future__ import annotations

import itertools
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Hashable, Iterable, Iterator, TypeVar

import attnviz.limits as limits
from attnviz.device import share_threads
from attnviz.errors import AttnvizError

SLICE_S = 0.5  # a job holding a worker this long gives it to a waiting job at its next checkpoint
POLL_S = 0.25  # a waiting job re-reads its status (and calls on_wait) this often
WINDOW_S = 60.0  # quotas count the seconds a visitor's jobs held workers over this window
OVERTAKE_SHARE = 8  # jobs passing a job that waits for memory hold at most budget // this at once
LONG_S = 5.0  # a job that has held workers this long in all is long (see the module docstring)
DEFAULT_STEP_S = 1.0  # the expected length of a job's step before it has run one
LOCAL = "local"  # the visitor of work started outside the app (command line, notebooks, tests)

QUEUED, WAITING, PAUSED, QUOTA, RUNNING = "queued", "waiting", "paused", "quota", "running"

T = TypeVar("T")


class Cancelled(AttnvizError):
    """The job was cancelled before it finished."""


# -- gates ----------------------------------------------------------------------------------------
class Gate:
    """Something jobs share (a loaded model), held in a *mode*: any number of holders at once
    in one mode, none in another. A mode may need a setup (a factory of a context manager, such
    as capture's switch of the model's attention implementation): the first holder of the mode
    enters it and the last one leaves it, and no one else enters the gate meanwhile, so every
    holder runs with the mode in place. :func:`hold` is the way to use it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.mode: Hashable | None = None
        self.holders = 0
        self._settling = False  # the first holder is setting the mode up, or the last tearing it down
        self._setup: ContextManager | None = None  # the mode's setup, entered
        self._value: Any = None  # what the setup gave
        self._schedulers: weakref.WeakSet[Scheduler] = weakref.WeakSet()  # to wake when the gate opens

    def open_for(self, mode: Hashable) -> bool:
        """Whether a new holder in ``mode`` may enter now (call under ``_cond``)."""
        return not self._settling and (self.holders == 0 or self.mode == mode)

    def _enter(self, mode: Hashable) -> bool:
        """Count a new holder (under ``_cond``, when open_for(mode)); True when it is the first,
        which must then :meth:`_settle` the mode."""
        self.holders += 1
        if self.holders > 1:
            return False
        self.mode, self._settling = mode, True
        return True

    def _settle(self, setup: Callable[[], ContextManager] | None) -> Any:
        """The first holder sets the mode up (outside the gate's lock) and lets the others in."""
        try:
            entered = setup() if setup is not None else None
            value = entered.__enter__() if entered is not None else None
        except BaseException:
            self._abandon(first=True)
            raise
        with self._cond:
            self._setup, self._value, self._settling = entered, value, False
            self._cond.notify_all()
        self._wake()
        return value

    def _abandon(self, first: bool) -> None:
        """A holder counted by :meth:`_enter` that never used the gate (its job ended first)."""
        with self._cond:
            self.holders -= 1
            if first:
                self._settling = False
            if not self.holders:
                self.mode = None
            self._cond.notify_all()
        self._wake()

    def _leave(self) -> None:
        """A holder is done; the last one leaves the mode's setup (outside the gate's lock)."""
        with self._cond:
            self.holders -= 1
            if self.holders:
                return
            setup, self._setup, self._value = self._setup, None, None
            self._settling = setup is not None
        try:
            if setup is not None:
                setup.__exit__(None, None, None)
        finally:
            with self._cond:
                self._settling = False
                self.mode = None
                self._cond.notify_all()
            self._wake()

    def _wake(self) -> None:
        for scheduler in list(self._schedulers):
            scheduler._wake()

    @contextmanager
    def _held_directly(self, mode: Hashable, setup: Callable[[], ContextManager] | None) -> Iterator[Any]:
        """Outside any job: wait for the gate itself (no worker is held, so nothing is blocked)."""
        with self._cond:
            while not self.open_for(mode):
                self._cond.wait()
            first = self._enter(mode)
        value = self._settle(setup) if first else self._value
        try:
            yield value
        finally:
            self._leave()


# -- jobs -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Status:
    """Where a job stands. state: QUEUED (waiting for memory), WAITING (for its first turn),
    PAUSED (between steps, while others have their turn), QUOTA (its visitor's share of the
    last minute is used) or RUNNING. place: 1 for the next job to get a worker (0 when
    running). wait_s: an estimate of the seconds until it computes again, from the steps of the
    jobs ahead of it (0 when running)."""

    state: str
    place: int
    wait_s: float
    what: str = ""

    def text(self) -> str:
        """One line for the visitor."""
        eta = f"about {max(1, round(self.wait_s))} s"
        if self.state == RUNNING:
            return f"{self.what}: running."
        if self.state == QUOTA:
            return f"{self.what}: your share of this server for the last minute is used; it goes on in {eta}."
        if self.state == QUEUED:
            return (f"{self.what}: waiting for memory, {_ordinal(self.place)} in line ({eta}); other visitors' "
                    "computations are using it.")
        what = "waiting for its turn" if self.state == WAITING else "paused while other visitors have their turn"
        return f"{self.what}: {what}, {_ordinal(self.place)} in line ({eta})."


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


class Job:
    """One computation admitted by a :class:`Scheduler` (see the module docstring). Made by
    :meth:`Scheduler.job`; its thread calls :meth:`checkpoint` between steps and :meth:`hold`
    around the use of a shared model; any thread may :meth:`cancel` it."""

    def __init__(self, scheduler: Scheduler, visitor: Hashable, what: str, nbytes: int, seq: int,
                 seconds: float | None, on_wait: Callable[[Status], None] | None) -> None:
        self.scheduler, self.visitor, self.what, self.nbytes, self.seq = scheduler, visitor, what, int(nbytes), seq
        self.on_wait = on_wait
        self.admitted = False
        self.granted = False  # holds a worker
        self.started = False  # has had a turn
        self.cancelled = False
        self.want: tuple[Gate, Hashable] | None = None  # the gate (and mode) asked for with the next turn
        self.want_seq = 0  # when it asked (the scheduler's sequence)
        self.gate_seq = 0  # when it entered its gate
        self.gate: Gate | None = None  # the gate held (or reserved by the scheduler)
        self.gate_mode: Hashable | None = None
        self.gate_first = False  # the job must set the gate's mode up
        self.passed: Job | None = None  # the job waiting for memory that this one was admitted before
        self.last_turn = 0  # the scheduler's turn number when it last got a worker
        self.turn_started = 0.0
        self.run_s = 0.0  # seconds it held workers, turns ended so far
        self.fraction = 0.0  # of its work done, as its checkpoints said
        self.seconds = seconds  # its declared length, when known
        self.step_s = DEFAULT_STEP_S  # a running mean of its steps' lengths
        self._step_started = 0.0

    # -- for the job's own thread ---------------------------------------------------------------
    def checkpoint(self, fraction: float | None = None) -> None:
        """A step ends here: raise :class:`Cancelled` when the job was cancelled; give the
        worker to a waiting job when this one has held it for SLICE_S and another can go on (or
        at once when the visitor is over quota), then wait for the next turn. ``fraction``: the
        share of the job done, for the estimates."""
        s = self.scheduler
        with s._cond:
            now = s._clock()
            if fraction is not None:
                self.fraction = min(max(float(fraction), 0.0), 1.0)
            self.step_s = 0.7 * self.step_s + 0.3 * (now - self._step_started) if self.started else self.step_s
            self._step_started = now
            if self.cancelled:
                raise Cancelled(f"{self.what}: cancelled.")
            may = s._quota_wait(self.visitor, now) <= 0 and not s._long_over(self, now)
            keep = may and now - self.turn_started < s.slice_s
            if may and not keep:
                other = s._next_ready(now, besides=self)
                keep = other is None or s._rank(other, now) > s._rank(self, now)  # nobody comes before this job
            if keep:
                computing = s._computing()
            else:
                s._give_back(self, now)
        if keep:
            s._on_turn(computing)
        else:
            s._wait(self)

    @contextmanager
    def hold(self, gate: Gate, mode: Hashable, setup: Callable[[], ContextManager] | None = None) -> Iterator[Any]:
        """Use ``gate`` in ``mode`` within the block (``setup``: see :class:`Gate`); yields what
        the mode's setup gave. When the gate is not open for the mode, the worker is given back
        and the job waits for both. Nested holds of the same gate and mode are free."""
        if self.gate is gate and self.gate_mode == mode:
            yield gate._value
            return
        if self.gate is not None:
            raise RuntimeError(f"{self.what} holds a gate already; a job holds one at a time")
        s = self.scheduler
        with s._cond:
            now = s._clock()
            if self.cancelled:
                raise Cancelled(f"{self.what}: cancelled.")
            gate._schedulers.add(s)
            with gate._cond:  # checked and entered at once (holders outside any job use the gate too)
                if s._may_enter(gate, mode):
                    self.gate, self.gate_mode, self.gate_first = gate, mode, gate._enter(mode)
                    self.gate_seq = next(s._seq)
            if self.gate is None:
                self.want, self.want_seq = (gate, mode), next(s._seq)
                s._give_back(self, now)
        if self.gate is None:
            try:
                s._wait(self)  # the scheduler reserves the gate with the worker
            except BaseException:
                with s._cond:
                    reserved, first = self.gate is gate, self.gate_first
                    self.want, self.gate, self.gate_mode = None, None, None
                if reserved:
                    gate._abandon(first)
                raise
        try:
            value = gate._settle(setup) if self.gate_first else gate._value
        except BaseException:
            self.gate = self.gate_mode = None
            raise
        try:
            yield value
        finally:
            with s._cond:
                self.gate = self.gate_mode = None
            gate._leave()

    def steps(self, items: Iterable[T]) -> Iterator[T]:
        """``items`` one by one, each a step: a checkpoint before every item but the first, with
        the fraction done."""
        items = list(items)
        for i, item in enumerate(items):
            if i:
                self.checkpoint(i / len(items))
            yield item

    # -- for anyone ----------------------------------------------------------------------------
    def cancel(self) -> None:
        """End the job at its next checkpoint or wait (with :class:`Cancelled` in its thread)."""
        with self.scheduler._cond:
            self.cancelled = True
            self.scheduler._cond.notify_all()


class Scheduler:
    """Admits jobs against one memory budget, gives them a fixed number of workers in turns
    round the visitors, and keeps each visitor within a quota of worker seconds per minute
    (see the module docstring). ``memory``, ``workers`` and ``quota_s`` are read when used (a
    quota of 0: none); ``clock`` is injectable for tests."""

    def __init__(self, memory: Callable[[], int], workers: Callable[[], int], quota_s: Callable[[], float] = lambda: 0,
                 *, slice_s: float = SLICE_S, clock: Callable[[], float] = time.monotonic,
                 long_s: float = LONG_S, on_turn: Callable[[int], Any] = lambda computing: None) -> None:
        self._memory, self._workers, self._quota, self._on_turn = memory, workers, quota_s, on_turn
        self.long_s = long_s
        self.slice_s = slice_s
        self._clock = clock
        self._cond = threading.Condition()
        self._jobs: list[Job] = []  # live jobs, in arrival order
        self._seq = itertools.count(1)
        self._turns = itertools.count(1)
        self._visitor_turn: dict[Hashable, int] = {}  # a visitor's last turn number (a worker given)
        self._visitor_admitted: dict[Hashable, int] = {}  # a visitor's last admission number
        self._usage: dict[Hashable, list[list[float]]] = {}  # visitor -> [start, end] of turns in the window
        self._head: Job | None = None  # the job at the front of the memory queue that does not fit

    @contextmanager
    def job(self, visitor: Hashable, what: str, nbytes: int, *, seconds: float | None = None,
            on_wait: Callable[[Status], None] | None = None) -> Iterator[Job]:
        """Run a job of ``visitor`` on this thread: wait for its admission (``nbytes``) and its
        first turn (calling ``on_wait(status)`` meanwhile), yield it, and free what it holds at
        the end of the block. ``what`` names it in messages; ``seconds``: its expected length
        on a worker, when known. An AttnvizError when ``nbytes`` is over the whole budget."""
        if current() is not None:  # it would wait for a worker while its thread's job holds one
            raise RuntimeError(f"{what}: this thread runs a job already; use jobs.within() for work inside it")
        budget = int(self._memory())
        if nbytes > budget:
            raise AttnvizError(f"{what} would need about {_gb(nbytes)} of memory, more than the {_gb(budget)} this server "
                               "gives all computations together: try a shorter input or a smaller size.")
        job = Job(self, visitor, what, nbytes, next(self._seq), seconds, on_wait)
        with self._cond:
            self._jobs.append(job)
        outer = getattr(_local, "job", None)
        _local.job = job
        try:
            self._wait(job)
            yield job
        finally:
            _local.job = outer
            self._end(job)

    def jobs(self) -> list[tuple[Job, Status]]:
        """Every live job and its status, in arrival order."""
        with self._cond:
            now = self._clock()
            return [(j, self._status(j, now)) for j in self._jobs]

    @property
    def admitted_bytes(self) -> int:
        with self._cond:
            return sum(j.nbytes for j in self._jobs if j.admitted)

    # -- waiting ---------------------------------------------------------------------------------
    def _wait(self, job: Job) -> None:
        """Block until ``job`` holds a worker (and its wanted gate); raise Cancelled when it is
        cancelled first. ``on_wait`` is called outside the lock, every POLL_S."""
        while True:
            with self._cond:
                self._dispatch()
                if job.granted:
                    computing = self._computing()
                elif job.cancelled:
                    raise Cancelled(f"{job.what}: cancelled.")
                else:
                    status = self._status(job, self._clock())
            if job.granted:
                self._on_turn(computing)  # on this thread, as its turn starts
                return
            if job.on_wait is not None:
                job.on_wait(status)
            with self._cond:
                if not job.granted and not job.cancelled:
                    self._cond.wait(POLL_S)

    def is_long(self, job: Job, now: float | None = None) -> bool:
        """Whether ``job`` has held workers for more than ``long_s`` seconds in all (a long job:
        see the module docstring)."""
        now = self._clock() if now is None else now
        return job.run_s + (now - job.turn_started if job.granted else 0.0) > self.long_s

    def _long_over(self, job: Job, now: float, besides: Job | None = None) -> bool:
        """Whether ``job`` is long and as many other long jobs compute (``besides``, one that
        would give its worker to it, not counted) as long jobs may at once (``workers - 1``,
        at least one), so that a worker is left for short ones."""
        if not self.is_long(job, now):
            return False
        computing = sum(1 for j in self._jobs if j is not job and j is not besides and j.granted and self.is_long(j, now))
        return computing >= max(1, int(self._workers()) - 1)

    def _computing(self) -> int:
        """How many jobs hold a worker (under the lock): what a job's thread is told as its
        turn starts."""
        return sum(j.granted for j in self._jobs)

    def _wake(self) -> None:
        with self._cond:
            self._dispatch()
            self._cond.notify_all()

    def _end(self, job: Job) -> None:
        with self._cond:
            if job.granted:
                self._give_back(job, self._clock())
            job.cancelled = True  # nothing may grant it any more
            self._jobs.remove(job)
            if self._head is job:
                self._head = None
            self._dispatch()
            self._cond.notify_all()

    # -- under the lock -----------------------------------------------------------------------------
    def _give_back(self, job: Job, now: float) -> None:
        job.granted = False
        job.run_s += now - job.turn_started
        spans = self._usage.get(job.visitor)
        if spans:
            for span in reversed(spans):
                if span[1] is None:
                    span[1] = now
                    break
        self._cond.notify_all()

    def _grant(self, job: Job, now: float) -> None:
        job.granted = job.started = True
        job.turn_started = job._step_started = now
        job.last_turn = self._visitor_turn[job.visitor] = next(self._turns)
        self._usage.setdefault(job.visitor, []).append([now, None])

    def _admit(self) -> None:
        """Admit queued jobs round the visitors while they fit (see the module docstring)."""
        budget = int(self._memory())
        used = sum(j.nbytes for j in self._jobs if j.admitted)
        if self._head is not None and not self._head.admitted and used + self._head.nbytes <= budget:
            self._admit_one(self._head)
            used += self._head.nbytes
            self._head = None
        queued = sorted((j for j in self._jobs if not j.admitted and not j.cancelled and j is not self._head),
                        key=lambda j: (self._visitor_admitted.get(j.visitor, 0), j.seq))
        for job in queued:
            fits = used + job.nbytes <= budget
            head = self._head
            if fits and head is not None:  # passing the head: see the module docstring
                passing = sum(j.nbytes for j in self._jobs if j.admitted and j.passed is head)
                fits = passing + job.nbytes <= min(budget // OVERTAKE_SHARE, budget - head.nbytes)
            if fits:
                self._admit_one(job)
                used += job.nbytes
                job.passed = head
            elif head is None:
                self._head = job

    def _admit_one(self, job: Job) -> None:
        job.admitted = True
        self._visitor_admitted[job.visitor] = next(self._seq)

    def _turn_order(self, now: float) -> list[Job]:
        """Admitted jobs waiting for a worker, in the order turns go (see :meth:`_rank`)."""
        waiting = [j for j in self._jobs if j.admitted and not j.granted and not j.cancelled]
        return sorted(waiting, key=lambda j: self._rank(j, now))

    def _rank(self, job: Job, now: float) -> tuple:
        """Where a job comes in the turns: the visitor whose jobs held workers least over the
        last WINDOW_S first (a visitor with a short request is served before those running
        long work, which have used more), then the visitor whose last turn is oldest (round
        robin among equals), then the job of that visitor with the oldest turn, then the
        oldest job."""
        return (round(self._used(job.visitor, now), 1), self._visitor_turn.get(job.visitor, 0), job.last_turn, job.seq)

    def _used(self, visitor: Hashable, now: float, at: float | None = None) -> float:
        """Worker seconds ``visitor``'s jobs held over (at - WINDOW_S, at] (``at``: now by
        default; turns still running are counted up to now)."""
        at = now if at is None else at
        spans = self._usage.get(visitor, [])
        spans[:] = [s for s in spans if s[1] is None or s[1] > now - WINDOW_S]
        return sum(max(0.0, min(now if e is None else e, at) - max(s, at - WINDOW_S)) for s, e in spans)

    def _candidates(self, now: float, besides: Job | None = None) -> Iterator[Job]:
        """The waiting jobs that could get a worker now, in turn order: within quota, and
        their gate open to them (see :meth:`_may_enter`)."""
        for job in self._turn_order(now):
            if job is besides or self._quota_wait(job.visitor, now) > 0 or self._long_over(job, now, besides):
                continue
            if job.want is not None and not self._may_enter(*job.want):
                continue
            yield job

    def _next_ready(self, now: float, besides: Job | None = None) -> Job | None:
        return next(self._candidates(now, besides), None)

    def _may_enter(self, gate: Gate, mode: Hashable) -> bool:
        """Whether a new holder may enter ``gate`` in ``mode`` now: the gate is open for the mode,
        and it is not being drained. A gate is drained for a job that waits for it in another
        mode once none of its holders entered before that job asked: new holders of the same
        mode may join while an older holder is still in (they delay the waiting job by no more
        than their own step, and a short request is not held back by a long one's forward
        pass), but no longer, so the waiting job gets the gate once the holders that were there
        leave."""
        with gate._cond:
            if not gate.open_for(mode):
                return False
            if not gate.holders:  # an empty gate goes to whoever comes first (in turn order)
                return True
        asked = [j.want_seq for j in self._jobs
                 if j.want is not None and j.want[0] is gate and j.want[1] != mode and not j.cancelled]
        if not asked:
            return True
        return any(j.gate is gate and j.gate_seq < min(asked) for j in self._jobs)

    def _dispatch(self) -> None:
        """Admit what fits, then give the free workers to the next jobs in turn order."""
        now = self._clock()
        self._admit()
        free = max(1, int(self._workers())) - sum(j.granted for j in self._jobs)
        granted = False
        missed: set[int] = set()
        while free > 0:
            job = next((j for j in self._candidates(now) if id(j) not in missed), None)
            if job is None:
                break
            if job.want is not None:
                gate, mode = job.want
                with gate._cond:  # checked again and entered at once (holders outside any job use it too)
                    if not self._may_enter(gate, mode):
                        missed.add(id(job))
                        continue
                    job.gate, job.gate_mode, job.gate_first = gate, mode, gate._enter(mode)
                job.want, job.gate_seq = None, next(self._seq)
            self._grant(job, now)
            free -= 1
            granted = True
        if granted:
            self._cond.notify_all()

    def _quota_wait(self, visitor: Hashable, now: float) -> float:
        """Seconds until ``visitor``'s worker time over the last WINDOW_S falls below the quota
        (if its jobs stopped now); 0 when it is below, or there is no quota."""
        quota = float(self._quota())
        if quota <= 0 or self._used(visitor, now) < quota:
            return 0.0
        lo, hi = 0.0, WINDOW_S
        for _ in range(40):  # the use falls as the window moves on: bisect for where it drops below the quota
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self._used(visitor, now, now + mid) >= quota else (lo, mid)
        return hi

    def _remaining(self, job: Job, now: float) -> float:
        """Seconds of worker time the job still needs (an estimate)."""
        ran = job.run_s + (now - job.turn_started if job.granted else 0.0)
        if job.fraction > 0:
            return ran * (1 - job.fraction) / job.fraction
        return max((job.seconds or 0.0) - ran, job.step_s)

    def _status(self, job: Job, now: float) -> Status:
        if job.granted:
            return Status(RUNNING, 0, 0.0, job.what)
        workers = max(1, int(self._workers()))
        running = [j for j in self._jobs if j.granted]
        busy = sum(min(self._remaining(j, now), max(0.0, max(self.slice_s, j.step_s) - (now - j.turn_started)))
                   for j in running)
        if not job.admitted:
            admitted = [j for j in self._jobs if j.admitted]
            ahead = sum(1 for j in self._jobs if j.seq < job.seq and not j.admitted and not j.cancelled)
            wait = sum(self._remaining(j, now) for j in admitted) / workers
            return Status(QUEUED, len([j for j in admitted if not j.granted]) + ahead + 1, wait, job.what)
        quota = self._quota_wait(job.visitor, now)
        order = self._turn_order(now)
        ahead = order[:order.index(job)] if job in order else []
        turn = lambda j: min(max(self.slice_s, j.step_s), self._remaining(j, now))  # noqa: E731
        wait = max(quota, (busy + sum(turn(j) for j in ahead)) / workers)
        state = QUOTA if quota > 0 else PAUSED if job.started else WAITING
        return Status(state, len(ahead) + 1, wait, job.what)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n < 10**10 else f"{n / 1e9:.0f} GB"


# -- the process's scheduler and the calls the backend makes ---------------------------------------
SCHEDULER = Scheduler(limits.job_bytes, lambda: limits.budget(limits.WORKERS),
                      lambda: limits.budget(limits.VISITOR_SECONDS), on_turn=share_threads)
_local = threading.local()  # .job: the job this thread runs; .visitor: whom it acts for


def current() -> Job | None:
    """The job this thread runs, if any."""
    return getattr(_local, "job", None)


def checkpoint(fraction: float | None = None) -> None:
    """A step of the current job ends here (see :meth:`Job.checkpoint`); nothing outside a job."""
    job = current()
    if job is not None:
        job.checkpoint(fraction)


@contextmanager
def hold(gate: Gate, mode: Hashable, setup: Callable[[], ContextManager] | None = None) -> Iterator[Any]:
    """Use ``gate`` in ``mode`` within the block: through the current job (see
    :meth:`Job.hold`), or outside a job by waiting for the gate itself."""
    job = current()
    with (job.hold(gate, mode, setup) if job is not None else gate._held_directly(mode, setup)) as value:
        yield value


@contextmanager
def within(what: str, nbytes: int) -> Iterator[Job]:
    """The current job (the caller's: its declared bytes cover this work), or a new job
    admitted for ``nbytes`` on :data:`SCHEDULER`, of the visitor this thread acts for
    (:func:`acting_for`; ``LOCAL`` by default)."""
    job = current()
    if job is not None:
        yield job
        return
    with SCHEDULER.job(getattr(_local, "visitor", LOCAL), what, nbytes) as job:
        yield job


@contextmanager
def acting_for(visitor: Hashable) -> Iterator[None]:
    """Within the block, jobs that :func:`within` starts on this thread are ``visitor``'s (work
    the app does for a visitor on a thread of its own, such as a download made when clicked)."""
    before = getattr(_local, "visitor", LOCAL)
    _local.visitor = visitor
    try:
        yield
    finally:
        _local.visitor = before
