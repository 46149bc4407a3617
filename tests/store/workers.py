"""A worker's context built by hand, and arq's own worker over it (no startup, no signals)."""

from __future__ import annotations

from typing import Any

from arq.connections import ArqRedis
from arq.worker import Worker, create_worker
from redis.asyncio import Redis

from shared.metrics import WorkerMetrics
from shared.settings import Settings
from shared.store import BatchStore
from worker import main
from worker.concurrency import Limiters
from worker.context import Attempts, Writes
from worker.llm import OfflineChatModel
from worker.pacing import Pacer
from worker.scheduler import Leases
from worker.watch import BatchWatch


def worker_ctx(
    redis: Redis, settings: Settings, owner: str, model: OfflineChatModel
) -> dict[str, Any]:
    """What `worker.main.startup` puts in arq's ctx, for worker `owner` and the given model."""
    store = BatchStore(redis)
    return {
        "redis": redis,
        "settings": settings,
        "store": store,
        "watch": BatchWatch(store),
        "metrics": WorkerMetrics(),
        "writes": Writes(store),
        "attempts": Attempts(store),
        "models": {"offline": model},
        "limiters": Limiters(redis, owner, ttl_s=5),
        "pacer": Pacer(redis, rpm=0, tpm=0),
        "leases": Leases(redis, owner, settings.lease_s),
    }


def arq_worker(settings: Settings, redis: ArqRedis, ctx: dict[str, Any]) -> Worker:
    """arq's worker as `WorkerSettings` configures it, on a ctx of the test's (no startup)."""
    return create_worker(
        main.worker_settings(settings),
        redis_pool=redis,
        ctx=ctx,
        handle_signals=False,
        on_startup=None,
        on_shutdown=None,
    )
