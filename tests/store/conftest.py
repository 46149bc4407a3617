"""A BatchStore on the test session's real Redis, and plans to store in it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from shared.batches import BatchPlan, BatchSpec
from shared.chat import BatchParams
from shared.results import PendingItem
from shared.store import BatchStore


def make_plan(n: int, **overrides: Any) -> BatchPlan:
    """A validated batch of `n` prompts `prompt <i>` with custom ids `<i>`."""
    fields: dict[str, Any] = {
        "items": [(str(i), f"prompt {i}") for i in range(n)],
        "model": "m",
        "system": None,
        "params": BatchParams(),
        "max_concurrency": 3,
        "metadata": None,
        "provider": "offline",
    }
    return BatchPlan(**(fields | overrides))


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """An asyncio client on the test session's real Redis."""
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[BatchStore]:
    redis = Redis.from_url(redis_url)
    yield BatchStore(redis)
    await redis.aclose()


async def stored(
    store: BatchStore, n: int, *, chunk_size: int = 100, **overrides: Any
) -> BatchSpec:
    """Store a batch of `make_plan(n)` (nothing queued) and return what a worker reads of it."""
    batch, _ = await store.create(make_plan(n, **overrides), chunk_size=chunk_size)
    spec = await store.spec(batch.id)
    assert spec is not None
    return spec


def item(index: int) -> PendingItem:
    """Item `index` of a `make_plan` batch, as a worker reads it."""
    return PendingItem(index, str(index), f"prompt {index}")
