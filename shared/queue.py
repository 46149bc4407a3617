"""The seam to arq: connections, the JSON job format, queueing a batch's chunks, and leases.

arq is in maintenance mode; everything the service knows about it stays here and in
`worker/main.py`, so swapping it touches two files.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, cast

from arq.connections import ArqRedis, RedisSettings
from arq.jobs import serialize_job
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import keys
from shared.errors import Conflict, NotFound
from shared.schemas import FINAL_BATCH_STATUSES, Batch, BatchPlan
from shared.settings import Settings
from shared.store import BatchStore, Idempotency

log = logging.getLogger("promptbatch.queue")

#: Name of the task function the worker registers for one chunk of a batch.
RUN_CHUNK = "run_chunk"

#: How long a queued job's record lives: far longer than any queue wait; if it lapses anyway,
#: the reconciler queues the chunk again.
JOB_EXPIRES_MS = 7 * 24 * 3600 * 1000

#: Longest pause between a worker's retries of a Redis command while Redis is away.
REDIS_BACKOFF_CAP_S = 2.0


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
    """arq's connection settings for a worker: REDIS_URL, plus retries with backoff so that the
    worker rides out a Redis restart (about `worker_redis_retry_s`) instead of dying."""
    rs = RedisSettings.from_dsn(settings.require_redis_url())
    rs.conn_timeout = max(1, round(settings.redis_timeout_s))
    rs.conn_retries = 0  # the retry policy below already covers the first connection
    backoff = ExponentialWithJitterBackoff(cap=REDIS_BACKOFF_CAP_S, base=0.05)
    rs.retry = Retry(
        backoff, retries=math.ceil(settings.worker_redis_retry_s / REDIS_BACKOFF_CAP_S)
    )
    # OSError: a refused or timed-out connect (redis-py retries those inside `connect`);
    # ConnectionError covers a dropped connection and the LOADING reply after a restart.
    rs.retry_on_error = [OSError, RedisConnectionError, RedisTimeoutError]
    return rs


def connect(settings: Settings) -> ArqRedis:
    """The API's client: connects lazily, never blocks at start, and fails fast (a 503) rather
    than retrying while Redis is away."""
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


def stage_chunks(pipe: Pipeline, batch_id: str, chunks: Iterable[int]) -> None:
    """Queue chunk jobs as part of a transaction: arq's job record plus its queue entry, with
    deterministic ids, so a batch and its queued work are written together or not at all."""
    now_ms = time.time_ns() // 1_000_000
    for chunk in chunks:
        job_id = keys.job_id(batch_id, chunk)
        payload = serialize_job(
            RUN_CHUNK, (batch_id, chunk), {}, None, now_ms, serializer=dumps_job
        )
        pipe.psetex(keys.arq_job(job_id), JOB_EXPIRES_MS, payload)
        # One millisecond apart, so a batch's chunks start in order.
        pipe.zadd(keys.QUEUE, {job_id: now_ms + chunk}, nx=True)


def idempotency_for(
    owner: str, idempotency_key: str | None, request_hash: str, settings: Settings
) -> Idempotency | None:
    """Where an owner's `Idempotency-Key` is remembered, with the request it came with."""
    if idempotency_key is None:
        return None
    key_hash = hashlib.sha256(idempotency_key.encode()).hexdigest()
    return Idempotency(keys.idempotency(owner, key_hash), request_hash, settings.idempotency_ttl_s)


async def submit(
    store: BatchStore,
    plan: BatchPlan,
    settings: Settings,
    *,
    idempotency: Idempotency | None = None,
    owner: str = keys.PUBLIC_OWNER,
) -> tuple[Batch, bool]:
    """Store a batch and queue its chunks in one transaction. With an `Idempotency-Key`, a
    repeat of an earlier request returns that request's batch; returns (batch, created)."""
    return await store.create(
        plan,
        chunk_size=settings.chunk_size,
        owner=owner,
        stage=stage_chunks,
        idempotency=idempotency,
    )


async def requeue(redis: Redis, batch_id: str, chunks: Iterable[int]) -> None:
    """Queue chunks again whose jobs were lost (a job record expired, Redis lost a write)."""
    async with redis.pipeline(transaction=True) as pipe:
        stage_chunks(pipe, batch_id, chunks)
        await pipe.execute()


