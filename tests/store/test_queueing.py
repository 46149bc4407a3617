"""Queueing chunks, claims on running jobs, and the reconciler, against a real Redis."""

from __future__ import annotations

import contextlib
import json

from redis.asyncio import Redis

from api.lifecycle import submit
from shared import jobs, keys
from shared.jobs import RUN_CHUNK, live_jobs
from shared.results import ItemOutcome
from shared.store import BatchStore
from tests.conftest import make_settings
from tests.store.conftest import item, make_plan
from worker.leases import Leases
from worker.reconcile import reconcile, take_turn


async def _queued(redis: Redis) -> list[str]:
    return [raw.decode() for raw in await redis.zrange(keys.QUEUE, 0, -1)]


async def test_a_batch_is_stored_with_one_queued_job_per_chunk(redis: Redis) -> None:
    settings = make_settings("redis://unused", chunk_size=4)
    batch, _ = await submit(BatchStore(redis), make_plan(10), settings)
    job_ids = [keys.job_id(batch.id, chunk) for chunk in range(3)]
    assert await _queued(redis) == job_ids  # in chunk order
    payload = json.loads(await redis.get(jobs.arq_job(job_ids[2])))
    assert (payload["f"], payload["a"], payload["k"]) == (RUN_CHUNK, [batch.id, 2], {})
    assert await redis.pttl(jobs.arq_job(job_ids[2])) > 24 * 3600 * 1000


async def test_a_claim_is_renewed_retaken_when_lapsed_and_lost_to_another(redis: Redis) -> None:
    mine, theirs = Leases(redis, "me", lease_s=30), Leases(redis, "them", lease_s=30)
    await redis.zadd(keys.QUEUE, {"ja": 1, "jb": 1, "jc": 1})  # jd's batch was deleted
    async with contextlib.AsyncExitStack() as held:
        a, b, c, d = [
            await held.enter_async_context(mine.hold(j)) for j in ("ja", "jb", "jc", "jd")
        ]
        assert await redis.pttl(jobs.arq_in_progress("ja")) <= 30_000
        await redis.delete(jobs.arq_in_progress("jb"))  # Redis lost it, nobody took it
        await held.enter_async_context(theirs.hold("jc"))  # lost, and another worker started it
        await redis.delete(jobs.arq_in_progress("jd"))  # deleted with its batch
        assert await mine.renew() == ["jc", "jd"]
        assert [e.is_set() for e in (a, b, c, d)] == [False, False, True, True]
        assert await redis.get(jobs.arq_in_progress("jb")) == b"me"
        assert await redis.get(jobs.arq_in_progress("jc")) == b"them"
        assert await redis.exists(jobs.arq_in_progress("jd")) == 0
    await redis.delete(jobs.arq_in_progress("ja"))  # arq deletes a finished job's claim
    assert await mine.renew() == []
    assert await redis.exists(jobs.arq_in_progress("ja")) == 0  # and nothing brings it back


async def test_live_jobs_cuts_a_day_long_claim_to_the_lease(redis: Redis) -> None:
    await redis.zadd(keys.QUEUE, {"queued": 1})
    await redis.set(jobs.arq_in_progress("running"), b"1", px=86_410_000)
    assert await live_jobs(redis, ["queued", "running", "lost"], lease_s=30) == [True, True, False]
    assert await redis.pttl(jobs.arq_in_progress("running")) <= 30_000


async def test_the_reconciler_queues_again_only_unfinished_chunks_on_no_queue(
    redis: Redis,
) -> None:
    store = BatchStore(redis)
    batch, _ = await submit(store, make_plan(6), make_settings("redis://unused", chunk_size=2))
    spec = await store.spec(batch.id)
    assert spec is not None
    for index in (0, 1):  # chunk 0 is done
        await store.record(spec, item(index), ItemOutcome(status="succeeded", output="x"))
    await redis.delete(keys.QUEUE)  # every queue entry lost
    await redis.set(jobs.arq_in_progress(keys.job_id(batch.id, 1)), b"w", px=30_000)  # running
    assert await reconcile(redis, store, lease_s=30) == 1
    assert await _queued(redis) == [keys.job_id(batch.id, 2)]
    assert await reconcile(redis, store, lease_s=30) == 0


async def test_one_worker_reconciles_per_period(redis: Redis) -> None:
    assert await take_turn(redis, "a", 30)
    assert not await take_turn(redis, "b", 30)
