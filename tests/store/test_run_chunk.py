"""The worker task called directly with a hand-built context, against a real Redis."""

from __future__ import annotations

from typing import Any

import pytest
from arq import Retry
from redis.asyncio import Redis

from shared.llm import OFFLINE_PREFIX, OfflineChatModel
from shared.store import BatchStore, ItemOutcome
from tests.helpers import free_port
from tests.store.conftest import make_plan
from worker.tasks import run_chunk


class _UnbindableModel(OfflineChatModel):
    def bind(self, **kwargs: Any) -> Any:
        raise RuntimeError("secret prompt text must not be logged")


async def test_a_chunk_that_runs_again_skips_finished_items(store: BatchStore) -> None:
    batch, _ = await store.create(make_plan(4))
    await store.record(batch.id, 2, ItemOutcome(status="succeeded", output="kept"))
    ctx: dict[str, Any] = {"store": store, "models": {"offline": OfflineChatModel()}}
    assert await run_chunk(ctx, batch.id, 0) == {"written": 3, "failed": 0}
    page = await store.results_page(batch.id, after=None, limit=10)
    expected = [f"{OFFLINE_PREFIX}prompt {i}" for i in range(4)]
    expected[2] = "kept"
    assert [i.output for i in page.data] == expected
    assert (await store.get(batch.id)).status == "completed"
    assert await run_chunk(ctx, batch.id, 0) == {"written": 0}  # final: nothing to do


async def test_a_chunk_that_cannot_run_fails_the_batch_with_a_reason(
    store: BatchStore, caplog: pytest.LogCaptureFixture
) -> None:
    batch, _ = await store.create(make_plan(2))
    ctx: dict[str, Any] = {"store": store, "models": {"offline": _UnbindableModel()}}
    await run_chunk(ctx, batch.id, 0)
    failed = await store.get(batch.id)
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error.type == "internal_error"
    assert "RuntimeError" in failed.error.message
    assert "secret prompt text" not in caplog.text


async def test_a_batch_for_a_provider_this_worker_lacks_fails_saying_so(store: BatchStore) -> None:
    batch, _ = await store.create(make_plan(1, provider="openai"))
    ctx: dict[str, Any] = {"store": store, "models": {"offline": OfflineChatModel()}}
    await run_chunk(ctx, batch.id, 0)
    failed = await store.get(batch.id)
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error.type == "provider_unavailable"
    assert "openai" in failed.error.message


async def test_redis_unreachable_makes_arq_run_the_chunk_again_later() -> None:
    redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    ctx: dict[str, Any] = {"store": BatchStore(redis), "models": {"offline": OfflineChatModel()}}
    try:
        with pytest.raises(Retry):
            await run_chunk(ctx, "batch_x", 0)
    finally:
        await redis.aclose()
