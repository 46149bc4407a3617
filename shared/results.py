"""The data model of items: their results, written once each with the batch's counts, and read
back in input order. Layout in `shared/keys.py`; the write is `shared/lua/record.lua`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import orjson

from shared import keys
from shared.batches import BatchSpec, owned_by
from shared.errors import NotFound
from shared.model import BUDGET_EXCEEDED, PAGE, PROVIDER_AUTH, ModelPart
from shared.schemas import (
    ErrorInfo,
    FinalItemStatus,
    ItemResult,
    ItemStatus,
    ResultsPage,
    Usage,
)


@dataclass(frozen=True, slots=True)
class PendingItem:
    """An item without a result yet: its index, custom id, prompt (or OpenAI messages) and
    the params it sets beyond the batch's."""

    index: int
    custom_id: str
    prompt: str | list[dict[str, Any]]
    params: dict[str, Any] | None = None


#: An outcome's fields stored with its result when set.
_STORED = ("output", "output_json", "finish_reason", "tool_calls", "refusal", "embedding")

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
    embedding: list[float] | None = None
    #: How running it went (summed into the batch, not stored with the result): time spent
    #: waiting for the provider's rate limits, and 429s the provider answered it with.
    paced_ms: int = 0
    rate_limited: int = 0

    def to_json(self) -> bytes:
        """The stored result: only the fields that are set (a reader fills in the rest)."""
        stored: dict[str, Any] = {"status": self.status}
        for name in _STORED:
            value = getattr(self, name)
            if value is not None:
                stored[name] = value
        if self.error is not None:
            stored["error"] = self.error.model_dump()
        if self.usage is not None:
            stored["usage"] = self.usage.model_dump()
        return orjson.dumps(stored)


#: Most items one filtered results page looks through (`ItemMatch`).
SCAN_MOST = 5 * PAGE


@dataclass(frozen=True, slots=True)
class ItemMatch:
    """Which items a results page shows: those of one status, and/or those whose custom id
    holds `custom_id` (ignoring case)."""

    status: ItemStatus | None = None
    custom_id: str | None = None

    def custom_id_matches(self, custom_id: str) -> bool:
        return self.custom_id is None or self.custom_id.casefold() in custom_id.casefold()


def _status_of(raw_result: bytes | None) -> ItemStatus:
    """A stored result's status, read from its leading field (`ItemOutcome.to_json` writes
    it first) without parsing the output after it."""
    if raw_result is None:
        return "pending"
    head = raw_result[:_STATUS_HEAD]
    if head.startswith(b'{"status":"'):
        status = head[11:].split(b'"', 1)[0].decode()
        if status in _FINAL:
            return cast(ItemStatus, status)
    return cast(ItemStatus, orjson.loads(raw_result)["status"])


_STATUS_HEAD = 32
_FINAL = frozenset(get_args(FinalItemStatus))


def _item(index: int, custom_id: str, raw_result: bytes | None) -> ItemResult:
    if raw_result is None:
        return ItemResult(index=index, custom_id=custom_id, status="pending")
    return ItemResult(index=index, custom_id=custom_id, **orjson.loads(raw_result))


class Results(ModelPart):
    """Items' results in Redis."""

    async def results_page(
        self,
        batch_id: str,
        *,
        after: int | None,
        limit: int,
        owner: str | None = None,
        match: ItemMatch | None = None,
    ) -> ResultsPage:
        """Items in input order after index `after`; pending items show as pending. With
        `match`, only the items it matches, looked for among at most `SCAN_MOST` items: a
        page may then hold fewer than `limit` items (even none) and still have more after."""
        total = await self._total(batch_id, owner)
        start = 0 if after is None else after + 1
        if match is None:
            stop = min(start + limit, total)
            data = await self._items(batch_id, start, stop)
        else:
            data, stop = await self._matching(batch_id, start, total, limit, match)
        has_more = stop < total
        return ResultsPage(data=data, has_more=has_more, next_after=stop - 1 if has_more else None)

    async def _matching(
        self, batch_id: str, start: int, total: int, limit: int, match: ItemMatch
    ) -> tuple[list[ItemResult], int]:
        """The items from `start` that `match` matches, up to `limit` of them; and the index
        the look stopped before. Custom ids are read first, so that a search by custom id
        reads only the results it shows; a status is told from the result's leading field."""
        found: list[ItemResult] = []
        end = min(start + SCAN_MOST, total)
        at = start
        while at < end and len(found) < limit:
            stop = min(at + PAGE, end)
            ids = await self.redis.lrange(keys.custom_ids(batch_id), at, stop - 1)  # type: ignore[misc]
            if len(ids) != stop - at:  # a batch stored before custom ids were kept apart
                ids = [
                    str(item.custom_id).encode() for item in await self._items(batch_id, at, stop)
                ]
            indices = [at + n for n, raw in enumerate(ids) if match.custom_id_matches(raw.decode())]
            results = await self.redis.hmget(keys.results(batch_id), indices) if indices else []  # type: ignore[misc]
            for index, raw_result in zip(indices, results, strict=True):
                if match.status is not None and _status_of(raw_result) != match.status:
                    continue
                found.append(_item(index, ids[index - at].decode(), raw_result))
                if len(found) == limit:
                    return found, index + 1
            at = stop
        return found, at

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
        return [
            _item(index, raw_id.decode() if isinstance(raw_id, bytes) else raw_id, raw_result)
            for index, raw_id, raw_result in zip(indices, ids, results, strict=True)
        ]

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
