"""The typed worker context arq hands to every task (built in `on_startup`)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypedDict

import openai
from arq.connections import ArqRedis
from langchain_core.language_models import BaseChatModel
from redis.exceptions import RedisError

from shared.limiter import Limiters
from shared.metrics import WorkerMetrics
from shared.queue import Leases
from shared.settings import Provider, Settings
from shared.store import BatchStore, RecordOutcome
from worker.watch import BatchWatch


class WorkerContext(TypedDict):
    redis: ArqRedis  # set by arq itself
    settings: Settings
    store: BatchStore
    http: openai.DefaultAsyncHttpxClient
    models: dict[Provider, BaseChatModel]
    worker_id: str
    limiters: Limiters
    leases: Leases
    watch: BatchWatch
    metrics: WorkerMetrics
    writes: Writes
    attempts: Attempts
    heartbeat: asyncio.Task[None]
    reconciler: asyncio.Task[None]
    watcher: asyncio.Task[None]


class Writes:
    """Result writes that finish even if their run is cancelled (SIGTERM): the worker waits
    for them before it closes its Redis pool."""

    def __init__(self) -> None:
        self._pending: set[asyncio.Task[Any]] = set()

    async def run(self, write: Awaitable[RecordOutcome]) -> RecordOutcome:
        task = asyncio.ensure_future(write)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return await asyncio.shield(task)

    async def drain(self) -> None:
        await asyncio.gather(*self._pending, return_exceptions=True)


class Attempts:
    """The runs of chunks on this worker, each on record in Redis while it runs, so that runs
    whose worker died can be counted (and a chunk that keeps killing workers given up).

    A run whose end could not be recorded because Redis was away is recorded later, by the
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
