"""The Redis data model: batches, their items and results, and the writes that keep counts exact."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from shared import keys
from shared.chat import BatchParams
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.schemas import (
    FINAL_BATCH_STATUSES,
    Batch,
    BatchList,
    BatchPlan,
    ErrorInfo,
    ItemResult,
    Pacing,
    RequestCounts,
    ResultsPage,
    Usage,
)
from shared.settings import Provider

#: Items pushed per RPUSH and read per page: big enough to save round trips, small enough
#: that no single Redis command blocks the server for long.
PAGE = 1000

# Every script takes KEYS = keys.batch_keys(id) + [keys.STATS]; the helpers below name them.
_PRELUDE = f"""
local meta, inputs, results, chunks, attempts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local events, stats = KEYS[7], KEYS[8]
local function now_ms()
  local t = redis.call('TIME')
  return t[1] * 1000 + math.floor(t[2] / 1000)
end
local function event(...)
  redis.call('XADD', events, 'MAXLEN', '~', {keys.EVENTS_MAXLEN}, '*', ...)
end
-- The batch is final: stamp it, count it, and let every one of its keys expire after ttl ms.
local function finish(status, ttl)
  local now = now_ms()
  redis.call('HSET', meta, 'status', status, 'finished_at', now, 'expires_at', now + ttl)
  redis.call('HINCRBY', stats, 'batches:' .. status, 1)
  event('k', 'status', 's', status)
  for i = 1, 7 do redis.call('PEXPIRE', KEYS[i], ttl) end
end
"""

# Write results once each, with their counts and usage; one call takes many results (the
# worker groups those that finish while a write is on its way). Returns one code per result:
# -1 when the batch is gone or already failed as a whole, 0 when the item already had a result
# (a repeated write changes nothing), 1 when written, 2 when written and it was the batch's
# last item (the batch is then final, exactly once).
# ARGV: ttl ms, then per result: index, result JSON, item status, chunk, custom_id, then the
# numbers it adds to the batch's fields and the service's counters named in _SUMS.
#: The kinds of tokens counted, per batch (`<kind>_tokens`) and service-wide (`tokens:<kind>`).
TOKEN_KINDS = ("input", "output", "cached", "reasoning")
_TOKEN_FIELDS = tuple(f"{kind}_tokens" for kind in TOKEN_KINDS)
#: Batch field -> service-wide counter, for each number a result adds to both.
_SUMS = {
    **{f"{kind}_tokens": f"tokens:{kind}" for kind in TOKEN_KINDS},
    "paced_ms": "pacing:wait_ms",
    "rate_limited": "pacing:rate_limited",
}
_STRIDE = 5 + len(_SUMS)
_RECORD = (
    _PRELUDE
    + f"""
local stride = {_STRIDE}
local sum_fields = {{'{"', '".join(_SUMS)}'}}
local sum_stats = {{'{"', '".join(_SUMS.values())}'}}
"""
    + """
local codes = {}
local status = redis.call('HGET', meta, 'status')
if not status or status == 'failed' then
  for i = 2, #ARGV, stride do codes[#codes + 1] = -1 end
  return codes
