"""The completion window against a real Redis: items left when it ends are written `expired`
(`batch_expired`) with exact counts, a run starts no call after it, and the reconciler ends the
chunks no worker runs. The worker task is called directly with a hand-built context."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import PrivateAttr
from redis.asyncio import Redis

from api.lifecycle import submit
from shared import keys
from shared.batches import BatchSpec
from shared.results import BATCH_EXPIRED, ItemOutcome
from shared.scheduler import Scheduler
from shared.schemas import ItemResult
from shared.store import BatchStore
from tests.conftest import make_settings
from tests.helpers import wait_for
from tests.store.conftest import item, make_plan, stored
from tests.store.workers import worker_ctx
from worker.llm import OFFLINE_PREFIX, OfflineChatModel
from worker.main import run_chunk
from worker.scheduler import reconcile


def _window(seconds: int) -> dict[str, Any]:
    return {"completion_window": f"{seconds}s", "completion_window_s": seconds}


class _GatedModel(OfflineChatModel):
    """The offline model, answering only once `gate` is open; counts the calls it started."""

    _gate: asyncio.Event = PrivateAttr(default_factory=asyncio.Event)
    _calls: list[int] = PrivateAttr(default_factory=list)

    async def _agenerate(
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> Any:
        self._calls.append(1)
        await self._gate.wait()
        return await super()._agenerate(messages, stop, run_manager, **kw)


@pytest.fixture
def model() -> _GatedModel:
    return _GatedModel()


@pytest.fixture
def ctx(redis: Redis, model: _GatedModel) -> dict[str, Any]:
    """What `worker.main.startup` puts in arq's ctx, for a worker with the gated model."""
    return worker_ctx(redis, make_settings("redis://unused"), "test-worker", model)


async def _overdue(spec: BatchSpec) -> None:
    async def passed() -> bool:
        return spec.overdue()

    await wait_for(passed, timeout_s=10, what="the completion window to end")


async def _items(store: BatchStore, batch_id: str) -> list[ItemResult]:
    return (await store.results_page(batch_id, after=None, limit=100)).data


def _expired(result: ItemResult) -> bool:
    return (
        result.status == "expired"
        and result.error is not None
        and result.error.type == BATCH_EXPIRED
        and result.output is None
    )


async def test_a_window_is_stored_with_its_deadline_and_read_back(store: BatchStore) -> None:
    spec = await stored(store, 2, **_window(90))
    batch = await store.get(spec.id)
    assert batch.completion_window == "90s"
    assert batch.deadline_at is not None
    assert (batch.deadline_at - batch.created_at).total_seconds() == 90
    assert spec.deadline_ms == int(batch.deadline_at.timestamp() * 1000)
    assert not spec.overdue()
    assert spec.overdue(now_ms=spec.deadline_ms)
    assert batch.expired_at is None
    plain = await stored(store, 1)
    assert (plain.deadline_ms, plain.overdue()) == (None, False)
    assert (await store.get(plain.id)).deadline_at is None


async def test_expire_pending_ends_the_rest_expired_and_keeps_what_finished(
    store: BatchStore,
) -> None:
    spec = await stored(store, 5, chunk_size=3, **_window(3600))
    await store.record(spec, item(0), ItemOutcome(status="succeeded", output="kept"))
    await store.record(spec, item(4), ItemOutcome(status="failed"))
    assert await store.expire_pending(spec, 0) == 2
    assert (await store.get(spec.id)).status == "in_progress"  # chunk 1 still has item 3
    assert await store.expire_pending(spec, 1) == 1
    assert await store.expire_pending(spec, 1) == 0  # written once: a repeat changes nothing
    batch = await store.get(spec.id)
    assert batch.status == "expired"
    counts = batch.request_counts
    assert (counts.succeeded, counts.failed, counts.expired, counts.pending) == (1, 1, 3, 0)
    assert batch.finished_at is not None
    assert batch.expires_at is not None
    assert batch.expired_at == batch.finished_at
    items = await _items(store, spec.id)
    assert items[0].output == "kept"
    assert items[4].status == "failed"
    assert [i.index for i in items if _expired(i)] == [1, 2, 3]
    stats = await store.redis.hgetall(keys.STATS)  # type: ignore[misc]
    assert stats[b"batches:expired"] == b"1"  # final exactly once
    assert stats[b"items:expired"] == b"3"
    events = await store.events_between(spec.id, "0-0", "+")
    assert [(e.kind, e.status) for e in events if e.kind == "status"][-1] == ("status", "expired")


