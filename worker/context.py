"""The typed worker context arq hands to every task (built in `on_startup`)."""

from __future__ import annotations

import asyncio
from typing import TypedDict

import openai
from arq.connections import ArqRedis
from langchain_core.language_models import BaseChatModel

from shared.limiter import Limiters
from shared.metrics import WorkerMetrics
from shared.queue import Leases
from shared.settings import Provider, Settings
from shared.store import BatchStore
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
    heartbeat: asyncio.Task[None]
    reconciler: asyncio.Task[None]
    watcher: asyncio.Task[None]
