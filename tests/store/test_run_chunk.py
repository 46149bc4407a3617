"""The worker task called directly with a hand-built context, against a real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from arq import Retry
from pydantic import PrivateAttr
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys, workers
from shared.results import ItemOutcome
from shared.store import BatchStore
from tests.conftest import make_settings
from tests.helpers import RedisServer, free_port, wait_for
from tests.store.conftest import item, stored
from tests.store.workers import worker_ctx
from worker import tasks
from worker.context import Attempts
from worker.llm import OFFLINE_PREFIX, OfflineChatModel, checked_outcome
from worker.main import run_chunk


def _ctx(redis: Redis, **overrides: Any) -> dict[str, Any]:
    """What `worker.main.startup` puts in arq's ctx, for a worker with the offline model."""
    settings = make_settings("redis://unused", chunk_max_attempts=2)
    return worker_ctx(redis, settings, "test-worker", OfflineChatModel()) | overrides


@pytest.fixture
async def ctx(redis_url: str) -> AsyncIterator[dict[str, Any]]:
    redis = Redis.from_url(redis_url)
    yield _ctx(redis)
    await redis.aclose()


async def test_a_chunk_that_runs_again_skips_finished_items(ctx: dict[str, Any]) -> None:
    store: BatchStore = ctx["store"]
    batch = await stored(store, 4)
    await store.record(batch, item(2), ItemOutcome(status="succeeded", output="kept"))
    assert await run_chunk(ctx, batch.id, 0) == {"written": 3, "failed": 0, "stopped": 0}
    page = await store.results_page(batch.id, after=None, limit=10)
    expected = [f"{OFFLINE_PREFIX}prompt {i}" for i in range(4)]
    expected[2] = "kept"
    assert [i.output for i in page.data] == expected
    assert (await store.get(batch.id)).status == "completed"
    assert await run_chunk(ctx, batch.id, 0) == {"written": 0}  # final: nothing to do


async def test_chunks_run_only_their_own_items(ctx: dict[str, Any]) -> None:
    store: BatchStore = ctx["store"]
    batch = await stored(store, 5, chunk_size=2)
    assert (await run_chunk(ctx, batch.id, 1))["written"] == 2
    page = await store.results_page(batch.id, after=None, limit=10)
    assert [i.status for i in page.data] == [
        "pending",
        "pending",
        "succeeded",
        "succeeded",
        "pending",
    ]
    await run_chunk(ctx, batch.id, 2)
    await run_chunk(ctx, batch.id, 0)
    assert (await store.get(batch.id)).status == "completed"


async def test_a_chunk_whose_runs_keep_dying_fails_its_items_with_a_reason(
    ctx: dict[str, Any],
) -> None:
    store: BatchStore = ctx["store"]
    batch = await stored(store, 4, chunk_size=2)
    await store.record(batch, item(0), ItemOutcome(status="succeeded", output="kept"))
    for run in ("died-1", "died-2"):  # two runs began and their worker died (no end recorded)
        await store.begin_attempt(batch.id, 0, run)
    assert await run_chunk(ctx, batch.id, 0) == {"written": 1, "failed": 1}
    await run_chunk(ctx, batch.id, 1)  # the rest of the batch still runs
    done = await store.get(batch.id)
    assert done.status == "completed"
    assert (done.request_counts.succeeded, done.request_counts.failed) == (3, 1)
    lost = (await store.results_page(batch.id, after=None, limit=10)).data[1]
    assert lost.error is not None
    assert lost.error.type == "worker_lost"
    assert "2 times" in lost.error.message


async def test_a_run_that_ends_does_not_count_as_an_attempt(ctx: dict[str, Any]) -> None:
    store: BatchStore = ctx["store"]
    batch = await stored(store, 2)
    await run_chunk(ctx, batch.id, 0)
    assert await store.begin_attempt(batch.id, 0, "next") == 1


async def test_a_run_that_ends_while_redis_is_away_is_not_counted_as_a_death(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path, appendonly=True)
    redis = Redis.from_url(server.url)
    try:
        store = BatchStore(redis)
        batch = await stored(store, 2)
        attempts = Attempts(store)
        async with attempts.run(batch.id, 0) as attempt:
            assert attempt == 1
            server.stop()  # Redis goes away before the run ends: its end cannot be recorded
        server.start()
        await wait_for(_recorded(attempts), what="the run's end to be recorded")
        assert await store.begin_attempt(batch.id, 0, "next") == 1  # not 2: nobody died
    finally:
        await redis.aclose()
        server.stop()


