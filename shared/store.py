"""The Redis data model: batches, their items and results, and the writes that keep counts exact."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import keys
from shared.errors import InvalidRequest, NotFound
from shared.schemas import (
    FINAL_BATCH_STATUSES,
    Batch,
    BatchList,
    BatchParams,
    BatchPlan,
    ErrorInfo,
    ItemResult,
    RequestCounts,
    ResultsPage,
    Usage,
)
from shared.settings import Provider

#: Items pushed per RPUSH and read per page: big enough to save round trips, small enough
#: that no single Redis command blocks the server for long.
PAGE = 1000

# Write one item's result once. Returns -1 when the batch is gone or already failed as a whole,
# 0 when the item already had a result (a repeated write changes nothing), 1 when written,
# 2 when written and it was the batch's last item (the batch is then final, exactly once).
_RECORD = """
local meta, results, chunks = KEYS[1], KEYS[2], KEYS[3]
local status = redis.call('HGET', meta, 'status')
if not status or status == 'failed' then return -1 end
if redis.call('HSETNX', results, ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', meta, ARGV[3], 1)
redis.call('HINCRBY', meta, 'input_tokens', ARGV[4])
redis.call('HINCRBY', meta, 'output_tokens', ARGV[5])
redis.call('HINCRBY', chunks, ARGV[6], 1)
local done = redis.call('HINCRBY', meta, 'done', 1)
if done < tonumber(redis.call('HGET', meta, 'total')) then return 1 end
local t = redis.call('TIME')
local final = 'completed'
if status == 'cancelling' then final = 'cancelled' end
redis.call('HSET', meta, 'status', final, 'finished_at', t[1] * 1000 + math.floor(t[2] / 1000))
return 2
"""

# queued -> in_progress, once, stamping started_at. Returns 1 if this call started it.
_START = """
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'status', 'in_progress',
           'started_at', t[1] * 1000 + math.floor(t[2] / 1000))
return 1
"""

# Fail a batch as a whole unless it is already final. Returns 1 if this call failed it.
_FAIL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'completed' or status == 'failed' or status == 'cancelled' then
  return 0
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[1],
           'finished_at', t[1] * 1000 + math.floor(t[2] / 1000))
return 1
"""

#: Adds the commands that queue a new batch's chunks to the transaction that stores it.
StageJobs = Callable[[Pipeline, str, Iterable[int]], None]

RecordOutcome = Literal["gone", "duplicate", "written", "finished"]
_OUTCOMES: dict[int, RecordOutcome] = {-1: "gone", 0: "duplicate", 1: "written", 2: "finished"}


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """What running one prompt produced: an output with usage, or an error."""

    status: Literal["succeeded", "failed", "cancelled"]
    output: str | None = None
    error: ErrorInfo | None = None
    usage: Usage | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "status": self.status,
                "output": self.output,
                "error": self.error.model_dump() if self.error else None,
                "usage": self.usage.model_dump() if self.usage else None,
            },
            ensure_ascii=False,
        )


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """What a worker needs to run a batch's items."""

    id: str
    status: str
    model: str
    provider: Provider
    system: str | None
    params: BatchParams
    max_concurrency: int
    total: int
    chunk_size: int

    @property
    def chunks(self) -> int:
        """How many chunks (jobs) the batch's items are split into."""
        return -(-self.total // self.chunk_size)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        """The item indices [start, stop) of one chunk."""
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.total)


def new_batch_id() -> str:
    """A random, unguessable batch id."""
    return f"batch_{secrets.token_hex(16)}"


def _dt(ms: str | None) -> datetime | None:
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC) if ms else None


