"""The scheduler against a real Redis: what waits on arq's queue, in what order, and when a
batch may take another job slot; claims, leases and the reconciler's safety net.

Workers are played by the test: a job is "taken" the way arq takes it (the first due job),
then begun, drained and ended through the scheduler as a run does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.connections import ArqRedis
from redis.asyncio import Redis

from api.lifecycle import cancel, submit
from shared import jobs, keys
from shared.batches import BatchPlan
from shared.results import ItemOutcome
from shared.scheduler import HEADS_PER_OWNER, Scheduler, drop_jobs, live_jobs, window
from shared.settings import Settings
from shared.store import BatchStore
from tests.conftest import make_settings
from tests.helpers import wait_for
from tests.store.conftest import item, make_plan
from tests.store.workers import arq_worker, worker_ctx
from worker.llm import OfflineChatModel
from worker.scheduler import Leases, reconcile, take_turn

LEASE_MS = 30_000


def _settings(**overrides: Any) -> Settings:
    return make_settings("redis://unused", **overrides)


def _one_at_a_time(n: int) -> BatchPlan:
    """A batch of `n` prompts at concurrency 1: a window of one chunk."""
    return make_plan(n, max_concurrency=1)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _queued(redis: Redis) -> list[str]:
    return [raw.decode() for raw in await redis.zrange(keys.QUEUE, 0, -1)]


async def _due(redis: Redis) -> list[str]:
    """The jobs arq would see on a poll now, in its order."""
    return [raw.decode() for raw in await redis.zrangebyscore(keys.QUEUE, "-inf", _now_ms())]


async def _take(redis: Redis, worker: str = "w") -> str | None:
    """As a worker would: the first due job, begun (None when nothing is due)."""
    due = await _due(redis)
    if not due:
        return None
    batch_id, chunk = due[0].rsplit(":", 1)
    await Scheduler(redis).begin(batch_id, int(chunk), worker, LEASE_MS)
    return due[0]


async def _drain(redis: Redis, job_id: str, worker: str = "w") -> None:
    batch_id, chunk = job_id.rsplit(":", 1)
    assert await Scheduler(redis).release(batch_id, int(chunk), worker)


async def test_a_new_batch_has_its_first_chunk_queued_as_arq_queues_a_job(redis: Redis) -> None:
    batch, _ = await submit(
        BatchStore(redis), make_plan(10, max_concurrency=1), _settings(chunk_size=4)
    )
    first = keys.job_id(batch.id, 0)
    assert await _queued(redis) == [first]  # the others wait for their batch's turns
    payload = json.loads(await redis.get(jobs.arq_job(first)))
    expected = json.loads(jobs.job_payload(batch.id, 0, payload["et"]))
    assert payload == expected  # the record arq itself would write
    assert jobs.loads_job(await redis.get(jobs.arq_job(first)))["a"] == [batch.id, 0]
    assert abs(payload["et"] - _now_ms()) < 60_000
    assert await redis.pttl(jobs.arq_job(first)) > 24 * 3600 * 1000


async def test_a_batch_takes_another_slot_only_once_a_chunk_has_drained(redis: Redis) -> None:
    batch, _ = await submit(
        BatchStore(redis), make_plan(10, max_concurrency=1), _settings(chunk_size=4)
    )
    first = await _take(redis)
    assert first == keys.job_id(batch.id, 0)
    assert await _due(redis) == []  # at its concurrency: no second slot for it
    await _drain(redis, first)  # every call of chunk 0 started
    second = await _take(redis)
    assert second == keys.job_id(batch.id, 1)
    await _drain(redis, first)  # chunk 0's run ends: chunk 1 still feeds the batch
    assert await _due(redis) == []


async def test_a_wide_batch_takes_its_window_and_no_more(redis: Redis) -> None:
    settings = _settings(chunk_size=1, run_concurrency=16)
    batch, _ = await submit(BatchStore(redis), make_plan(8, max_concurrency=64), settings)
    first = [keys.job_id(batch.id, chunk) for chunk in range(4)]  # window ceil(64 / 16)
    assert await _due(redis) == first
    assert [await _take(redis) for _ in range(4)] == first
    assert await _due(redis) == []
    await _drain(redis, first[2])
    assert await _due(redis) == [keys.job_id(batch.id, 4)]


async def test_keys_share_alike_whatever_their_number_of_batches(redis: Redis) -> None:
    store, settings = BatchStore(redis), _settings(chunk_size=1, run_concurrency=16)
    for _ in range(4):  # key a: four batches; key b: one; each batch able to use 64 slots
        await submit(store, make_plan(64, max_concurrency=1024), settings, owner="a")
    b, _ = await submit(store, make_plan(64, max_concurrency=1024), settings, owner="b")
    taken = [await _take(redis) for _ in range(24)]  # slots come free, one by one
    to_b = sum(job is not None and job.startswith(b.id) for job in taken)
    assert to_b == 12, f"key b took {to_b} of 24 slots"  # keys alternate, four turns each


async def test_a_run_does_not_begin_a_job_another_worker_holds(redis: Redis) -> None:
    await submit(BatchStore(redis), make_plan(4), _settings(chunk_size=4))
    job = (await _due(redis))[0]
    batch_id, _ = job.rsplit(":", 1)
    await redis.set(jobs.arq_in_progress(job), b"other-worker", px=LEASE_MS)  # took it over
    async with Leases(redis, "stalled", lease_s=30).hold(batch_id, 0) as run:
        assert run.lost.is_set()
    assert await redis.get(jobs.arq_in_progress(job)) == b"other-worker"


async def test_a_clock_that_went_back_is_followed(redis: Redis) -> None:
    await redis.set(keys.SCHED_CLOCK, f"{_now_ms() + 3_600_000:.2f}")  # Redis restored, say
    batch, _ = await submit(BatchStore(redis), make_plan(4), _settings())
    assert await _due(redis) == [keys.job_id(batch.id, 0)]


async def test_a_new_owner_waits_behind_one_turn_of_each_other_owner(redis: Redis) -> None:
    store, settings = BatchStore(redis), _settings()
    big = [(await submit(store, make_plan(1), settings, owner="a"))[0].id for _ in range(50)]
    assert len(await _due(redis)) == HEADS_PER_OWNER  # not 50
    small, _ = await submit(store, make_plan(1), settings, owner="b")
    order = [await _take(redis) for _ in range(HEADS_PER_OWNER + 1)]
    first_turns = [keys.job_id(batch_id, 0) for batch_id in big[:HEADS_PER_OWNER]]
    assert order == [*first_turns, keys.job_id(small.id, 0)]


async def test_a_running_job_is_due_again_only_when_its_lease_lapses(redis: Redis) -> None:
    await submit(BatchStore(redis), make_plan(10), _settings(chunk_size=10))
    job = (await _due(redis))[0]
    batch_id, _ = job.rsplit(":", 1)
    await Scheduler(redis).begin(batch_id, 0, "w", lease_ms=300)
    score = await redis.zscore(keys.QUEUE, job)
    assert score is not None
    assert score > _now_ms()
    assert await _due(redis) == []  # running: out of the window arq reads
    renewed = await Scheduler(redis).renew("w", 300, [job])
    assert renewed == [True]
    assert (await redis.zscore(keys.QUEUE, job) or 0) >= score  # renewed with its lease

    async def due_again() -> bool:
        return await _due(redis) == [job]

    await wait_for(due_again, timeout_s=10, what="the lapsed lease's job to be due")
    assert await redis.exists(jobs.arq_in_progress(job)) == 0


@contextlib.asynccontextmanager
async def _counted_poll(redis_url: str, settings: Settings) -> AsyncIterator[tuple[list[int], Any]]:
    """An arq worker whose queue reads are counted (entries per read)."""
    reads: list[int] = []

    class Counting(ArqRedis):
        async def zrangebyscore(self, *args: Any, **kwargs: Any) -> Any:
            found = await super().zrangebyscore(*args, **kwargs)
            reads.append(len(found))
            return found

    client = Counting.from_url(redis_url)
    worker = arq_worker(settings, client, worker_ctx(client, settings, "w", OfflineChatModel()))
    try:
        yield reads, worker
    finally:
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        await client.aclose()


async def test_a_poll_reads_a_bounded_window_and_finds_work_past_150_running_jobs(
    redis: Redis, redis_url: str
) -> None:
    store, settings = BatchStore(redis), make_settings(redis_url)
    for n in range(1000):  # a thousand owners, each with a batch waiting
        await submit(store, make_plan(1), settings, owner=f"key{n}")
    for _ in range(150):  # running elsewhere, queued before every waiting job
        assert await _take(redis, worker="elsewhere") is not None
    assert len(await _due(redis)) == 850
    async with _counted_poll(redis_url, settings) as (reads, worker):
        await worker._poll_iteration()
        assert reads == [worker.queue_read_limit]  # one read of arq's window, not the queue
        await asyncio.gather(*worker.tasks.values())
    # Every job slot found work (and its job, done, left the queue).
    assert len(await _due(redis)) == 850 - settings.worker_max_jobs
    assert worker.queue_read_limit <= 100


async def test_a_million_item_batch_keeps_only_its_window_on_the_queue(redis: Redis) -> None:
    settings = _settings(chunk_size=1)  # 10,000 chunks, as a million items in chunks of 100
    await submit(BatchStore(redis), make_plan(10_000, max_concurrency=3), settings)
    assert await redis.zcard(keys.QUEUE) == window(3, settings.run_concurrency) == 3


async def test_a_chunk_whose_job_vanished_gives_its_place_in_the_window_back(
    redis: Redis,
) -> None:
    batch, _ = await submit(
        BatchStore(redis), make_plan(10, max_concurrency=1), _settings(chunk_size=4)
    )
    first = await _take(redis)
    assert first is not None
    await drop_jobs(redis, [first])  # lost with the worker's claim, its end never said
    await Scheduler(redis).join(batch.id)
    assert await _due(redis) == [keys.job_id(batch.id, 1)]


async def test_a_cancelled_batch_s_head_gives_its_owner_s_next_batch_the_turn(
    redis: Redis,
) -> None:
    store, settings = BatchStore(redis), _settings()
    ids = [(await submit(store, make_plan(1), settings))[0].id for _ in range(HEADS_PER_OWNER + 1)]
    assert len(await _due(redis)) == HEADS_PER_OWNER
    await cancel(store, redis, ids[0])
    assert await _due(redis) == [keys.job_id(batch_id, 0) for batch_id in ids[1:]]


async def test_a_claim_is_renewed_retaken_when_lapsed_and_lost_to_another(redis: Redis) -> None:
    mine = Leases(redis, "me", lease_s=30)
    ja, jb, jc, jd = (keys.job_id(f"batch_{name}", 0) for name in "abcd")
    await redis.zadd(keys.QUEUE, {ja: 1, jb: 1, jc: 1})  # jd's batch was deleted
    async with contextlib.AsyncExitStack() as held:
        a, b, c, d = [
            await held.enter_async_context(mine.hold(f"batch_{name}", 0)) for name in "abcd"
        ]
        assert await redis.pttl(jobs.arq_in_progress(ja)) <= 30_000
        await redis.delete(jobs.arq_in_progress(jb))  # Redis lost it, nobody took it
        await redis.set(jobs.arq_in_progress(jc), b"them", px=30_000)  # lapsed, taken over
        await redis.delete(jobs.arq_in_progress(jd))  # deleted with its batch
        assert await mine.renew() == [jc, jd]
        assert [run.lost.is_set() for run in (a, b, c, d)] == [False, False, True, True]
        assert await redis.get(jobs.arq_in_progress(jb)) == b"me"
        assert await redis.get(jobs.arq_in_progress(jc)) == b"them"
        assert await redis.exists(jobs.arq_in_progress(jd)) == 0
        await redis.delete(jobs.arq_in_progress(ja))  # arq deletes a finished job's claim
    assert await mine.renew() == []
    assert await redis.exists(jobs.arq_in_progress(ja)) == 0  # and nothing brings it back


async def test_a_run_past_its_lease_starts_no_call_until_a_renewal_says_whose_it_is(
    redis: Redis,
) -> None:
    leases = Leases(redis, "me", lease_s=30)
    ours, theirs = (keys.job_id(f"batch_{name}", 0) for name in "ab")
    await redis.zadd(keys.QUEUE, {ours: 1, theirs: 1})
    async with leases.hold("batch_a", 0) as a, leases.hold("batch_b", 0) as b:
        await asyncio.wait_for(leases.held(a), 1)  # within its lease: at once
        a.held_until = b.held_until = 0.0  # as if this process had been stopped for a while
        waiting = [asyncio.create_task(leases.held(run)) for run in (a, b)]
        await asyncio.sleep(0)
        assert not any(task.done() for task in waiting)
        await redis.set(jobs.arq_in_progress(theirs), b"them", px=30_000)  # taken over
        assert await leases.renew() == [theirs]
        await asyncio.wait_for(asyncio.gather(*waiting), 1)
        assert not a.lost.is_set()  # still its own, for another lease
        assert a.held_until > time.monotonic()
        assert b.lost.is_set()  # another's: it starts no more calls


async def test_a_cancelled_run_hands_its_job_back_due_at_once(redis: Redis) -> None:
    await submit(BatchStore(redis), make_plan(4), _settings(chunk_size=4))
    job = (await _due(redis))[0]
    leases = Leases(redis, "w", lease_s=30)
    batch_id, _ = job.rsplit(":", 1)
    began = asyncio.Event()

    async def run() -> None:
        async with leases.hold(batch_id, 0):
            began.set()
            await asyncio.Event().wait()  # a run in progress

    task = asyncio.create_task(run())
    await began.wait()
    assert await _due(redis) == []
    task.cancel()  # as SIGTERM cancels a run
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _due(redis) == [job]


async def test_live_jobs_cuts_a_day_long_claim_to_the_lease(redis: Redis) -> None:
    await redis.zadd(keys.QUEUE, {"queued": 1})
    await redis.set(jobs.arq_in_progress("running"), b"1", px=86_410_000)
    assert await live_jobs(redis, ["queued", "running", "lost"], lease_s=30) == [True, True, False]
    assert await redis.pttl(jobs.arq_in_progress("running")) <= 30_000


async def test_the_reconciler_queues_again_only_dispatched_chunks_on_no_queue(
    redis: Redis,
) -> None:
    store = BatchStore(redis)
    batch, _ = await submit(store, make_plan(6, max_concurrency=1), _settings(chunk_size=2))
    spec = await store.spec(batch.id)
    assert spec is not None
    first = await _take(redis)
    assert first is not None
    for index in (0, 1):  # chunk 0 is done
        await store.record(spec, item(index), ItemOutcome(status="succeeded", output="x"))
    await _drain(redis, first)
    second = await _take(redis, worker="other")  # chunk 1 runs
    assert second == keys.job_id(batch.id, 1)
    await redis.zrem(keys.QUEUE, first)  # arq finished chunk 0
    await redis.delete(keys.QUEUE)  # then every queue entry was lost; chunk 2 never queued
    assert await reconcile(redis, store, lease_s=30) == 0  # chunk 1 still runs (claimed)
    await redis.delete(jobs.arq_in_progress(second))  # and its worker's claim lapsed too
    assert await reconcile(redis, store, lease_s=30) == 1
    assert await _queued(redis) == [second]
    assert await reconcile(redis, store, lease_s=30) == 0


async def test_one_worker_reconciles_per_period(redis: Redis) -> None:
    assert await take_turn(redis, "a", 30)
    assert not await take_turn(redis, "b", 30)
