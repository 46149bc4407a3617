"""The typed worker context arq hands to every task (built in `on_startup`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypedDict

import openai
from arq.connections import ArqRedis
from langchain_core.language_models import BaseChatModel

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
