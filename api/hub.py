"""Live progress as server-sent events, fanned out so that many watchers cost Redis one reader.

Each API process keeps one reader per watched batch: it follows the batch's events stream with
a blocking XREAD, reads the batch once per batch of new events, and hands both to every local
watcher. A watcher that resumes from an older `Last-Event-ID` reads only its own gap itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from redis.exceptions import RedisError
from sse_starlette import ServerSentEvent

from shared.errors import NotFound
from shared.progress import ProgressEvent
from shared.schemas import FINAL_BATCH_STATUSES, Batch
from shared.store import BatchStore

log = logging.getLogger("promptbatch.api")

#: Fastest a reader passes on updates: events that arrive faster are sent together.
MIN_INTERVAL_S = 0.1


@dataclass(frozen=True, slots=True)
class Update:
    events: list[ProgressEvent]
    batch: Batch | None  # None: the batch is gone (or its reader failed: the client reconnects)


#: Events a watcher may have waiting before they are dropped (and re-read from Redis).
MAX_PENDING = 1000


@dataclass(eq=False)  # each mailbox is its own watcher's (hashed by identity)
class _Mailbox:
    """What one watcher has not taken yet: its events (a bounded number) and the newest batch.

    A watcher that falls behind (a slow client) does not grow the API's memory: past
    `MAX_PENDING` its events are dropped and it reads them back from Redis itself.
    """

    events: list[ProgressEvent] = field(default_factory=list)
    batch: Batch | None = None
    dropped_upto: str | None = None  # events up to this id were dropped
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, update: Update) -> None:
        if self.dropped_upto is None and len(self.events) + len(update.events) <= MAX_PENDING:
            self.events += update.events
        elif update.events:
            self.events, self.dropped_upto = [], update.events[-1].id
        self.batch = update.batch
        self.ready.set()

    async def take(self) -> tuple[list[ProgressEvent], Batch | None, str | None]:
        await self.ready.wait()
        taken = (self.events, self.batch, self.dropped_upto)
        self.events, self.dropped_upto = [], None
        self.ready.clear()
        return taken


@dataclass
class _Reader:
    position: str
    watchers: set[_Mailbox] = field(default_factory=set)
    task: asyncio.Task[None] | None = None


class EventHub:
    """The API process's readers of batches' events streams, one per watched batch."""

    def __init__(self, store: BatchStore, block_ms: int) -> None:
        self._store = store
        self._block_ms = block_ms
        self._readers: dict[str, _Reader] = {}

    async def stream(
        self, batch_id: str, last_event_id: str | None, owner: str | None = None
    ) -> AsyncIterator[ServerSentEvent]:
        """The current state first, then the events after `last_event_id` (or from now on)
        until the final state. NotFound is raised before the first event, so the route can
        still answer 404 (also for another owner's batch)."""
        batch = await self._store.get(batch_id, owner)
        newest = await self._store.last_event_id(batch_id)
        # An id from the future (another stream, a made-up one) resumes from now.
        after = newest if last_event_id is None or _newer(last_event_id, newest) else last_event_id
        return self._events(batch, after)

    async def _events(self, batch: Batch, after: str) -> AsyncIterator[ServerSentEvent]:
        yield _batch_event(batch, after)
        if batch.status in FINAL_BATCH_STATUSES:
            updates = self._missed(batch, after)
        else:
            updates = self._follow(batch.id, after)
        async for update in updates:
            last = update.events[-1].id if update.events else after
            after = last
            items = [
                {
                    "index": e.index,
                    "custom_id": e.custom_id,
                    "status": e.status,
                    "finished_at_ms": e.at_ms,
                }
                for e in update.events
                if e.kind == "item"
            ]
            if items:
                yield ServerSentEvent(json.dumps({"data": items}), event="items", id=last)
            if update.batch is None:
                return
            yield _batch_event(update.batch, last)
            if update.batch.status in FINAL_BATCH_STATUSES:
                return

    async def _missed(self, batch: Batch, after: str) -> AsyncIterator[Update]:
        """For a final batch: the events after `after`, which a resuming watcher missed."""
        missed = await self._store.events_between(batch.id, after, "+")
        if missed:
            yield Update(missed, batch)

    async def _follow(self, batch_id: str, after: str) -> AsyncIterator[Update]:
        reader = self._readers.get(batch_id)
        if reader is None:
            reader = self._readers[batch_id] = _Reader(position=after)
            reader.task = asyncio.create_task(
                self._read(batch_id, reader), name=f"events {batch_id}"
            )
        mailbox = _Mailbox()
        joined_at = reader.position  # later updates from the reader start after this
        reader.watchers.add(mailbox)
        try:
            if _newer(joined_at, after):  # this watcher is behind the reader: read the gap
                gap = await self._store.events_between(batch_id, after, joined_at)
                if gap:
                    after = gap[-1].id
                    yield Update(gap, await self._current(batch_id))
            while True:
                events, batch, dropped_upto = await mailbox.take()
                if dropped_upto is not None:  # this watcher fell behind: read what it missed
                    events = await self._store.events_between(batch_id, after, dropped_upto)
                fresh = [e for e in events if _newer(e.id, after)]
                after = fresh[-1].id if fresh else after
                yield Update(fresh, batch)
                if batch is None or batch.status in FINAL_BATCH_STATUSES:
                    return
        finally:
            reader.watchers.discard(mailbox)
            if not reader.watchers and self._readers.get(batch_id) is reader:
                del self._readers[batch_id]
                if reader.task is not None:
                    reader.task.cancel()

    async def _read(self, batch_id: str, reader: _Reader) -> None:
        """Pass the batch's new events, and the batch, to its watchers until it is final."""
        try:
            while True:
                try:
                    events = await self._store.next_events(
                        batch_id, reader.position, self._block_ms
                    )
                    batch = await self._current(batch_id)
                    final = batch is None or batch.status in FINAL_BATCH_STATUSES
                    if final:  # the batch was read after the events: take the last ones too
                        after = events[-1].id if events else reader.position
                        events += await self._store.events_between(batch_id, after, "+")
                except RedisError:  # Redis away: watchers keep their stream open meanwhile
                    await asyncio.sleep(1)
                    continue
                if events:
                    reader.position = events[-1].id
                if events or final:
                    for mailbox in reader.watchers:
                        mailbox.put(Update(events, batch))
                if final:
                    return
                if events:
                    await asyncio.sleep(MIN_INTERVAL_S)  # let fast events gather into one update
        except Exception as exc:  # a bug: end the streams rather than leave them silent
            log.error("events reader of batch %s failed: %s", batch_id, type(exc).__name__)
            for mailbox in reader.watchers:
                mailbox.put(Update([], None))
        finally:
            if self._readers.get(batch_id) is reader:
                del self._readers[batch_id]

    async def _current(self, batch_id: str) -> Batch | None:
        with contextlib.suppress(NotFound):
            return await self._store.get(batch_id)
        return None

    async def close(self) -> None:
        for reader in list(self._readers.values()):
            if reader.task is not None:
                reader.task.cancel()
        self._readers.clear()


#: A Redis stream id: two 64-bit numbers (at most 20 digits each).
_STREAM_ID = re.compile(r"(\d{1,20})-(\d{1,20})")


def valid_event_id(value: str | None) -> str | None:
    """A `Last-Event-ID` this stream can resume from, or None to start from now (anything else,
    however long, is ignored like a missing one)."""
    found = _STREAM_ID.fullmatch(value) if value is not None and len(value) <= 41 else None
    if found is None or max(int(found[1]), int(found[2])) >= 2**64:
        return None
    return value


def _batch_event(batch: Batch, event_id: str) -> ServerSentEvent:
    return ServerSentEvent(batch.model_dump_json(), event="batch", id=event_id)


def _newer(a: str, b: str) -> bool:
    """Whether stream id `a` comes after stream id `b`."""
    return _parts(a) > _parts(b)


def _parts(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)
