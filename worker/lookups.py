"""Webhook host lookups in a pool of threads of their own, one lookup at a time per owner.

`socket.getaddrinfo` cannot be stopped: when an attempt's timeout ends the wait for it, the
lookup goes on in its thread until the name server answers or gives up (tens of seconds). So
an owner whose name server hangs would, one attempt after another, tie up every thread of the
pool. Here an owner's next lookup starts only when its previous one has left its thread: a
hung name server holds one thread and its own owner's lookups, never another owner's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class OwnerLookups:
    """A thread pool whose work is queued per owner (`of(owner)` is that owner's executor)."""

    def __init__(self, threads: int) -> None:
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="webhook-dns")
        self._lock = threading.Lock()
        #: Per owner, what its next lookup waits for: its latest one leaving its thread.
        self._last: dict[str, Future[None]] = {}

    def of(self, owner: str) -> Executor:
        return _OwnerQueue(self, owner)

    def submit(self, owner: str, fn: Callable[[], T]) -> Future[T]:
        """Run `fn` in the pool once `owner`'s previous lookup has left its thread. The
        future returned may be cancelled while it waits; once it runs, it runs to its end."""
        result: Future[T] = Future()
        left: Future[None] = Future()  # done once this lookup has left (or never took) a thread
        with self._lock:
            previous = self._last.get(owner)
            self._last[owner] = left

        def done() -> None:
            left.set_result(None)
            with self._lock:
                if self._last.get(owner) is left:
                    del self._last[owner]

        def run() -> None:
            try:
                result.set_result(fn())
            except BaseException as exc:
                result.set_exception(exc)
            finally:
                done()

        def start(_: object = None) -> None:
            if not result.set_running_or_notify_cancel():  # given up while it waited
                done()
                return
            try:
                self.pool.submit(run)
            except RuntimeError as exc:  # the pool is shut down
                result.set_exception(exc)
                done()

        if previous is None:
            start()
        else:
            previous.add_done_callback(start)
        return result

    def busy(self, owner: str) -> bool:
        """Whether a lookup of `owner`'s is waiting or in a thread."""
        with self._lock:
            return owner in self._last

    def shutdown(self) -> None:
        """Let hung lookups go (their threads end when their name servers answer)."""
        self.pool.shutdown(wait=False, cancel_futures=True)


class _OwnerQueue(Executor):
    """One owner's view of `OwnerLookups`, for `loop.run_in_executor`."""

    def __init__(self, lookups: OwnerLookups, owner: str) -> None:
        self.lookups = lookups
        self.owner = owner

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        return self.lookups.submit(self.owner, lambda: fn(*args, **kwargs))