end
local total = tonumber(redis.call('HGET', meta, 'total'))
local budget = tonumber(redis.call('HGET', meta, 'max_total_tokens'))
for i = 2, #ARGV, stride do
  local index, item_status = ARGV[i], ARGV[i + 2]
  if redis.call('HSETNX', results, index, ARGV[i + 1]) == 0 then
    codes[#codes + 1] = 0
  else
    redis.call('HINCRBY', meta, item_status, 1)
    for t, field in ipairs(sum_fields) do
      local n = ARGV[i + 4 + t]
      if n ~= '0' then
        redis.call('HINCRBY', meta, field, n)
        redis.call('HINCRBY', stats, sum_stats[t], n)
      end
    end
    redis.call('HINCRBY', chunks, ARGV[i + 3], 1)
    redis.call('HINCRBY', stats, 'items:' .. item_status, 1)
    event('k', 'item', 'i', index, 's', item_status, 'c', ARGV[i + 4])
    if redis.call('HINCRBY', meta, 'done', 1) < total then
      codes[#codes + 1] = 1
      if budget and status == 'in_progress' then
        local used = redis.call('HMGET', meta, 'input_tokens', 'output_tokens')
        if (tonumber(used[1]) or 0) + (tonumber(used[2]) or 0) >= budget then
          -- The token budget is spent: no new call starts; the rest end cancelled.
          status = 'cancelling'
          redis.call('HSET', meta, 'status', status, 'cancel_requested_at', now_ms(),
            'error', '{"type": "budget_exceeded", "message": "The batch used its token ' ..
            'budget of ' .. budget .. ' tokens (max_total_tokens), so no more items started."}')
          event('k', 'status', 's', status)
        end
      end
    else
      finish(status == 'cancelling' and 'cancelled' or 'completed', ARGV[1])
      codes[#codes + 1] = 2
    end
  end
end
return codes
"""
)

# queued -> in_progress, once, stamping started_at. Returns 1 if this call started it.
_START = (
    _PRELUDE
    + """
if redis.call('HGET', meta, 'status') ~= 'queued' then return 0 end
redis.call('HSET', meta, 'status', 'in_progress', 'started_at', now_ms())
event('k', 'status', 's', 'in_progress')
return 1
"""
)

# Fail a batch as a whole unless it is already final. Returns 1 if this call failed it.
# ARGV: error JSON, ttl ms.
_FAIL = (
    _PRELUDE
    + """
local status = redis.call('HGET', meta, 'status')
if not status or status == 'completed' or status == 'failed' or status == 'cancelled' then
  return 0
end
redis.call('HSET', meta, 'error', ARGV[1])
finish('failed', ARGV[2])
return 1
"""
)

# Ask a batch to stop: queued or in_progress -> cancelling. Returns 1 if this call asked,
# 0 if it was already cancelling, -1 if it is final, -2 if there is no such batch.
_CANCEL = (
    _PRELUDE
    + """
local status = redis.call('HGET', meta, 'status')
if not status then return -2 end
if status == 'cancelling' then return 0 end
if status ~= 'queued' and status ~= 'in_progress' then return -1 end
redis.call('HSET', meta, 'status', 'cancelling', 'cancel_requested_at', now_ms())
event('k', 'status', 's', 'cancelling')
return 1
"""
)

# Record run ARGV[2] of chunk ARGV[1] as begun and count the chunk's runs not yet ended (one
# field `<chunk>:<run>` each, deleted when the run ends); nothing for a deleted batch.
_ATTEMPT = (
    _PRELUDE
    + """
if redis.call('EXISTS', meta) == 0 then return 0 end
local prefix = ARGV[1] .. ':'
redis.call('HSET', attempts, prefix .. ARGV[2], 1)
local runs = 0
for _, run in ipairs(redis.call('HKEYS', attempts)) do
  if string.sub(run, 1, #prefix) == prefix then runs = runs + 1 end
end
return runs
"""
)

#: The error type of a batch, and of its items not started, once its token budget is spent.
BUDGET_EXCEEDED = "budget_exceeded"

#: How long a final batch is kept unless the store is told otherwise.
DEFAULT_RESULT_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class PendingItem:
    """An item without a result yet: its index, custom id, prompt (or OpenAI messages) and
    the params it sets beyond the batch's."""

    index: int
    custom_id: str
    prompt: str | list[dict[str, Any]]
    params: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Idempotency:
    """An `Idempotency-Key` (its Redis key), the hash of the request it came with, its TTL."""

    key: str
    request_hash: str
    ttl_s: int


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """One entry of a batch's events stream: an item became final, or the batch's status changed."""

    id: str
    kind: Literal["item", "status"]
    status: str
    index: int | None = None
    custom_id: str | None = None

    @classmethod
    def of(cls, entry_id: bytes, fields: Mapping[bytes, bytes]) -> ProgressEvent:
        f = _decode(fields)
        index = int(f["i"]) if "i" in f else None
        return cls(entry_id.decode(), cast(Any, f["k"]), f["s"], index, f.get("c"))


#: Adds the commands that queue a new batch's chunks to the transaction that stores it.
StageJobs = Callable[[Pipeline, str, Iterable[int]], None]

RecordOutcome = Literal["gone", "duplicate", "written", "finished"]
_OUTCOMES: dict[int, RecordOutcome] = {-1: "gone", 0: "duplicate", 1: "written", 2: "finished"}


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """What running one item produced: a reply with usage, or an error."""

    status: Literal["succeeded", "failed", "cancelled"]
    output: str | None = None
    error: ErrorInfo | None = None
    usage: Usage | None = None
    output_json: Any = None
    finish_reason: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    refusal: str | None = None
    #: How running it went (summed into the batch, not stored with the result): time spent
    #: waiting for the provider's rate limits, and 429s the provider answered it with.
    paced_ms: int = 0
    rate_limited: int = 0

    def to_json(self) -> bytes:
        """The stored result: only the fields that are set (a reader fills in the rest)."""
        stored: dict[str, Any] = {"status": self.status}
        for name in ("output", "output_json", "finish_reason", "tool_calls", "refusal"):
            value = getattr(self, name)
            if value is not None:
                stored[name] = value
        if self.error is not None:
            stored["error"] = self.error.model_dump()
        if self.usage is not None:
            stored["usage"] = self.usage.model_dump()
        return orjson.dumps(stored)


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
    max_total_tokens: int | None = None

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

    def __init__(self, redis: Redis, *, result_ttl_s: int = DEFAULT_RESULT_TTL_S) -> None:
        self.redis = redis
        self.result_ttl_ms = result_ttl_s * 1000
        self._record = redis.register_script(_RECORD)
        self._start = redis.register_script(_START)
        self._fail = redis.register_script(_FAIL)
        self._cancel = redis.register_script(_CANCEL)
        self._attempt = redis.register_script(_ATTEMPT)

    # -- the API side -------------------------------------------------------------------------

    async def create(
        self,
        plan: BatchPlan,
        *,
        chunk_size: int,
        owner: str = keys.PUBLIC_OWNER,
        stage: StageJobs | None = None,
        idempotency: Idempotency | None = None,
    ) -> tuple[Batch, bool]:
        """Store a new batch and its items in one transaction; nothing is half-written.

        `stage` adds the commands that queue the batch's chunks to the same transaction, so a
        batch is stored if and only if its work is queued. With `idempotency`, a request seen
        before returns its batch instead (the bool is False), and the same key with another
        request is a Conflict. Returns the batch and whether this call created it.
        """
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    if idempotency is not None:
                        earlier = await self._earlier(pipe, idempotency)
                        if earlier is not None:
                            return earlier, False
                    batch = self._stage_batch(pipe, plan, chunk_size, owner, stage)
                    if idempotency is not None:
                        pipe.set(
                            idempotency.key,
                            f"{batch.id} {idempotency.request_hash}",
                            ex=idempotency.ttl_s,
                        )
                    await pipe.execute()
                    return batch, True
                except WatchError:  # the same key, concurrently: read what the other stored
                    continue

    async def repeat_of(self, idempotency: Idempotency) -> Batch | None:
        """The batch an earlier request with this key made, if it still exists (a plain read:
        `create` checks again inside its transaction). Another request body is a Conflict."""
        stored = await self.redis.get(idempotency.key)
        if stored is None:
            return None
        raw = await self.redis.hgetall(keys.batch(_earlier_batch_id(stored, idempotency)))  # type: ignore[misc]
        return _batch_from_fields(_decode(raw)) if raw else None

    async def _earlier(self, pipe: Pipeline, idempotency: Idempotency) -> Batch | None:
        """The batch an earlier request with this key made, if it still exists; watches the
        key so that a concurrent request with it makes the transaction retry."""
        await pipe.watch(idempotency.key)
        stored = await pipe.get(idempotency.key)
        try:
            batch_id = None if stored is None else _earlier_batch_id(stored, idempotency)
        except Conflict:
            await pipe.reset()  # type: ignore[no-untyped-call]
            raise
        raw = {} if batch_id is None else await pipe.hgetall(keys.batch(batch_id))  # type: ignore[misc]
        if not raw:  # never used, or its batch was deleted or expired: this request makes one
            pipe.multi()  # type: ignore[no-untyped-call]
            return None
        await pipe.reset()  # type: ignore[no-untyped-call]
        return _batch_from_fields(_decode(raw))

    def _stage_batch(
        self,
        pipe: Pipeline,
        plan: BatchPlan,
        chunk_size: int,
        owner: str,
        stage: StageJobs | None,
    ) -> Batch:
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
        if plan.max_total_tokens is not None:
            fields["max_total_tokens"] = plan.max_total_tokens
        encoded = [orjson.dumps(item) for item in plan.items]  # 50,000 items: 90 ms with json
        pipe.hset(keys.batch(batch_id), mapping=fields)
        for start in range(0, len(encoded), PAGE):
            pipe.rpush(keys.inputs(batch_id), *encoded[start : start + PAGE])
        pipe.zadd(keys.batch_index(owner), {batch_id: now_us})
        pipe.zadd(keys.ACTIVE, {batch_id: now_us})
        pipe.hincrby(keys.STATS, "batches:created", 1)
        if stage is not None:
            stage(pipe, batch_id, range(-(-len(plan.items) // chunk_size)))
        return _batch_from_fields({k: str(v) for k, v in fields.items()})

    async def remove(self, batch_id: str) -> None:
        """Delete every key of a batch and drop it from its owner's list."""
        owner = await self.redis.hget(keys.batch(batch_id), "owner")  # type: ignore[misc]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(*keys.batch_keys(batch_id))
            if owner is not None:
                pipe.zrem(keys.batch_index(owner.decode()), batch_id)
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
        while True:  # one more than the page, to know whether more follow
            ids = [i.decode() for i in await self.redis.zrevrange(index, start, start + limit)]
            async with self.redis.pipeline(transaction=False) as pipe:
                for batch_id in ids:
                    pipe.hgetall(keys.batch(batch_id))
                rows = await pipe.execute()
            expired = [batch_id for batch_id, row in zip(ids, rows, strict=True) if not row]
            if not expired:
                break
            await self.redis.zrem(index, *expired)  # past their retention: out of the index too
        data = [_batch_from_fields(_decode(row)) for row in rows[:limit]]
        has_more = len(ids) > limit
        return BatchList(data=data, has_more=has_more, next_after=data[-1].id if has_more else None)

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
            custom_id = orjson.loads(raw_input)[0]
            if raw_result is None:
                items.append(ItemResult(index=index, custom_id=custom_id, status="pending"))
            else:
                result = orjson.loads(raw_result)
                items.append(ItemResult(index=index, custom_id=custom_id, **result))
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
            max_total_tokens=int(f["max_total_tokens"]) if "max_total_tokens" in f else None,
            total=int(f["total"]),
            chunk_size=int(f["chunk_size"]),
        )

    async def mark_started(self, batch_id: str) -> bool:
        return bool(await self._start(keys=_script_keys(batch_id)))

    async def pending_items(self, batch_id: str, start: int, stop: int) -> list[PendingItem]:
        """The items in [start, stop) that have no result yet."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(keys.inputs(batch_id), start, stop - 1)
            pipe.hmget(keys.results(batch_id), list(range(start, stop)))
            inputs, results = await pipe.execute()
        return [
            PendingItem(start + offset, *orjson.loads(raw))
            for offset, (raw, done) in enumerate(zip(inputs, results, strict=True))
            if done is None
        ]

    async def record(
        self, spec: BatchSpec, item: PendingItem, outcome: ItemOutcome
    ) -> RecordOutcome:
        """Write one item's result once, with its counts and usage; see `_RECORD`."""
        return (await self.record_many(spec, [(item, outcome)]))[0]

    async def record_many(
        self, spec: BatchSpec, done: Sequence[tuple[PendingItem, ItemOutcome]]
    ) -> list[RecordOutcome]:
        """Write several items' results in one script call; how each went, in order."""
        args: list[bytes | str | int] = [self.result_ttl_ms]
        for item, outcome in done:
            usage = outcome.usage or Usage()
            args += [
                item.index,
                outcome.to_json(),
                outcome.status,
                item.index // spec.chunk_size,
                item.custom_id,
                usage.input_tokens,
                usage.output_tokens,
                usage.cached_tokens,
                usage.reasoning_tokens,
                outcome.paced_ms,
                outcome.rate_limited,
            ]
        codes = await self._record(keys=_script_keys(spec.id), args=args)
        return [_OUTCOMES[int(code)] for code in codes]

    async def fail_pending(self, spec: BatchSpec, chunk: int, error: ErrorInfo) -> int:
        """Fail every item of a chunk that has no result yet; returns how many were failed."""
        return await self._close_pending(spec, chunk, ItemOutcome(status="failed", error=error))

    async def cancel_pending(self, spec: BatchSpec, chunk: int) -> int:
        """Cancel every item of a chunk that has no result yet; returns how many. Cancelled
        because the batch's token budget was spent, each says so (`budget_exceeded`)."""
        raw = await self.redis.hget(keys.batch(spec.id), "error")  # type: ignore[misc]
        error = ErrorInfo.model_validate_json(raw) if raw else None
        if error is not None and error.type != BUDGET_EXCEEDED:
            error = None
        return await self._close_pending(spec, chunk, ItemOutcome(status="cancelled", error=error))

    async def stopped(self, batch_id: str) -> bool:
        """Whether the batch takes no new calls (cancelling, final, or gone): checked before
        each call of a batch with a token budget, so none starts once it is spent."""
        status = await self.redis.hget(keys.batch(batch_id), "status")  # type: ignore[misc]
        return status is None or status.decode() != "in_progress"

    async def _close_pending(self, spec: BatchSpec, chunk: int, outcome: ItemOutcome) -> int:
        pending = await self.pending_items(spec.id, *spec.chunk_bounds(chunk))
        closed = 0
        for start in range(0, len(pending), PAGE):
            page = pending[start : start + PAGE]
            codes = await self.record_many(spec, [(item, outcome) for item in page])
            closed += sum(code in ("written", "finished") for code in codes)
        return closed

    async def begin_attempt(self, batch_id: str, chunk: int, run: str) -> int:
        """Record run `run` of a chunk as started; returns the chunk's runs that started and
        have not ended (this one included): the others' workers died."""
        return int(await self._attempt(keys=_script_keys(batch_id), args=[chunk, run]))

    async def end_attempt(self, batch_id: str, chunk: int, run: str) -> None:
        """A run that ends (finished, stopped or released) does not count against the chunk.
        Idempotent: safe to repeat when Redis did not answer."""
        await self.redis.hdel(keys.attempts(batch_id), f"{chunk}:{run}")  # type: ignore[misc]

    async def fail(self, batch_id: str, error: ErrorInfo) -> bool:
        """Mark the whole batch failed with a reason, unless it is already final."""
        args: list[str | int] = [error.model_dump_json(), self.result_ttl_ms]
        return bool(await self._fail(keys=_script_keys(batch_id), args=args))

    async def request_cancel(self, batch_id: str) -> bool:
        """Ask a queued or running batch to stop. False if it was already cancelling;
        Conflict if it is final; NotFound if there is no such batch."""
        code = int(await self._cancel(keys=_script_keys(batch_id)))
        if code == -2:
            raise NotFound(f"No batch {batch_id}.")
        if code == -1:
            status = await self.redis.hget(keys.batch(batch_id), "status")  # type: ignore[misc]
            raise Conflict(f"Batch {batch_id} is already {status.decode()}; nothing to cancel.")
        return code == 1

    async def statuses(self, batch_ids: Sequence[str]) -> list[str | None]:
        """Each batch's status, or None for a batch that no longer exists."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for batch_id in batch_ids:
                pipe.hget(keys.batch(batch_id), "status")
            found = await pipe.execute()
        return [raw.decode() if raw is not None else None for raw in found]

    # -- progress events ------------------------------------------------------------------------

    async def last_event_id(self, batch_id: str) -> str:
        """The id of the batch's newest progress event ("0-0" before any)."""
        newest = await self.redis.xrevrange(keys.events(batch_id), count=1)
        return str(newest[0][0].decode()) if newest else "0-0"

    async def events_between(self, batch_id: str, after: str, upto: str) -> list[ProgressEvent]:
        """Progress events with ids in (after, upto]."""
        entries = await self.redis.xrange(keys.events(batch_id), min=f"({after}", max=upto)
        return [ProgressEvent.of(entry_id, fields) for entry_id, fields in entries]

    async def next_events(self, batch_id: str, after: str, block_ms: int) -> list[ProgressEvent]:
        """Progress events after `after`, waiting up to `block_ms` for the first."""
        found = await self.redis.xread({keys.events(batch_id): after}, count=1000, block=block_ms)
        if not found:
            return []
        return [ProgressEvent.of(entry_id, fields) for entry_id, fields in found[0][1]]

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


def _script_keys(batch_id: str) -> list[str]:
    """KEYS of every store script: the batch's own keys, then the service-wide counters."""
    return [*keys.batch_keys(batch_id), keys.STATS]


def _owned_by(found: bytes | None, owner: str | None) -> bool:
    """Whether a batch whose `owner` field is `found` may be read by `owner` (None: anyone)."""
    return owner is None or found == owner.encode()


def _earlier_batch_id(stored: bytes, idempotency: Idempotency) -> str:
    """The batch id an `Idempotency-Key` was stored with; a Conflict if the request differs."""
    batch_id, request_hash = stored.decode().split(" ")
    if request_hash != idempotency.request_hash:
        raise Conflict(
            "This Idempotency-Key was used with a different request body.",
            param="Idempotency-Key",
        )
    return batch_id


def _decode(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _batch_from_fields(f: Mapping[str, str]) -> Batch:
    total = int(f["total"])
    succeeded, failed, cancelled = (
        int(f.get(name, 0)) for name in ("succeeded", "failed", "cancelled")
    )
    tokens = (int(f.get(name, 0)) for name in _TOKEN_FIELDS)
    metadata: Any = json.loads(f["metadata"]) if "metadata" in f else None
    return Batch(
        id=f["id"],
        status=cast(Any, f["status"]),
        model=f["model"],
        provider=cast(Provider, f["provider"]),
        created_at=cast(datetime, _dt(f["created_at"])),
        started_at=_dt(f.get("started_at")),
        finished_at=_dt(f.get("finished_at")),
        expires_at=_dt(f.get("expires_at")),
        request_counts=RequestCounts(
            total=total,
            succeeded=succeeded,
            failed=failed,
            cancelled=cancelled,
            pending=total - succeeded - failed - cancelled,
        ),
        usage=Usage.of(*tokens),
        max_total_tokens=int(f["max_total_tokens"]) if "max_total_tokens" in f else None,
        pacing=Pacing(
            wait_s=int(f.get("paced_ms", 0)) / 1000, provider_429s=int(f.get("rate_limited", 0))
        ),
        metadata=metadata,
        error=ErrorInfo.model_validate_json(f["error"]) if "error" in f else None,
    )