class BatchStore:
    """Reads and writes batches in Redis; the only code that knows their layout."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._record = redis.register_script(_RECORD)
        self._start = redis.register_script(_START)
        self._fail = redis.register_script(_FAIL)

    # -- the API side -------------------------------------------------------------------------

    async def create(
        self,
        plan: BatchPlan,
        *,
        chunk_size: int,
        owner: str = keys.PUBLIC_OWNER,
        stage: StageJobs | None = None,
    ) -> Batch:
        """Store a new batch and its items in one transaction; nothing is half-written.

        `stage` adds the commands that queue the batch's chunks to the same transaction, so a
        batch is stored if and only if its work is queued.
        """
        batch_id = new_batch_id()
        now_us = time.time_ns() // 1000
        fields: dict[str, str | int] = {
            "id": batch_id,
            "owner": owner,
            "status": "queued",
            "model": plan.model,
            "provider": plan.provider,
            "params": plan.params.model_dump_json(exclude_none=True),
            "max_concurrency": plan.max_concurrency,
            "created_at": now_us // 1000,
            "total": len(plan.items),
            "chunk_size": chunk_size,
        }
        if plan.system is not None:
            fields["system"] = plan.system
        if plan.metadata is not None:
            fields["metadata"] = json.dumps(plan.metadata, ensure_ascii=False)
        encoded = [json.dumps(item, ensure_ascii=False) for item in plan.items]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.batch(batch_id), mapping=fields)
            for start in range(0, len(encoded), PAGE):
                pipe.rpush(keys.inputs(batch_id), *encoded[start : start + PAGE])
            pipe.zadd(keys.batch_index(owner), {batch_id: now_us})
            pipe.zadd(keys.ACTIVE, {batch_id: now_us})
            if stage is not None:
                stage(pipe, batch_id, range(-(-len(plan.items) // chunk_size)))
            await pipe.execute()
        return _batch_from_fields({k: str(v) for k, v in fields.items()})

    async def remove(self, batch_id: str, owner: str = keys.PUBLIC_OWNER) -> None:
        """Delete every key of a batch."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(*keys.batch_keys(batch_id))
            pipe.zrem(keys.batch_index(owner), batch_id)
            pipe.zrem(keys.ACTIVE, batch_id)
            await pipe.execute()

    async def get(self, batch_id: str, owner: str | None = None) -> Batch:
        """The batch; NotFound when it is unknown or, with `owner`, belongs to another owner."""
        raw = await self.redis.hgetall(keys.batch(batch_id))  # type: ignore[misc]
        if not raw or not _owned_by(raw.get(b"owner"), owner):
            raise NotFound(f"No batch {batch_id}.")
        return _batch_from_fields(_decode(raw))

    async def list_batches(
        self, owner: str = keys.PUBLIC_OWNER, *, limit: int, after: str | None = None
    ) -> BatchList:
        """An owner's batches, newest first, `limit` after the batch id `after`."""
        index = keys.batch_index(owner)
        start = 0
        if after is not None:
            rank = await self.redis.zrevrank(index, after)
            if rank is None:
                raise InvalidRequest(f"No batch {after} to list after.", param="after")
            start = rank + 1
        ids = await self.redis.zrevrange(index, start, start + limit)
        page_ids = [i.decode() for i in ids[:limit]]
        async with self.redis.pipeline(transaction=False) as pipe:
            for batch_id in page_ids:
                pipe.hgetall(keys.batch(batch_id))
            rows = await pipe.execute()
        data = [_batch_from_fields(_decode(row)) for row in rows if row]
        has_more = len(ids) > limit
        return BatchList(
            data=data, has_more=has_more, next_after=page_ids[-1] if has_more else None
        )

    async def results_page(
        self, batch_id: str, *, after: int | None, limit: int, owner: str | None = None
    ) -> ResultsPage:
        """Items in input order after index `after`; pending items show as pending."""
        total = await self._total(batch_id, owner)
        start = 0 if after is None else after + 1
        stop = min(start + limit, total)
        data = await self._items(batch_id, start, stop)
        has_more = stop < total
        return ResultsPage(data=data, has_more=has_more, next_after=stop - 1 if has_more else None)

    async def result_pages(
        self, batch_id: str, owner: str | None = None
    ) -> AsyncIterator[list[ItemResult]]:
        """Every item in input order, a page at a time. NotFound is raised here, before the
        first page, so a caller can still answer 404 before it starts a streamed response."""
        total = await self._total(batch_id, owner)
        return self._pages(batch_id, total)

    async def _pages(self, batch_id: str, total: int) -> AsyncIterator[list[ItemResult]]:
        for start in range(0, total, PAGE):
            yield await self._items(batch_id, start, min(start + PAGE, total))

    async def _total(self, batch_id: str, owner: str | None = None) -> int:
        total, found = await self.redis.hmget(keys.batch(batch_id), ["total", "owner"])  # type: ignore[misc]
        if total is None or not _owned_by(found, owner):
            raise NotFound(f"No batch {batch_id}.")
        return int(total)

    async def _items(self, batch_id: str, start: int, stop: int) -> list[ItemResult]:
        if start >= stop:
            return []
        indices = list(range(start, stop))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(keys.inputs(batch_id), start, stop - 1)
            pipe.hmget(keys.results(batch_id), indices)
            inputs, results = await pipe.execute()
        items = []
        for index, raw_input, raw_result in zip(indices, inputs, results, strict=True):
            custom_id = json.loads(raw_input)[0]
            if raw_result is None:
                items.append(ItemResult(index=index, custom_id=custom_id, status="pending"))
            else:
                items.append(ItemResult(index=index, custom_id=custom_id, **json.loads(raw_result)))
        return items

    # -- the worker side ----------------------------------------------------------------------

    async def spec(self, batch_id: str) -> BatchSpec | None:
        """What a worker needs to run the batch, or None if the batch is gone."""
        raw = await self.redis.hgetall(keys.batch(batch_id))  # type: ignore[misc]
        if not raw:
            return None
        f = _decode(raw)
        return BatchSpec(
            id=batch_id,
            status=f["status"],
            model=f["model"],
            provider=cast(Provider, f["provider"]),
            system=f.get("system"),
            params=BatchParams.model_validate_json(f["params"]),
            max_concurrency=int(f["max_concurrency"]),
            total=int(f["total"]),
            chunk_size=int(f["chunk_size"]),
        )

    async def mark_started(self, batch_id: str) -> bool:
        return bool(await self._start(keys=[keys.batch(batch_id)]))

    async def pending_items(self, batch_id: str, start: int, stop: int) -> list[tuple[int, str]]:
        """(index, prompt) of the items in [start, stop) that have no result yet."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(keys.inputs(batch_id), start, stop - 1)
            pipe.hmget(keys.results(batch_id), list(range(start, stop)))
            inputs, results = await pipe.execute()
        return [
            (start + offset, json.loads(raw)[1])
            for offset, (raw, done) in enumerate(zip(inputs, results, strict=True))
            if done is None
        ]

    async def record(self, spec: BatchSpec, index: int, outcome: ItemOutcome) -> RecordOutcome:
        """Write one item's result once, with its counts and usage; see `_RECORD`."""
        code = await self._record(*_record_call(spec, index, outcome))
        return _OUTCOMES[int(code)]

    async def fail_pending(self, spec: BatchSpec, chunk: int, error: ErrorInfo) -> int:
        """Fail every item of a chunk that has no result yet; returns how many were failed."""
        pending = await self.pending_items(spec.id, *spec.chunk_bounds(chunk))
        outcome = ItemOutcome(status="failed", error=error)
        async with self.redis.pipeline(transaction=False) as pipe:
            for index, _ in pending:
                await self._record(*_record_call(spec, index, outcome), client=pipe)
            codes = await pipe.execute()
        return sum(1 for code in codes if int(code) > 0)

    async def begin_attempt(self, batch_id: str, chunk: int) -> int:
        """Count a run of a chunk as started; returns the runs that started and never ended."""
        return int(await self.redis.hincrby(keys.attempts(batch_id), str(chunk), 1))  # type: ignore[misc]

    async def end_attempt(self, batch_id: str, chunk: int) -> None:
        """A run that ends (finished, stopped or released) does not count against the chunk."""
        await self.redis.hincrby(keys.attempts(batch_id), str(chunk), -1)  # type: ignore[misc]

    # -- the reconciler -----------------------------------------------------------------------

    async def active_batches(self) -> list[str]:
        """Ids of batches that are not known to be final, oldest first."""
        return [raw.decode() for raw in await self.redis.zrange(keys.ACTIVE, 0, -1)]

    async def unfinished_chunks(self, batch_id: str) -> list[int] | None:
        """Chunks with items not yet final, or None when the batch is gone or final (and is
        then dropped from the active set)."""
        spec = await self.spec(batch_id)
        if spec is None or spec.status in FINAL_BATCH_STATUSES:
            await self.redis.zrem(keys.ACTIVE, batch_id)
            return None
        final = await self.redis.hgetall(keys.chunks(batch_id))  # type: ignore[misc]
        done = {int(chunk): int(count) for chunk, count in final.items()}
        return [
            chunk
            for chunk in range(spec.chunks)
            if done.get(chunk, 0) < spec.chunk_bounds(chunk)[1] - spec.chunk_bounds(chunk)[0]
        ]

    async def fail(self, batch_id: str, error: ErrorInfo) -> bool:
        """Mark the whole batch failed with a reason, unless it is already final."""
        return bool(await self._fail(keys=[keys.batch(batch_id)], args=[error.model_dump_json()]))