def _recorded(attempts: Attempts) -> Callable[[], Awaitable[bool]]:
    async def recorded() -> bool:
        try:
            await attempts.record_ended()
        except RedisError:
            return False
        return True

    return recorded


async def test_a_chunk_that_cannot_run_fails_the_batch_with_a_reason(
    ctx: dict[str, Any], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    store: BatchStore = ctx["store"]
    batch = await stored(store, 2)

    def broken(*args: Any) -> Any:  # a bug in the run's set-up, its message quoting a prompt
        raise RuntimeError("secret prompt text must not be logged")

    monkeypatch.setattr(tasks, "batch_kwargs", broken)
    await run_chunk(ctx, batch.id, 0)
    failed = await store.get(batch.id)
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error.type == "internal_error"
    assert "RuntimeError" in failed.error.message
    assert "secret prompt text" not in caplog.text


async def test_a_batch_for_a_provider_no_worker_alive_has_fails_saying_so(
    ctx: dict[str, Any],
) -> None:
    store: BatchStore = ctx["store"]
    batch = await stored(store, 1, provider="openai")
    await run_chunk(ctx, batch.id, 0)
    failed = await store.get(batch.id)
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error.type == "provider_unavailable"
    assert "openai" in failed.error.message


async def test_redis_unreachable_makes_arq_run_the_chunk_again_later() -> None:
    redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(Retry):
            await run_chunk(_ctx(redis), "batch_x", 0)
    finally:
        await redis.aclose()


class _CountingModel(OfflineChatModel):
    """The offline model, counting its calls in flight at once."""

    _now: int = PrivateAttr(default=0)
    _most: int = PrivateAttr(default=0)

    async def _agenerate(self, *args: Any, **kwargs: Any) -> Any:
        self._now += 1
        self._most = max(self._most, self._now)
        try:
            return await super()._agenerate(*args, **kwargs)
        finally:
            self._now -= 1


async def test_a_run_carries_at_most_its_share_of_its_batch_s_concurrency(
    redis_url: str,
) -> None:
    redis = Redis.from_url(redis_url)
    model = _CountingModel(latency_s=0.01)
    ctx = _ctx(redis, models={"offline": model})
    store: BatchStore = ctx["store"]
    try:
        # Concurrency 32 at 16 calls a run: a window of two runs, each carrying 16 calls...
        batch = await stored(store, 400, max_concurrency=32)
        await store.redis.hset(keys.batch(batch.id), "window", "2")  # type: ignore[misc]
        assert await run_chunk(ctx, batch.id, 0) == {"written": 100, "failed": 0, "stopped": 0}
        assert model._most == 16
        model._most = 0  # ... but one of the last two, with no chunk to follow, all 32
        assert await run_chunk(ctx, batch.id, 3) == {"written": 100, "failed": 0, "stopped": 0}
        assert model._most == 32
    finally:
        await redis.aclose()


async def test_an_item_whose_outcome_cannot_be_built_fails_alone_and_its_batch_completes(
    ctx: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    store: BatchStore = ctx["store"]
    batch = await stored(store, 5)
    built = checked_outcome

    async def poisoned(reply: Any, response_format: Any = None) -> ItemOutcome:
        if "prompt 2" in str(getattr(reply, "text", "")):  # as a reply no check foresaw
            raise RecursionError
        return await built(reply, response_format)

    monkeypatch.setattr(tasks, "checked_outcome", poisoned)
    assert await run_chunk(ctx, batch.id, 0) == {"written": 5, "failed": 1, "stopped": 0}
    page = await store.results_page(batch.id, after=None, limit=10)
    assert [i.status for i in page.data] == ["succeeded"] * 2 + ["failed"] + ["succeeded"] * 2
    error = page.data[2].error
    assert error is not None
    assert error.type == "internal_error"
    assert "RecursionError" in error.message
    assert (await store.get(batch.id)).status == "completed"


async def test_a_chunk_whose_provider_another_worker_has_goes_back_to_the_queue(
    ctx: dict[str, Any],
) -> None:
    store: BatchStore = ctx["store"]
    batch = await stored(store, 2, provider="openai")
    await workers.beat(store.redis, "elsewhere:1:x", alive_s=60, providers=["offline", "openai"])
    with pytest.raises(Retry):  # arq keeps the job queued: not run, not finished
        await run_chunk(ctx, batch.id, 0)
    waiting = await store.get(batch.id)
    assert waiting.status == "queued"
    assert waiting.error is None
