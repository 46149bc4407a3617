"""The batch-wide concurrency limit shared by several holders (workers) through a real Redis."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from shared import keys
from tests.helpers import wait_for
from worker.concurrency import BatchLimiter


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    for batch_id in ("batch_l", "batch_f", "batch_d", "batch_c", "batch_o"):
        await client.hset(keys.batch(batch_id), "status", "in_progress")
    for batch_id in ("batch_n", "batch_i"):
        await client.hset(keys.batch(batch_id), "status", "in_progress")
    yield client
    await client.aclose()


class Calls:
    """Counts calls in flight across every holder, as a provider would."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.by_holder: dict[str, int] = {}

    async def call(self, limiter: BatchLimiter, work_s: float) -> None:
        async with limiter.slot():
            self.now += 1
            self.most = max(self.most, self.now)
            self.by_holder[limiter.holder] = self.by_holder.get(limiter.holder, 0) + 1
            await asyncio.sleep(work_s)  # the provider call itself
            self.now -= 1


async def test_two_holders_together_never_exceed_the_limit(redis: Redis) -> None:
    a, b = (BatchLimiter(redis, "batch_l", 5, holder, ttl_s=5) for holder in ("a", "b"))
    calls, rng = Calls(), random.Random(3)
    await asyncio.gather(
        *(calls.call(limiter, rng.uniform(0.001, 0.02)) for _ in range(80) for limiter in (a, b))
    )
    await a.close()
    await b.close()
    assert calls.most == 5
    assert calls.by_holder == {"a": 80, "b": 80}
    assert await redis.exists(keys.slots("batch_l")) == 0  # both gave everything back


async def test_a_newcomer_gets_a_fair_share_from_a_busy_holder(redis: Redis) -> None:
    a, b = (BatchLimiter(redis, "batch_f", 4, holder, ttl_s=2.0) for holder in ("a", "b"))
    calls = Calls()
    busy = [asyncio.create_task(calls.call(a, 0.01)) for _ in range(400)]
    await wait_for(lambda: _true(a.in_use == 4), what="a to use every slot")
    newcomer = [asyncio.create_task(calls.call(b, 0.01)) for _ in range(400)]
    await wait_for(lambda: _true(b.in_use == 2), what="b to get half of the slots")
    for task in busy + newcomer:
        task.cancel()
    await asyncio.gather(*busy, *newcomer, return_exceptions=True)
    await a.close()
    await b.close()
    assert calls.most == 4


async def test_a_holder_with_a_long_renewal_period_still_yields_to_a_newcomer(
    redis: Redis,
) -> None:
    # Renewals every 150 s: the busy holder must learn of the newcomer from its own waiting
    # calls, not from its next renewal.
    a, b = (BatchLimiter(redis, "batch_n", 4, holder, ttl_s=600) for holder in ("a", "b"))
    calls = Calls()
    busy = [asyncio.create_task(calls.call(a, 0.01)) for _ in range(2000)]
    await wait_for(lambda: _true(a.in_use == 4), what="a to use every slot")
    newcomer = [asyncio.create_task(calls.call(b, 0.01)) for _ in range(2000)]
    await wait_for(lambda: _true(b.in_use == 2), timeout_s=10, what="b to get half of the slots")
    assert not all(task.done() for task in busy)  # b got its share while a still had work
    for task in busy + newcomer:
        task.cancel()
    await asyncio.gather(*busy, *newcomer, return_exceptions=True)
    await a.close()
    await b.close()


async def test_a_holder_gives_back_its_idle_slots_when_its_calls_end(redis: Redis) -> None:
    limiter = BatchLimiter(redis, "batch_i", 8, "a", ttl_s=600)  # renewals every 150 s
    calls, rng = Calls(), random.Random(5)
    await asyncio.gather(*(calls.call(limiter, rng.uniform(0, 0.005)) for _ in range(300)))
    await wait_for(lambda: _true(limiter.held == 0), timeout_s=10, what="the idle slots to go back")
    assert await redis.exists(keys.slots("batch_i")) == 0
    await limiter.close()


async def test_a_dead_holders_slots_lapse_after_its_ttl(redis: Redis) -> None:
    dead = BatchLimiter(redis, "batch_d", 2, "dead", ttl_s=0.3)
    await dead.acquire()
    await dead.acquire()
    assert dead._pump is not None
    dead._pump.cancel()  # the process is gone: no renewals, no release
    alive = BatchLimiter(redis, "batch_d", 2, "alive", ttl_s=5)
    await asyncio.wait_for(alive.acquire(), timeout=10)
    assert alive.in_use == 1
    await alive.close()


async def test_closing_gives_the_slots_back_at_once(redis: Redis) -> None:
    first = BatchLimiter(redis, "batch_c", 3, "first", ttl_s=60)
    for _ in range(3):
        await first.acquire()
    for _ in range(3):
        first.release()
    await first.close()
    second = BatchLimiter(redis, "batch_c", 3, "second", ttl_s=60)
    for _ in range(3):
        await asyncio.wait_for(second.acquire(), timeout=1)  # granted on its first ask
    await second.close()


async def test_a_share_that_lapsed_in_an_outage_is_not_reclaimed_over_the_limit(
    redis: Redis,
) -> None:
    a, b = (BatchLimiter(redis, "batch_o", 4, holder, ttl_s=60) for holder in ("a", "b"))
    a_gate, b_gate = asyncio.Event(), asyncio.Event()

    async def call(limiter: BatchLimiter, gate: asyncio.Event) -> None:
        async with limiter.slot():
            await gate.wait()

    first = [asyncio.create_task(call(a, a_gate)) for _ in range(4)]
    await wait_for(lambda: _true(a.in_use == 4), what="a to use every slot")
    await redis.delete(keys.slots("batch_o"))  # Redis was away past a's ttl: its entry lapsed
    b_calls = [asyncio.create_task(call(b, b_gate)) for _ in range(4)]
    await wait_for(lambda: _true(b.in_use == 4), what="b to take the slots it found free")
    await a._exchange(*a._demand())  # a's renewal once Redis is back
    assert a.held == 0
    slots = await redis.hgetall(keys.slots("batch_o"))  # type: ignore[misc]
    assert {k: int(v.split(b":")[0]) for k, v in slots.items()} == {b"b": 4}
    second = [asyncio.create_task(call(a, a_gate)) for _ in range(4)]
    a_gate.set()
    await asyncio.gather(*first)
    assert a.in_use == 0  # a's calls already running finished; none took their place
    b_gate.set()
    await asyncio.gather(*b_calls, *second)  # b gave back what it no longer used, to a
    await a.close()
    await b.close()


async def test_a_deleted_batch_grants_no_slots_and_leaves_no_key(redis: Redis) -> None:
    limiter = BatchLimiter(redis, "batch_gone", 3, "w", ttl_s=60)
    assert await limiter._exchange(keep=0, want=3) == 0
    assert await redis.exists(keys.slots("batch_gone")) == 0


async def _true(value: bool) -> bool:
    return value
