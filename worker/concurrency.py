"""A batch's `max_concurrency`, held in Redis so that it bounds all workers together.

Each worker process keeps one `BatchLimiter` per running batch. It holds some of the batch's
slots in Redis and hands them to its own provider calls locally, so a call that finishes passes
its slot straight to the next one without a Redis round trip. It talks to Redis only to ask for
more slots, to give back what it does not need, and to renew its hold. A holder's slots lapse
with it: a killed worker's share is free again after `ttl_s`.

Sharing is fair: while other holders are asking for slots, a holder keeps no more than an even
share (`ceil(limit / askers)`), and gives back the rest as its calls finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys, lua

log = logging.getLogger("promptbatch.limiter")

_EXCHANGE = lua.load("worker", "exchange")


#: How soon a holder that is short of slots asks again, at first and at most (seconds).
POLL_MIN_S = 0.01
POLL_MAX_S = 0.1
#: How often a holder whose calls wait for slots checks whether other holders ask too (its
#: fair share shrinks then): other workers get their share within this, not within a refresh.
CONTENDED_S = 0.1


class BatchLimiter:
    """One worker's share of one batch's concurrency. Use `async with limiter.slot():`."""

    def __init__(self, redis: Redis, batch_id: str, limit: int, holder: str, ttl_s: float) -> None:
        self._script = redis.register_script(_EXCHANGE)
        self._key = keys.slots(batch_id)
        self._batch_key = keys.batch(batch_id)
        self.batch_id = batch_id
        self.limit = limit
        self.holder = holder
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._refresh_s = ttl_s / 4
        self.held = 0  # slots this worker holds in Redis
        self.in_use = 0  # of those, taken by calls now
        self.cap = limit  # what this worker may hold while others ask for slots
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the batch's slots for the duration of one provider call."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    async def acquire(self) -> None:
        if not self._waiters and self.in_use < min(self.held, self.cap):
            self.in_use += 1
            return
        if self._pump is None:
            self._pump = asyncio.create_task(self._run_pump(), name=f"limiter {self.batch_id}")
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as this call was cancelled: pass it on
            raise

    def release(self) -> None:
        self.in_use -= 1
        self._hand_out()
        if self.held > self.cap or not self._waiters:
            self._wake.set()  # over the fair share, or nothing waits: give the surplus back now

    async def close(self) -> None:
        """Give back every slot and stop (the worker has no more calls for this batch)."""
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        with contextlib.suppress(RedisError):
            await self._exchange(keep=0, want=0)

    def _hand_out(self) -> None:
        while self._waiters and self.in_use < min(self.held, self.cap):
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_use += 1
                waiter.set_result(None)

    def _demand(self) -> tuple[int, int]:
        """(slots to keep, slots to ask for) given the calls running and waiting now."""
        desired = self.in_use + sum(1 for w in self._waiters if not w.done())
        keep = min(self.held, max(self.in_use, min(desired, self.cap)))
        want = max(0, min(desired, self.limit) - keep)
        return keep, want

    def _contended(self) -> bool:
        """Calls wait here although this holder has all it may take: others may ask too."""
        return bool(self._waiters) and self.in_use >= min(self.held, self.cap)

    async def _exchange(self, keep: int, want: int) -> int:
        # Slots given back are gone here before Redis hears of it, so no call can take one
        # meanwhile (keep is never below the slots in use).
        self.held = min(self.held, keep)
        kept, grant, askers = await self._script(
            keys=[self._key, self._batch_key],
            args=[self.holder, keep, want, self.limit, self._ttl_ms],
        )
        # Below the calls in use only after an outage (see exchange.lua): those run on, and no
        # call starts until this holder is back under its share.
        self.held = int(kept) + int(grant)
        self.cap = self.limit if int(askers) == 0 else math.ceil(self.limit / (int(askers) + 1))
        return int(grant)

    async def _run_pump(self) -> None:
        """Ask Redis for slots while calls wait, give back surplus, and renew the hold."""
        poll_s = POLL_MIN_S
        last = 0.0
        while True:
            # Cleared before the demand is read: a release during the exchange below wakes
            # the next round instead of being lost.
            self._wake.clear()
            keep, want = self._demand()
            short = want > 0 and self.in_use >= self.held
            refresh_s = CONTENDED_S if self._contended() else self._refresh_s
            due = time.monotonic() - last >= refresh_s and (self.held > 0 or want > 0)
            if short or keep < self.held or due:
                try:
                    granted = await self._exchange(keep, want)
                except RedisError as exc:  # Redis away: local hand-offs go on meanwhile
                    log.warning(
                        "batch %s: slots unavailable (%s)", self.batch_id, type(exc).__name__
                    )
                    granted = 0
                last = time.monotonic()
                self._hand_out()
                poll_s = POLL_MIN_S if granted else min(poll_s * 2, POLL_MAX_S)
            _, want = self._demand()
            if want > 0 and self.in_use >= self.held:
                timeout = poll_s
            else:
                timeout = CONTENDED_S if self._contended() else self._refresh_s
            # asyncio.timeout, not wait_for: on 3.11, wait_for swallows a cancel that arrives
            # as the event is set, and `close` would wait on a pump that never stops.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()


@dataclass
class Limiters:
    """A worker's limiters, one per batch it is running, shared by that batch's chunks."""

    redis: Redis
    holder: str
    ttl_s: float
    _active: dict[str, tuple[BatchLimiter, int]] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def hold(self, batch_id: str, limit: int) -> AsyncIterator[BatchLimiter]:
        # Each limiter holds under a name of its own: one that is still closing (giving its
        # slots back) must not erase the slots of the next one for the same batch.
        limiter, users = self._active.get(batch_id) or (
            BatchLimiter(
                self.redis, batch_id, limit, f"{self.holder}:{secrets.token_hex(3)}", self.ttl_s
            ),
            0,
        )
        self._active[batch_id] = (limiter, users + 1)
        try:
            yield limiter
        finally:
            limiter, users = self._active[batch_id]
            if users == 1:
                del self._active[batch_id]
                await limiter.close()
            else:
                self._active[batch_id] = (limiter, users - 1)

    async def close(self) -> None:
        for limiter, _ in list(self._active.values()):
            await limiter.close()
        self._active.clear()
