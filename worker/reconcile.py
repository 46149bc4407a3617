"""Accepted means queued: find batches whose unfinished chunks are on no queue and queue them.

A batch is stored together with its queued chunks, and a killed worker's chunk comes back when
its lease lapses; this is the safety net under both, for work arq dropped (a job record that
expired in the queue) or that Redis lost (the last second of writes before a crash).
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis

from shared import keys
from shared.jobs import live_jobs, requeue
from shared.store import BatchStore

log = logging.getLogger("promptbatch.worker")


async def reconcile(redis: Redis, store: BatchStore, lease_s: float) -> int:
    """One pass over the active batches; returns how many chunks were queued again."""
    requeued = 0
    for batch_id in await store.active_batches():
        chunks = await store.unfinished_chunks(batch_id)
        if not chunks:
            continue
        live = await live_jobs(redis, [keys.job_id(batch_id, c) for c in chunks], lease_s)
        stranded = [chunk for chunk, alive in zip(chunks, live, strict=True) if not alive]
        if stranded:
            await requeue(redis, batch_id, stranded)
            log.warning("batch %s: chunks %s were on no queue; queued again", batch_id, stranded)
            requeued += len(stranded)
    return requeued


async def take_turn(redis: Redis, worker_id: str, period_s: float) -> bool:
    """Whether this worker reconciles now: one worker per period, whichever asks first."""
    return bool(await redis.set(keys.RECONCILE_LOCK, worker_id, px=int(period_s * 1000), nx=True))
