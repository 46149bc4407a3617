"""The seam to arq: connections, the JSON job format, and enqueueing a batch's work.

arq is in maintenance mode; everything the service knows about it stays here and in
`worker/main.py`, so swapping it touches two files.
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

from arq.connections import ArqRedis, RedisSettings
from redis.asyncio import ConnectionPool

from shared import keys
from shared.schemas import Batch, BatchPlan
from shared.settings import Settings
from shared.store import BatchStore

log = logging.getLogger("promptbatch.queue")

#: Name of the task function the worker registers for one chunk of a batch.
RUN_CHUNK = "run_chunk"


def dumps_job(data: dict[str, Any]) -> bytes:
    """arq job payloads are JSON, not arq's default format: whoever writes Redis must not be
    able to run code in a worker."""
    return json.dumps(data, default=str).encode()


#: The arguments each job function takes: ids and counts, nothing else. A payload naming any
#: other function, or carrying other arguments, is refused before a worker runs anything.
JOB_ARGS: dict[str, tuple[type, ...]] = {RUN_CHUNK: (str, int)}

_JOB_FIELDS = frozenset({"t", "f", "a", "k", "et"})
#: arq's record of a finished job is read back through the same function and adds these.
_RESULT_FIELDS = frozenset({"s", "r", "st", "ft", "q", "id"})


def loads_job(raw: bytes) -> dict[str, Any]:
    """Read a job payload, refusing (ValueError) anything but the JSON this service writes.

    arq logs the refusal and drops the job without running it; the worker goes on serving.
    """
    try:
        data = json.loads(raw)
        _check_job(data)
    except ValueError as exc:  # the reason only: never the payload
        log.warning("refused a job payload: %s", exc)
        raise
    return cast(dict[str, Any], data)


def _check_job(data: object) -> None:
    if not isinstance(data, dict):
        raise ValueError("job payload is not a JSON object")
    fields = data.keys()
    if not (_JOB_FIELDS.issubset(fields) and _RESULT_FIELDS.union(_JOB_FIELDS).issuperset(fields)):
        raise ValueError("job payload does not have arq's job fields")
    function = data["f"]
    expected = JOB_ARGS.get(function) if isinstance(function, str) else None
    if expected is None:
        raise ValueError("job payload names no job function of this service")
    args = data["a"]
    if not (
        isinstance(args, list)
        and len(args) == len(expected)
        and all(type(arg) is kind for arg, kind in zip(args, expected, strict=True))
    ):
        raise ValueError(f"job payload's arguments are not those of {function}")
    if data["k"] != {}:
        raise ValueError("job payload has keyword arguments; jobs take none")
    if not (isinstance(data["t"], int | None) and type(data["et"]) is int):
        raise ValueError("job payload's try count or enqueue time is not a number")


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


async def submit(
    store: BatchStore, redis: ArqRedis, plan: BatchPlan, *, owner: str = keys.PUBLIC_OWNER
) -> Batch:
    """Store a batch and queue its chunks; if queueing fails, nothing of it is left behind."""
    batch, chunks = await store.create(plan, owner=owner)
    try:
        await enqueue_batch(redis, batch.id, chunks)
    except BaseException:
        await store.remove(batch.id, owner)
        raise
    return batch