def _owned_by(found: bytes | None, owner: str | None) -> bool:
    """Whether a batch whose `owner` field is `found` may be read by `owner` (None: anyone)."""
    return owner is None or found == owner.encode()


def _record_call(
    spec: BatchSpec, index: int, outcome: ItemOutcome
) -> tuple[list[str], list[str | int]]:
    """The keys and arguments of `_RECORD` for one item."""
    usage = outcome.usage or Usage()
    return (
        [keys.batch(spec.id), keys.results(spec.id), keys.chunks(spec.id)],
        [
            index,
            outcome.to_json(),
            outcome.status,
            usage.input_tokens,
            usage.output_tokens,
            index // spec.chunk_size,
        ],
    )


def _decode(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _batch_from_fields(f: Mapping[str, str]) -> Batch:
    total = int(f["total"])
    succeeded, failed, cancelled = (
        int(f.get(name, 0)) for name in ("succeeded", "failed", "cancelled")
    )
    input_tokens, output_tokens = int(f.get("input_tokens", 0)), int(f.get("output_tokens", 0))
    metadata: Any = json.loads(f["metadata"]) if "metadata" in f else None
    return Batch(
        id=f["id"],
        status=cast(Any, f["status"]),
        model=f["model"],
        provider=cast(Provider, f["provider"]),
        created_at=cast(datetime, _dt(f["created_at"])),
        started_at=_dt(f.get("started_at")),
        finished_at=_dt(f.get("finished_at")),
        request_counts=RequestCounts(
            total=total,
            succeeded=succeeded,
            failed=failed,
            cancelled=cancelled,
            pending=total - succeeded - failed - cancelled,
        ),
        usage=Usage.of(input_tokens, output_tokens),
        metadata=metadata,
        error=ErrorInfo.model_validate_json(f["error"]) if "error" in f else None,
    )