async def test_a_cancel_that_cancelled_items_wins_over_the_window(store: BatchStore) -> None:
    both = await stored(store, 2, chunk_size=1, **_window(3600))
    assert await store.request_cancel(both.id)
    await store.cancel_pending(both, 0)
    await store.expire_pending(both, 1)
    assert (await store.get(both.id)).status == "cancelled"
    # Asked to cancel, but every item left had expired first: nothing was cancelled.
    expired = await stored(store, 2, **_window(3600))
    assert await store.request_cancel(expired.id)
    await store.expire_pending(expired, 0)
    assert (await store.get(expired.id)).status == "expired"


async def test_a_chunk_taken_after_the_window_expires_at_once_without_a_call(
    ctx: dict[str, Any], model: _GatedModel
) -> None:
    store: BatchStore = ctx["store"]
    spec = await stored(store, 4, **_window(1))
    await store.record(spec, item(1), ItemOutcome(status="succeeded", output="kept"))
    await _overdue(spec)
    assert await run_chunk(ctx, spec.id, 0) == {"written": 3, "expired": 3}
    assert model._calls == []
    batch = await store.get(spec.id)
    assert batch.status == "expired"
    assert (batch.request_counts.succeeded, batch.request_counts.expired) == (1, 3)
    assert [i.index for i in await _items(store, spec.id) if _expired(i)] == [0, 2, 3]
    assert await run_chunk(ctx, spec.id, 0) == {"written": 0}  # final: nothing to do


async def test_no_call_starts_after_the_window_and_calls_in_flight_are_kept(
    ctx: dict[str, Any], model: _GatedModel
) -> None:
    store: BatchStore = ctx["store"]
    spec = await stored(store, 4, max_concurrency=1, **_window(5))  # room for the first call
    run = asyncio.create_task(run_chunk(ctx, spec.id, 0))

    async def first_call() -> bool:
        return len(model._calls) == 1

    await wait_for(first_call, what="the first call to start")
    await _overdue(spec)  # the window ends with one call in flight and three waiting for a slot
    model._gate.set()
    counts = await run
    assert counts == {"written": 1, "failed": 0, "stopped": 3, "expired": 3}
    assert len(model._calls) == 1  # none started after the window
    items = await _items(store, spec.id)
    assert (items[0].status, items[0].output) == ("succeeded", f"{OFFLINE_PREFIX}prompt 0")
    assert all(_expired(i) for i in items[1:])
    batch = await store.get(spec.id)
    assert batch.status == "expired"
    counts_ = batch.request_counts
    assert (counts_.succeeded, counts_.expired, counts_.pending) == (1, 3, 0)
    assert batch.usage.total_tokens > 0  # the kept call's usage counts


async def test_the_reconciler_expires_idle_chunks_of_an_overdue_batch_only(
    redis: Redis, ctx: dict[str, Any], model: _GatedModel
) -> None:
    store: BatchStore = ctx["store"]
    settings = make_settings("redis://unused", chunk_size=2)
    batch, _ = await submit(store, make_plan(6, max_concurrency=1, **_window(1)), settings)
    later, _ = await submit(store, make_plan(2, **_window(3600)), settings)
    spec = await store.spec(batch.id)
    assert spec is not None
    await store.record(spec, item(0), ItemOutcome(status="succeeded", output="kept"))
    await Scheduler(redis).begin(batch.id, 1, "test-worker", 30_000)  # chunk 1 runs here
    await _overdue(spec)
    assert await reconcile(redis, store, lease_s=30) == 0
    queue = {raw.decode() for raw in await redis.zrange(keys.QUEUE, 0, -1)}
    assert queue == {keys.job_id(later.id, 0)}  # idle chunk 0 left the queue; 2 never on it
    items = await _items(store, batch.id)
    assert [i.status for i in items] == [
        "succeeded", "expired", "pending", "pending", "expired", "expired",
    ]  # fmt: skip
    assert (await store.get(later.id)).request_counts.pending == 2  # not overdue: untouched
    # The running chunk is its run's: taken after the window, it expires at once.
    assert await run_chunk(ctx, batch.id, 1) == {"written": 2, "expired": 2}
    assert model._calls == []
    done = await store.get(batch.id)
    assert done.status == "expired"
    assert (done.request_counts.succeeded, done.request_counts.expired) == (1, 5)
    assert await reconcile(redis, store, lease_s=30) == 0  # final: nothing more
    assert (await store.get(batch.id)).request_counts.expired == 5


async def test_a_batch_expired_before_any_run_never_started(redis: Redis) -> None:
    store = BatchStore(redis)
    settings = make_settings("redis://unused", chunk_size=2)
    batch, _ = await submit(store, make_plan(4, **_window(1)), settings)
    spec = await store.spec(batch.id)
    assert spec is not None
    await _overdue(spec)
    assert await reconcile(redis, store, lease_s=30) == 0
    done = await store.get(batch.id)
    assert done.status == "expired"
    assert done.request_counts.expired == 4
    assert done.started_at is None  # no run ever started it
    assert done.finished_at is not None
