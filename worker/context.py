"""The typed worker context arq hands to every task (built in `on_startup`)."""

from __future__ import annotations

import asyncio
from typing import TypedDict

import openai
from arq.connections import ArqRedis
from langchain_core.language_models import BaseChatModel

from shared.limiter import Limiters
from shared.queue import Leases
from shared.settings import Provider, Settings
from shared.store import BatchStore


class WorkerContext(TypedDict):
    redis: ArqRedis  # set by arq itself
    settings: Settings
    store: BatchStore
    http: openai.DefaultAsyncHttpxClient
    models: dict[Provider, BaseChatModel]
    worker_id: str
    limiters: Limiters
    leases: Leases
    heartbeat: asyncio.Task[None]
    reconciler: asyncio.Task[None]
