"""The typed worker context arq hands to every task (built in `on_startup`)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypedDict

import openai
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.batches import BatchSpec
from shared.metrics import WorkerMetrics
from shared.results import ItemOutcome, PendingItem, RecordOutcome
from shared.schemas import Provider
from shared.settings import Settings
from shared.store import BatchStore
from worker.concurrency import Limiters
from worker.pacing import Pacer
from worker.providers import ProviderModels
from worker.scheduler import Leases
from worker.watch import BatchWatch
from worker.webhooks import Sender


@dataclass
class CallRun:
    """What happened while one item's call ran: its wait for rate limits, and the 429s the
    provider answered it with (counted by the HTTP client's hook, which runs in its task)."""

    paced_s: float = 0.0
    rate_limited: int = 0


#: The item call running in the current task, if any.
CURRENT_CALL: ContextVar[CallRun | None] = ContextVar("promptbatch_call", default=None)


class WorkerContext(TypedDict):
    redis: Redis  # set by arq itself (its client is a Redis client)
    settings: Settings
    store: BatchStore
    http: openai.DefaultAioHttpClient
    models: dict[Provider, BaseChatModel]
    embedders: dict[Provider, Embeddings]  # `/v1/embeddings` batches (`worker/embeddings.py`)
    provider_models: ProviderModels  # anthropic, google_genai, ollama (`worker/providers.py`)
    batch_api: openai.AsyncOpenAI | None  # the provider's Batch API (`worker/handoff.py`)
    worker_id: str
    limiters: Limiters
    pacer: Pacer
    leases: Leases
    watch: BatchWatch
    metrics: WorkerMetrics
    writes: Writes
    attempts: Attempts
    heartbeat: asyncio.Task[None]
    renewer: asyncio.Task[None]
    flusher: asyncio.Task[None]
    reconciler: asyncio.Task[None]
    watcher: asyncio.Task[None]
    webhook_sender: Sender
    outbox_reader: asyncio.Task[None]
    deliverer: asyncio.Task[None]


class Writes:
    """Result writes, grouped: the results that finish while a write is on its way to Redis go
    together in the next one, one script call for all of them (a group commit). A result never
    waits for others to join it: with no write on its way, it is written at once.

    Writes finish even if the run that asked for them is cancelled (SIGTERM): the worker waits
    for them before it closes its Redis pool.
    """

    #: Most results in one write (one Redis script call).
    MOST = 500

    def __init__(self, store: BatchStore) -> None:
        self._store = store
        self._queued: dict[str, list[_Queued]] = {}
        self._writers: dict[str, asyncio.Task[None]] = {}

    async def record(
        self, spec: BatchSpec, item: PendingItem, outcome: ItemOutcome
    ) -> RecordOutcome:
        """Write one item's result (see `BatchStore.record`), grouped with others of its batch."""
        written: asyncio.Future[RecordOutcome] = asyncio.get_running_loop().create_future()
        # A run cancelled meanwhile no longer reads its outcome: that is not an error.
        written.add_done_callback(_retrieved)
        self._queued.setdefault(spec.id, []).append((item, outcome, written))
        writer = self._writers.get(spec.id)
        if writer is None or writer.done():  # done here: cancelled before it ever ran
            self._writers[spec.id] = asyncio.create_task(self._write(spec), name="results")
        return await asyncio.shield(written)

    async def _write(self, spec: BatchSpec) -> None:
        queued = self._queued[spec.id]
        group: list[_Queued] = []
        try:
            while queued:
                group = queued[: self.MOST]
                del queued[: self.MOST]
                try:
                    codes = await self._store.record_many(spec, [(i, o) for i, o, _ in group])
                except Exception as exc:  # Redis stayed away: each waiting run sees it
                    for _, _, written in group:
                        written.set_exception(exc)
                    continue
                for (_, _, written), code in zip(group, codes, strict=True):
                    written.set_result(code)
        except Exception as exc:  # a bug: every run still waiting hears of it
            for _, _, written in group + queued:
                if not written.done():
                    written.set_exception(exc)
            raise
        finally:  # nothing awaits between the queue's last check and here
            for _, _, written in group + queued:  # left only if this writer was cancelled
                written.cancel()
            del self._queued[spec.id]
            del self._writers[spec.id]

    async def drain(self) -> None:
        while running := [writer for writer in self._writers.values() if not writer.done()]:
            await asyncio.gather(*running, return_exceptions=True)


_Queued = tuple[PendingItem, ItemOutcome, "asyncio.Future[RecordOutcome]"]


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Attempts:
    """The runs of chunks on this worker, each on record in Redis while it runs, so that runs
    whose worker died can be counted (and a chunk that keeps killing workers given up).

    A run whose end could not be recorded because Redis was away is recorded later, on a
    heartbeat: an outage must not count as a death.
    """

    def __init__(self, store: BatchStore) -> None:
        self._store = store
        self._unrecorded: set[tuple[str, int, str]] = set()

    @contextlib.asynccontextmanager
    async def run(self, batch_id: str, chunk: int) -> AsyncIterator[int]:
        """A run of a chunk; yields which attempt it is (1 + earlier runs that died)."""
        run = secrets.token_hex(4)
        try:
            yield await self._store.begin_attempt(batch_id, chunk, run)
        finally:
            try:
                await self._store.end_attempt(batch_id, chunk, run)
            except RedisError:
                self._unrecorded.add((batch_id, chunk, run))

    async def record_ended(self) -> None:
        """Record the ends that Redis missed (raises RedisError while it is still away)."""
        for ended in list(self._unrecorded):
            await self._store.end_attempt(*ended)
            self._unrecorded.discard(ended)