async def live_jobs(redis: Redis, job_ids: Sequence[str], lease_s: float) -> list[bool]:
    """Whether each job is queued or running. A running claim longer than the lease (arq's own,
    set before the worker could shorten it, and the worker then died) is cut to the lease."""
    lease_ms = int(lease_s * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.zscore(keys.QUEUE, job_id)
            pipe.pttl(keys.arq_in_progress(job_id))
        replies = await pipe.execute()
    queued, ttls = replies[0::2], replies[1::2]
    overlong = [job_id for job_id, ttl in zip(job_ids, ttls, strict=True) if ttl > lease_ms]
    if overlong:
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in overlong:
                pipe.pexpire(keys.arq_in_progress(job_id), lease_ms)
            await pipe.execute()
    return [score is not None or ttl != -2 for score, ttl in zip(queued, ttls, strict=True)]


# Renew this worker's claim on a running job: its own claim is extended, and a lapsed one taken
# again while the job is still queued. A claim that names another worker, or a lapsed claim on a
# job that left the queue (its batch was deleted), is not touched: returns 0, this run lost it.
_RENEW = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if owner or not redis.call('ZSCORE', KEYS[2], ARGV[3]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class Leases:
    """A worker's claims on the jobs it runs: short, renewed while it lives, lapsing when it dies.

    arq claims a started job for job_timeout + 10 s (a day, here), so a killed worker's chunk
    would wait that long. The worker instead writes its id into arq's claim with a short lease
    at once and renews it every heartbeat; arq only checks that the claim exists.
    """

    def __init__(self, redis: Redis, owner: str, lease_s: float) -> None:
        self._redis = redis
        self._renew = redis.register_script(_RENEW)
        self.owner = owner
        self.lease_ms = int(lease_s * 1000)
        self._held: dict[str, asyncio.Event] = {}
        # A renewal may take a lapsed claim again, so a run lets go of its claim only between
        # renewals: once it has, arq deletes the claim and no renewal brings it back.
        self._renewing = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def hold(self, job_id: str) -> AsyncIterator[asyncio.Event]:
        """Claim a job this worker has just started and keep it claimed until the block ends.
        The event is set if another worker has taken the claim (this run must then stop)."""
        await self._redis.set(keys.arq_in_progress(job_id), self.owner, px=self.lease_ms)
        # Renewed only from here: a renewal that reached Redis before this claim did would find
        # arq's claim under another name and stop the run as lost.
        lost = self._held[job_id] = asyncio.Event()
        try:
            yield lost
        finally:
            async with self._renewing:
                del self._held[job_id]

    async def renew(self) -> list[str]:
        """Renew every claim this worker holds; returns the jobs now claimed by another."""
        async with self._renewing:
            job_ids = list(self._held)
            if not job_ids:
                return []
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    await self._renew(
                        keys=[keys.arq_in_progress(job_id), keys.QUEUE],
                        args=[self.owner, self.lease_ms, job_id],
                        client=pipe,
                    )
                renewed = await pipe.execute()
            lost = [job_id for job_id, ok in zip(job_ids, renewed, strict=True) if not ok]
            for job_id in lost:
                self._held[job_id].set()
            return lost


async def cancel(store: BatchStore, redis: Redis, batch_id: str, owner: str | None = None) -> Batch:
    """Stop a batch: no new provider call starts for it. Chunks no worker has claimed leave the
    queue and their items are cancelled here; workers running the others notice within
    `PROMPTBATCH_WORKER_WATCH_S`, let calls in flight finish, and cancel the rest. Another
    owner's batch is NotFound."""
    await store.get(batch_id, owner)
    await store.request_cancel(batch_id)
    spec = await store.spec(batch_id)
    if spec is not None:
        job_ids = [keys.job_id(batch_id, chunk) for chunk in range(spec.chunks)]
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(keys.arq_in_progress(job_id))
            claimed = await pipe.execute()
        idle = [chunk for chunk, running in enumerate(claimed) if not running]
        await _drop_jobs(redis, [job_ids[chunk] for chunk in idle])
        for chunk in idle:
            await store.cancel_pending(spec, chunk)
    return await store.get(batch_id)


async def delete(store: BatchStore, redis: Redis, batch_id: str, owner: str | None = None) -> None:
    """Delete a batch, its results and its queued work. A running batch is cancelled first;
    its workers notice the batch is gone and stop, and their writes find nothing to write to.
    Another owner's batch is NotFound."""
    await store.get(batch_id, owner)
    spec = await store.spec(batch_id)
    if spec is None:
        raise NotFound(f"No batch {batch_id}.")
    if spec.status not in FINAL_BATCH_STATUSES:
        with contextlib.suppress(Conflict, NotFound):  # it may have finished meanwhile
            await store.request_cancel(batch_id)
    await store.remove(batch_id)
    await _drop_jobs(redis, [keys.job_id(batch_id, chunk) for chunk in range(spec.chunks)])


async def _drop_jobs(redis: Redis, job_ids: Sequence[str]) -> None:
    """Take jobs off the queue with arq's records of them."""
    if not job_ids:
        return
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(keys.QUEUE, *job_ids)
        for job_id in job_ids:
            pipe.delete(keys.arq_job(job_id), keys.arq_retry(job_id), keys.arq_in_progress(job_id))
        await pipe.execute()
