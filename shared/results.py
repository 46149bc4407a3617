"""The data model of items: their results, written once each with the batch's counts, and read
back in input order. Layout in `shared/keys.py`; the write is `shared/lua/record.lua`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import orjson

from shared import keys
from shared.batches import BatchSpec, owned_by
from shared.errors import NotFound
from shared.model import BUDGET_EXCEEDED, PAGE, PROVIDER_AUTH, ModelPart
from shared.schemas import ErrorInfo, FinalItemStatus, ItemResult, ResultsPage, Usage


@dataclass(frozen=True, slots=True)
class PendingItem:
    """An item without a result yet: its index, custom id, prompt (or OpenAI messages) and
    the params it sets beyond the batch's."""

    index: int
    custom_id: str
    prompt: str | list[dict[str, Any]]
    params: dict[str, Any] | None = None


#: The error type of items left when their batch's completion window ended (OpenAI's name).
BATCH_EXPIRED = "batch_expired"

RecordOutcome = Literal["gone", "duplicate", "written", "finished"]
_OUTCOMES: dict[int, RecordOutcome] = {-1: "gone", 0: "duplicate", 1: "written", 2: "finished"}


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """What running one item produced: a reply with usage, or an error."""

    status: FinalItemStatus
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


class Results(ModelPart):
    """Items' results in Redis."""

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
        if total is None or not owned_by(found, owner):
            raise NotFound(f"No batch {batch_id}.")
        return int(total)

    async def _items(self, batch_id: str, start: int, stop: int) -> list[ItemResult]:
        if start >= stop:
            return []
        indices = list(range(start, stop))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(keys.custom_ids(batch_id), start, stop - 1)
            pipe.hmget(keys.results(batch_id), indices)
            ids, results = await pipe.execute()
        if len(ids) != len(indices):  # a batch stored before custom ids were kept apart
            raw_inputs = await self.redis.lrange(keys.inputs(batch_id), start, stop - 1)  # type: ignore[misc]
            ids = [orjson.loads(raw)[0] for raw in raw_inputs]
        items = []
        for index, raw_id, raw_result in zip(indices, ids, results, strict=True):
            custom_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            if raw_result is None:
                items.append(ItemResult(index=index, custom_id=custom_id, status="pending"))
            else:
                result = orjson.loads(raw_result)
                items.append(ItemResult(index=index, custom_id=custom_id, **result))
        return items

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
        """Write one item's result once, with its counts and usage (`record.lua`)."""
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
        codes = cast(list[int], await self.run_script("record", spec.id, args))
        return [_OUTCOMES[int(code)] for code in codes]

    async def fail_pending(self, spec: BatchSpec, chunk: int, error: ErrorInfo) -> int:
        """Fail every item of a chunk that has no result yet; returns how many were failed."""
        return await self._close_pending(spec, chunk, ItemOutcome(status="failed", error=error))

    async def cancel_pending(self, spec: BatchSpec, chunk: int) -> int:
        """Cancel every item of a chunk that has no result yet; returns how many. Cancelled
        because the batch's token budget was spent, each says so (`budget_exceeded`); in a
        batch halted because the provider refused its key, each fails with that error."""
        raw = await self.redis.hget(keys.batch(spec.id), "error")  # type: ignore[misc]
        error = ErrorInfo.model_validate_json(raw) if raw else None
        if error is not None and error.type == PROVIDER_AUTH:
            return await self.fail_pending(spec, chunk, error)
        if error is not None and error.type != BUDGET_EXCEEDED:
            error = None
        return await self._close_pending(spec, chunk, ItemOutcome(status="cancelled", error=error))

    async def expire_pending(self, spec: BatchSpec, chunk: int) -> int:
        """End every item of a chunk that has no result yet `expired` (`batch_expired`): the
        batch's completion window ended before it started. Returns how many."""
        error = ErrorInfo(
            type=BATCH_EXPIRED,
            message="The batch's completion window ended before this item started, so it "
            "was not run.",
        )
        return await self._close_pending(spec, chunk, ItemOutcome(status="expired", error=error))

    async def _close_pending(self, spec: BatchSpec, chunk: int, outcome: ItemOutcome) -> int:
        pending = await self.pending_items(spec.id, *spec.chunk_bounds(chunk))
        closed = 0
        for start in range(0, len(pending), PAGE):
            page = pending[start : start + PAGE]
            codes = await self.record_many(spec, [(item, outcome) for item in page])
            closed += sum(code in ("written", "finished") for code in codes)
        return closed
