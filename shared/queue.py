"""The seam to arq: connections, the JSON job format, and enqueueing a batch's work.

arq is in maintenance mode; everything the service knows about it stays here and in
`worker/main.py`, so swapping it touches two files.
"""

from __future__ import annotations

import json
from typing import Any

from arq.connections import ArqRedis, RedisSettings
from redis.asyncio import ConnectionPool

from shared import keys
from shared.schemas import Batch, BatchPlan
from shared.settings import Settings
from shared.store import BatchStore

#: Name of the task function the worker registers for one chunk of a batch.
RUN_CHUNK = "run_chunk"


def dumps_job(data: dict[str, Any]) -> bytes:
    """arq job payloads are JSON, not arq's default format: whoever writes Redis must not be
    able to run code in a worker."""
    return json.dumps(data, default=str).encode()


def loads_job(raw: bytes) -> dict[str, Any]:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("job payload is not a JSON object")
    return data


def redis_settings(settings: Settings) -> RedisSettings:
    """arq's connection settings from REDIS_URL (for the worker, which builds its own pool)."""
    rs = RedisSettings.from_dsn(settings.require_redis_url())
    rs.conn_timeout = max(1, round(settings.redis_timeout_s))
    return rs


def connect(settings: Settings) -> ArqRedis:
    """A lazily connecting Redis client that can also enqueue jobs; never blocks at start."""
    pool = ConnectionPool.from_url(
        settings.require_redis_url(),
        socket_connect_timeout=settings.redis_timeout_s,
        socket_timeout=settings.redis_timeout_s,
        health_check_interval=30,
    )
    return ArqRedis(
        pool,
        job_serializer=dumps_job,
        job_deserializer=loads_job,
        default_queue_name=keys.QUEUE,
    )


async def enqueue_batch(redis: ArqRedis, batch_id: str, chunks: int) -> None:
    """Queue every chunk of a batch; deterministic job ids make a repeat a no-op."""
    for chunk in range(chunks):
        await redis.enqueue_job(RUN_CHUNK, batch_id, chunk, _job_id=keys.job_id(batch_id, chunk))


async def submit(store: BatchStore, redis: ArqRedis, plan: BatchPlan) -> Batch:
    """Store a batch and queue its chunks; if queueing fails, nothing of it is left behind."""
    batch, chunks = await store.create(plan)
    try:
        await enqueue_batch(redis, batch.id, chunks)
    except BaseException:
        await store.remove(batch.id)
        raise
    return batch
