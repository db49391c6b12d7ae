"""A cache bounded by bytes, shared by every session of the process.

Results of a capture are large (at 2,048 tokens on smollm2-135m, 2.3 GB) and of very different
sizes, so a count of entries bounds nothing. :class:`ByteCache` keeps the most recently used
values whose sizes add up to at most ``max_bytes`` (a callable, so that the budget can be read
from the environment when it is used), hands out the same object to every caller (values are
never mutated), and computes a missing value once even when several sessions ask for it at the
same moment.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

V = TypeVar("V")
WAIT_POLL_S = 0.5


class ByteCache(Generic[V]):
    """Least recently used values whose ``size_of`` adds up to at most ``max_bytes()``.

    A value larger than the whole budget is returned but not kept.
    """

    def __init__(self, max_bytes: Callable[[], int], size_of: Callable[[V], int]) -> None:
        self._max_bytes = max_bytes
        self._size_of = size_of
        self._values: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._guard = threading.Lock()  # guards _values and _pending
        self._pending: dict[Hashable, threading.Lock] = {}  # one lock per key being computed

    def get(self, key: Hashable, compute: Callable[[], V], waiting: Callable[[], None] | None = None) -> V:
        """The value of ``key``: cached, or computed by ``compute()`` (once, while other callers
        of the same key wait for it) and kept when it fits. ``waiting`` is called every
        WAIT_POLL_S while this caller waits for another's computation of the key (to say so)."""
        while True:
            with self._guard:
                if key in self._values:
                    self._values.move_to_end(key)
                    return self._values[key][0]
                pending = self._pending.get(key)
                if pending is None:
                    pending = self._pending[key] = threading.Lock()
                    pending.acquire()
                    break
            while not pending.acquire(timeout=WAIT_POLL_S):  # another caller computes it: wait, then look again
                if waiting is not None:
                    waiting()
            pending.release()
        try:
            value = compute()
            self._put(key, value)
            return value
        finally:
            with self._guard:
                del self._pending[key]
            pending.release()

    def _put(self, key: Hashable, value: V) -> None:
        size = self._size_of(value)
        room = self._max_bytes()
        with self._guard:
            if size > room:
                return
            self._values[key] = (value, size)
            total = sum(s for _, s in self._values.values())
            while total > room:
                _, (_, dropped) = self._values.popitem(last=False)
                total -= dropped

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        with self._guard:
            return sum(s for _, s in self._values.values())

    def __len__(self) -> int:
        with self._guard:
            return len(self._values)

    def clear(self) -> None:
        with self._guard:
            self._values.clear()
