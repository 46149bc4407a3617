"""The seam to arq, shared side: the job format, arq's keys, and queueing chunks by hand.

arq is in maintenance mode. Everything the service knows of it lives here and in
`worker/main.py` (the worker's settings): nothing else imports arq or knows how it lays out its
keys, so swapping it touches those two files. Our own keys (the queue's name, job ids) are in
`shared/keys.py`; arq's per-job keys are derived here from arq's constants.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, cast

from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import keys, lua

log = logging.getLogger("promptbatch.jobs")

#: Name of the task function the worker registers for one chunk of a batch.
RUN_CHUNK = "run_chunk"

#: How long a queued job's record lives: far longer than any queue wait; if it lapses anyway,
#: the reconciler queues the chunk again.
JOB_EXPIRES_MS = 7 * 24 * 3600 * 1000

#: The arguments each job function takes: ids and counts, nothing else. A payload naming any
#: other function, or carrying other arguments, is refused before a worker runs anything.
JOB_ARGS: dict[str, tuple[type, ...]] = {RUN_CHUNK: (str, int)}

_JOB_FIELDS = frozenset({"t", "f", "a", "k", "et"})
#: arq's record of a finished job is read back through the same function and adds these.
_RESULT_FIELDS = frozenset({"s", "r", "st", "ft", "q", "id"})

_RENEW_CLAIMS = lua.load("shared", "renew_claims")


def arq_job(job_id: str) -> str:
    """arq's record of a queued job (its JSON payload); we write it with the queue entry."""
    return f"{job_key_prefix}{job_id}"


def arq_retry(job_id: str) -> str:
    """arq's count of a job's tries (kept a day); deleted with a deleted batch's jobs."""
    return f"{retry_key_prefix}{job_id}"


def arq_in_progress(job_id: str) -> str:
    """arq's claim on a running job. arq sets it for job_timeout + 10 s; the running worker
    shortens it to its lease and renews it, so it lapses soon after the worker dies."""
    return f"{in_progress_key_prefix}{job_id}"


def dumps_job(data: dict[str, Any]) -> bytes:
    """arq job payloads are JSON, not arq's default format: whoever writes Redis must not be
    able to run code in a worker."""
    return json.dumps(data, default=str).encode()


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


def stage_chunks(pipe: Pipeline, batch_id: str, chunks: Iterable[int]) -> None:
    """Queue chunk jobs as part of a transaction: arq's job record plus its queue entry, with
    deterministic ids, so a batch and its queued work are written together or not at all."""
    now_ms = time.time_ns() // 1_000_000
    for chunk in chunks:
        job_id = keys.job_id(batch_id, chunk)
        payload = serialize_job(
            RUN_CHUNK, (batch_id, chunk), {}, None, now_ms, serializer=dumps_job
        )
        pipe.psetex(arq_job(job_id), JOB_EXPIRES_MS, payload)
        # One millisecond apart, so a batch's chunks start in order.
        pipe.zadd(keys.QUEUE, {job_id: now_ms + chunk}, nx=True)


async def requeue(redis: Redis, batch_id: str, chunks: Iterable[int]) -> None:
    """Queue chunks again whose jobs were lost (a job record expired, Redis lost a write)."""
    async with redis.pipeline(transaction=True) as pipe:
        stage_chunks(pipe, batch_id, chunks)
        await pipe.execute()


async def queued(redis: Redis) -> int:
    """How many jobs wait on the queue (queued, deferred, or claimed and running)."""
    return int(await redis.zcard(keys.QUEUE))


async def live_jobs(redis: Redis, job_ids: Sequence[str], lease_s: float) -> list[bool]:
    """Whether each job is queued or running. A running claim longer than the lease (arq's own,
    set before the worker could shorten it, and the worker then died) is cut to the lease."""
    lease_ms = int(lease_s * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.zscore(keys.QUEUE, job_id)
            pipe.pttl(arq_in_progress(job_id))
        replies = await pipe.execute()
    found, ttls = replies[0::2], replies[1::2]
    overlong = [job_id for job_id, ttl in zip(job_ids, ttls, strict=True) if ttl > lease_ms]
    if overlong:
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in overlong:
                pipe.pexpire(arq_in_progress(job_id), lease_ms)
            await pipe.execute()
    return [score is not None or ttl != -2 for score, ttl in zip(found, ttls, strict=True)]


async def claimed(redis: Redis, job_ids: Sequence[str]) -> list[bool]:
    """Whether a worker has started each job (and holds its claim)."""
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.exists(arq_in_progress(job_id))
        return [bool(found) for found in await pipe.execute()]


async def drop_jobs(redis: Redis, job_ids: Sequence[str]) -> None:
    """Take jobs off the queue with arq's records of them."""
    if not job_ids:
        return
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(keys.QUEUE, *job_ids)
        for job_id in job_ids:
            pipe.delete(arq_job(job_id), arq_retry(job_id), arq_in_progress(job_id))
        await pipe.execute()


class Claims:
    """A worker's claims on the jobs it runs, in arq's claim keys: its name and a short lease
    (arq itself only checks that a claim exists)."""

    def __init__(self, redis: Redis, worker: str, lease_ms: int) -> None:
        self._redis = redis
        self._renew = redis.register_script(_RENEW_CLAIMS)
        self.worker = worker
        self.lease_ms = lease_ms

    async def take(self, job_id: str) -> None:
        """Put this worker's name and lease on the claim of a job it has just started."""
        await self._redis.set(arq_in_progress(job_id), self.worker, px=self.lease_ms)

    async def queued(self, job_id: str) -> bool:
        """Whether the job is still on the queue: to run, or run by whoever holds its claim."""
        return await self._redis.zscore(keys.QUEUE, job_id) is not None

    async def renew(self, job_ids: Sequence[str]) -> list[bool]:
        """Renew the claims (`renew_claims.lua`); False for each job this worker has lost."""
        renewed = await self._renew(
            keys=[keys.QUEUE, *(arq_in_progress(job_id) for job_id in job_ids)],
            args=[self.worker, self.lease_ms, *job_ids],
        )
        return [bool(ok) for ok in renewed]
