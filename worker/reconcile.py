"""Accepted means queued: find batches whose unfinished chunks are on no queue and queue them,
and end the chunks of batches past their completion window that no worker is running.

A batch is stored together with its queued chunks, and a killed worker's chunk comes back when
its lease lapses; this is the safety net under both, for work arq dropped (a job record that
expired in the queue) or that Redis lost (the last second of writes before a crash). A chunk
taken after its batch's window ended is expired by the worker that takes it; the reconciler
expires those still waiting behind other work, so that an overdue batch ends within a period
even on a busy queue.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis

from shared import keys
from shared.jobs import claimed, drop_jobs, live_jobs, requeue
from shared.store import BatchStore

log = logging.getLogger("promptbatch.worker")


async def reconcile(redis: Redis, store: BatchStore, lease_s: float) -> int:
    """One pass over the active batches; returns how many chunks were queued again."""
    requeued = 0
    for batch_id in await store.active_batches():
        chunks = await store.unfinished_chunks(batch_id)
        if not chunks:
            continue
        if await expire_idle(redis, store, batch_id, chunks, lease_s):
            continue
        live = await live_jobs(redis, [keys.job_id(batch_id, c) for c in chunks], lease_s)
        stranded = [chunk for chunk, alive in zip(chunks, live, strict=True) if not alive]
        if stranded:
            await requeue(redis, batch_id, stranded)
            log.warning("batch %s: chunks %s were on no queue; queued again", batch_id, stranded)
            requeued += len(stranded)
    return requeued


async def expire_idle(
    redis: Redis, store: BatchStore, batch_id: str, chunks: list[int], lease_s: float = 30.0
) -> bool:
    """If the batch's completion window has ended, take its unfinished chunks that no worker
    runs off the queue and expire their items (a running chunk is left to its run, whose calls
    in flight finish and are kept). Returns whether the window had ended."""
    spec = await store.spec(batch_id)
    if spec is None or not spec.overdue():
        return False
    job_ids = [keys.job_id(batch_id, chunk) for chunk in chunks]
    # A claim arq set for a day whose worker died before shortening it is cut to the lease
    # first: else it would count as running, and keep the batch from expiring, for a day.
    await live_jobs(redis, job_ids, lease_s)
    running = await claimed(redis, job_ids)
    idle = [chunk for chunk, taken in zip(chunks, running, strict=True) if not taken]
    await drop_jobs(redis, [keys.job_id(batch_id, chunk) for chunk in idle])
    expired = 0
    for chunk in idle:
        expired += await store.expire_pending(spec, chunk)
    if expired:
        log.info("batch %s: window ended; %d items of chunks %s expired", batch_id, expired, idle)
    return True


async def take_turn(redis: Redis, worker_id: str, period_s: float) -> bool:
    """Whether this worker reconciles now: one worker per period, whichever asks first."""
    return bool(await redis.set(keys.RECONCILE_LOCK, worker_id, px=int(period_s * 1000), nx=True))
