"""Webhook host lookups in a pool of threads of their own, one lookup at a time per owner.

`socket.getaddrinfo` cannot be stopped: when an attempt's timeout ends the wait for it, the
lookup goes on in its thread until the name server answers or gives up (tens of seconds). So
an owner whose name server hangs would, one attempt after another, tie up every thread of the
pool. Here an owner's next lookup starts only when its previous one has left its thread: a
hung name server holds one thread and its own owner's lookups, never another owner's. A lookup
given up while it waited for its turn (or for a thread) never runs.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_Waiting = tuple[Callable[[], Any], "Future[Any]"]


class OwnerLookups:
    """A thread pool whose work is queued per owner (`of(owner)` is that owner's executor)."""

    def __init__(self, threads: int) -> None:
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="webhook-dns")
        self._lock = threading.Lock()
        #: Owners with a lookup in the pool, and each one's lookups waiting for it to end.
        self._waiting: dict[str, deque[_Waiting]] = {}

    def of(self, owner: str) -> Executor:
        return _OwnerQueue(self, owner)

    def submit(self, owner: str, fn: Callable[[], T]) -> Future[T]:
        """Run `fn` in the pool once `owner`'s previous lookup has left its thread. The future
        returned may be cancelled until a thread starts it; then it runs to its end."""
        result: Future[T] = Future()
        with self._lock:
            queue = self._waiting.get(owner)
            if queue is not None:  # the owner's turn is taken: wait, dropping those given up
                kept = [entry for entry in queue if not entry[1].cancelled()]
                queue.clear()
                queue.extend([*kept, (fn, result)])
                return result
            self._waiting[owner] = deque()
        self._start(owner, fn, result)
        return result

    def busy(self, owner: str) -> bool:
        """Whether a lookup of `owner`'s is in the pool or waiting for its turn."""
        with self._lock:
            return owner in self._waiting

    def shutdown(self) -> None:
        """Let hung lookups go (their threads end when their name servers answer)."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _start(self, owner: str, fn: Callable[[], Any], result: Future[Any]) -> None:
        try:
            self.pool.submit(self._run, owner, fn, result)
        except RuntimeError as exc:  # the pool is shut down
            if result.set_running_or_notify_cancel():
                result.set_exception(exc)

    def _run(self, owner: str, fn: Callable[[], Any], result: Future[Any]) -> None:
        try:
            if result.set_running_or_notify_cancel():  # not given up meanwhile
                try:
                    result.set_result(fn())
                except BaseException as exc:
                    result.set_exception(exc)
        finally:
            self._next(owner)

    def _next(self, owner: str) -> None:
        """The owner's next lookup not given up into the pool, or the owner's turn freed (a
        loop, never a chain of callbacks however many were given up)."""
        with self._lock:
            queue = self._waiting[owner]
            while queue:
                fn, result = queue.popleft()
                if not result.cancelled():
                    break
            else:
                del self._waiting[owner]
                return
        self._start(owner, fn, result)


class _OwnerQueue(Executor):
    """One owner's view of `OwnerLookups`, for `loop.run_in_executor`."""

    def __init__(self, lookups: OwnerLookups, owner: str) -> None:
        self.lookups = lookups
        self.owner = owner

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        return self.lookups.submit(self.owner, lambda: fn(*args, **kwargs))
