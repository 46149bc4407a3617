"""The data model of batches: creating one (with its items, or not at all), reading it, and its
status changes. Layout in `shared/keys.py`; scripts in `shared/lua/`."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from shared import keys
from shared.chat import BatchParams
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.model import PAGE, ModelPart, batch_from_fields, decode
from shared.schemas import (
    CHAT,
    Batch,
    BatchList,
    BatchStatus,
    Endpoint,
    ErrorInfo,
    Mode,
    Provider,
)
from shared.staging import Staged, encode_page, push_page, watch_staged

#: An item as stored: `(custom_id, prompt or messages)`, and its own params when it has any.
ItemBody = str | list[dict[str, Any]]
ItemRecord = tuple[str, ItemBody] | tuple[str, ItemBody, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """A validated submission, ready to store (a large one's items already are: `staged`)."""

    items: list[ItemRecord]
    model: str
    system: str | None
    params: BatchParams
    max_concurrency: int
    metadata: dict[str, str] | None
    provider: Provider
    max_total_tokens: int | None = None
    mode: Mode = "direct"
    #: The completion window as shown (`"24h"`) and in seconds; its deadline is set at store.
    completion_window: str | None = None
    completion_window_s: int | None = None
    staged: Staged | None = None
    endpoint: Endpoint = CHAT

    @property
    def count(self) -> int:
        return self.staged.count if self.staged is not None else len(self.items)


@dataclass(frozen=True, slots=True)
class Idempotency:
    """An `Idempotency-Key` (its Redis key), the hash of the request it came with, its TTL."""

    key: str
    request_hash: str
    ttl_s: int


#: Adds the scheduler's state of a new batch to the transaction that stores it.
StageJobs = Callable[[Pipeline, str], None]


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """What a worker needs to run a batch's items."""

    id: str
    status: BatchStatus
    model: str
    provider: Provider
    system: str | None
    params: BatchParams
    max_concurrency: int
    total: int
    chunk_size: int
    max_total_tokens: int | None = None
    #: When the completion window ends (epoch ms): no provider call starts from then on.
    deadline_ms: int | None = None
    window: int = 1  #: how many of its chunks may feed it at once (`shared/scheduler.py`)
    owner: str = keys.PUBLIC_OWNER
    mode: Mode = "direct"
    endpoint: Endpoint = CHAT

    def overdue(self, now_ms: int | None = None) -> bool:
        """Whether the completion window has ended (by this host's clock, unless given)."""
        now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        return self.deadline_ms is not None and now_ms >= self.deadline_ms

    @property
    def chunks(self) -> int:
        """How many chunks (jobs) the batch's items are split into."""
        return -(-self.total // self.chunk_size)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        """The item indices [start, stop) of one chunk."""
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.total)


#: What every batch id looks like: `batch_` and 32 hex digits (random, unguessable).
BATCH_ID = re.compile(r"batch_[0-9a-f]{32}")


def new_batch_id() -> str:
    """A random, unguessable batch id."""
    return f"batch_{secrets.token_hex(16)}"


def is_batch_id(value: str) -> bool:
    """Whether `value` has the form of a batch id (so a lookup is worth a Redis call)."""
    return BATCH_ID.fullmatch(value) is not None


class Batches(ModelPart):
    """Batches in Redis: the only code that knows a batch hash's fields."""

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

        `stage` adds the scheduler's state of the batch to the same transaction. With
        `idempotency`, a request seen before returns its batch instead (the bool is False), and
        the same key with another request is a Conflict. Returns (batch, created).
        """
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    if plan.staged is not None:
                        await watch_staged(pipe, plan.staged)
                    if idempotency is not None:
                        earlier = await self._earlier(pipe, idempotency)
                        if earlier is not None:
                            return earlier, False
                    elif plan.staged is not None:
                        pipe.multi()  # type: ignore[no-untyped-call]
                    batch = self._stage_batch(pipe, plan, chunk_size, owner, stage)
                    if idempotency is not None:
                        value = f"{batch.id} {idempotency.request_hash}"
                        pipe.set(idempotency.key, value, ex=idempotency.ttl_s)
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
        return batch_from_fields(decode(raw)) if raw else None

    async def _earlier(self, pipe: Pipeline, idempotency: Idempotency) -> Batch | None:
        """`repeat_of` in the transaction: the key watched, so a concurrent use retries it."""
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
        return batch_from_fields(decode(raw))

    def _stage_batch(
        self,
        pipe: Pipeline,
        plan: BatchPlan,
        chunk_size: int,
        owner: str,
        stage: StageJobs | None,
    ) -> Batch:
        batch_id = new_batch_id() if plan.staged is None else plan.staged.batch_id
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
            "total": plan.count,
            "chunk_size": chunk_size,
        }
        if plan.mode != "direct":
            fields["mode"] = plan.mode
        if plan.endpoint != CHAT:
            fields["endpoint"] = plan.endpoint
        if plan.system is not None:
            fields["system"] = plan.system
        if plan.metadata is not None:
            fields["metadata"] = json.dumps(plan.metadata, ensure_ascii=False)
        if plan.max_total_tokens is not None:
            fields["max_total_tokens"] = plan.max_total_tokens
        if plan.completion_window is not None and plan.completion_window_s is not None:
            fields["completion_window"] = plan.completion_window
            fields["deadline_ms"] = now_us // 1000 + plan.completion_window_s * 1000
        pipe.hset(keys.batch(batch_id), mapping=fields)
        if plan.staged is not None:  # written already: kept from now on
            pipe.persist(keys.inputs(batch_id))
            pipe.persist(keys.custom_ids(batch_id))
        for start in range(0, len(plan.items), PAGE):
            push_page(pipe, batch_id, encode_page(plan.items[start : start + PAGE]))
        pipe.zadd(keys.batch_index(owner), {batch_id: now_us})
        pipe.zadd(keys.ACTIVE, {batch_id: now_us})
        pipe.hincrby(keys.STATS, "batches:created", 1)
        if stage is not None:
            stage(pipe, batch_id)
        return batch_from_fields({k: str(v) for k, v in fields.items()})

    async def remove(self, batch_id: str) -> None:
        """Delete every key of a batch and drop it from its owner's list."""
        owner = await self.redis.hget(keys.batch(batch_id), "owner")  # type: ignore[misc]
        index = None if owner is None else keys.batch_index(owner.decode())
        score = None if index is None else await self.redis.zscore(index, batch_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(*keys.batch_keys(batch_id))
            if owner is not None:
                _depart(pipe, owner.decode(), {batch_id: score} if score is not None else {})
            pipe.zrem(keys.ACTIVE, batch_id)
            await pipe.execute()

    async def get(self, batch_id: str, owner: str | None = None) -> Batch:
        """The batch; NotFound when it is unknown or, with `owner`, belongs to another owner."""
        raw = await self.redis.hgetall(keys.batch(batch_id))  # type: ignore[misc]
        if not raw or not owned_by(raw.get(b"owner"), owner):
            raise NotFound(f"No batch {batch_id}.")
        return batch_from_fields(decode(raw))

    async def list_batches(
        self, owner: str = keys.PUBLIC_OWNER, *, limit: int, after: str | None = None
    ) -> BatchList:
        """An owner's batches, newest first, `limit` of those older than `after` (a batch
        that may have been deleted or expired since)."""
        index = keys.batch_index(owner)
        older_than = "+inf"
        if after is not None:
            score = await self.redis.zscore(index, after)
            if score is None:
                score = await self.redis.zscore(keys.departed(owner), after)
            if score is None:
                raise InvalidRequest(f"No batch {after} to list after.", param="after")
            older_than = f"({score:.0f}"
        while True:  # one more than the page, to know whether more follow
            found = await self.redis.zrevrangebyscore(
                index, older_than, "-inf", start=0, num=limit + 1, withscores=True
            )
            ids = [raw.decode() for raw, _ in found]
            async with self.redis.pipeline(transaction=False) as pipe:
                for batch_id in ids:
                    pipe.hgetall(keys.batch(batch_id))
                rows = await pipe.execute()
            expired = {
                batch_id: score
                for (batch_id, (_, score)), row in zip(
                    zip(ids, found, strict=True), rows, strict=True
                )
                if not row
            }
            if not expired:
                break
            async with self.redis.pipeline(transaction=True) as pipe:
                _depart(pipe, owner, expired)  # past their retention: out of the index too
                await pipe.execute()
        data = [batch_from_fields(decode(row)) for row in rows[:limit]]
        has_more = len(ids) > limit
        return BatchList(data=data, has_more=has_more, next_after=data[-1].id if has_more else None)

    # -- the worker side ---------------------------------------------------------------------

    async def spec(self, batch_id: str) -> BatchSpec | None:
        """What a worker needs to run the batch, or None if the batch is gone."""
        raw = await self.redis.hgetall(keys.batch(batch_id))  # type: ignore[misc]
        if not raw:
            return None
        f = decode(raw)
        return BatchSpec(
            id=batch_id,
            status=cast(BatchStatus, f["status"]),
            model=f["model"],
            provider=cast(Provider, f["provider"]),
            system=f.get("system"),
            params=BatchParams.model_validate_json(f["params"]),
            max_concurrency=int(f["max_concurrency"]),
            max_total_tokens=int(f["max_total_tokens"]) if "max_total_tokens" in f else None,
            deadline_ms=int(f["deadline_ms"]) if "deadline_ms" in f else None,
            total=int(f["total"]),
            chunk_size=int(f["chunk_size"]),
            window=int(f.get("window", 1)),
            owner=f.get("owner", keys.PUBLIC_OWNER),
            mode=cast(Mode, f.get("mode", "direct")),
            endpoint=cast(Endpoint, f.get("endpoint", CHAT)),
        )

    async def mark_started(self, batch_id: str) -> bool:
        """queued -> in_progress; True if this call started the batch."""
        return bool(await self.run_script("start", batch_id))

    async def fail(self, batch_id: str, error: ErrorInfo) -> bool:
        """Mark the whole batch failed with a reason, unless it is already final."""
        args: list[str | int] = [error.model_dump_json(), self.result_ttl_ms]
        return bool(await self.run_script("fail", batch_id, args))

    async def request_cancel(self, batch_id: str) -> bool:
        """Ask a batch to stop: False if asked already; Conflict if final; NotFound if gone."""
        code = cast(int, await self.run_script("cancel", batch_id))
        if code == -2:
            raise NotFound(f"No batch {batch_id}.")
        if code == -1:
            status = await self.redis.hget(keys.batch(batch_id), "status")  # type: ignore[misc]
            raise Conflict(f"Batch {batch_id} is already {status.decode()}; nothing to cancel.")
        return code == 1

    async def halt(self, batch_id: str, error: ErrorInfo) -> bool:
        """Stop a batch as a cancel does, to end it failed with `error` (its items left too)."""
        return await self.run_script("cancel", batch_id, [error.model_dump_json()]) == 1

    async def statuses(self, batch_ids: Sequence[str]) -> list[str | None]:
        """Each batch's status, or None for a batch that no longer exists."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for batch_id in batch_ids:
                pipe.hget(keys.batch(batch_id), "status")
            found = await pipe.execute()
        return [raw.decode() if raw is not None else None for raw in found]

    async def stopped(self, batch_id: str) -> bool:
        """Whether the batch takes no new calls (cancelling, final, or gone): checked before
        each call of a batch with a token budget, so none starts once it is spent."""
        status = await self.redis.hget(keys.batch(batch_id), "status")  # type: ignore[misc]
        return bool(status != b"in_progress")


def _depart(pipe: Pipeline, owner: str, scores: Mapping[str, float]) -> None:
    """Take batches out of their owner's index, remembering where they were."""
    if not scores:
        return
    departed = keys.departed(owner)
    pipe.zrem(keys.batch_index(owner), *scores)
    pipe.zadd(departed, dict(scores))
    pipe.zremrangebyrank(departed, 0, -keys.DEPARTED_MAX - 1)
    pipe.pexpire(departed, keys.DEPARTED_TTL_MS)


def owned_by(found: bytes | None, owner: str | None) -> bool:
    """Whether a batch whose `owner` field is `found` may be read by `owner` (None: anyone)."""
    return owner is None or found == owner.encode()


def _earlier_batch_id(stored: bytes, idempotency: Idempotency) -> str:
    """The batch id an `Idempotency-Key` was stored with; a Conflict if the request differs."""
    batch_id, request_hash = stored.decode().split(" ")
    if request_hash != idempotency.request_hash:
        reused = "This Idempotency-Key was used with a different request body."
        raise Conflict(reused, param="Idempotency-Key")
    return batch_id
