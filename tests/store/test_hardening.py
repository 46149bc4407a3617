"""The batch scripts' edge cases against a real server: what a final batch leaves behind, how a
cancelled batch whose items all ran ends, and when a batch counts as started."""

from __future__ import annotations

from shared import keys
from shared.progress import ProgressEvent
from shared.results import ItemOutcome
from shared.schemas import ErrorInfo, Usage
from shared.store import BatchStore
from tests.store.conftest import item, stored

RETENTION_MS = 7 * 24 * 3600 * 1000


def _ok(text: str) -> ItemOutcome:
    return ItemOutcome(status="succeeded", output=text, usage=Usage.of(1, 1))


async def _status_events(store: BatchStore, batch_id: str) -> list[ProgressEvent]:
    events = await store.events_between(batch_id, "0-0", "+")
    return [event for event in events if event.kind == "status"]


async def test_a_run_begun_on_a_final_batch_leaves_no_attempts_that_never_expire(
    store: BatchStore,
) -> None:
    batch = await stored(store, 2, chunk_size=1)
    assert await store.begin_attempt(batch.id, 0, "running") == 1
    assert await store.redis.pttl(keys.attempts(batch.id)) == -1  # not final: kept while it runs
    await store.record(batch, item(0), _ok("a"))
    await store.record(batch, item(1), _ok("b"))  # final: every key of the batch expires
    await store.end_attempt(batch.id, 0, "running")
    assert await store.redis.exists(keys.attempts(batch.id)) == 0  # its last field went

    assert await store.begin_attempt(batch.id, 1, "late") == 1  # a run that began as it ended
    ttl = await store.redis.pttl(keys.attempts(batch.id))
    assert 0 < ttl <= RETENTION_MS

    await store.redis.delete(keys.attempts(batch.id))  # as when the hash itself lapsed
    assert await store.begin_attempt(batch.id, 1, "later") == 1
    ttl = await store.redis.pttl(keys.attempts(batch.id))
    assert 0 < ttl <= RETENTION_MS


async def test_a_batch_asked_to_cancel_whose_items_all_then_succeed_is_completed(
    store: BatchStore,
) -> None:
    batch = await stored(store, 2)
    await store.mark_started(batch.id)
    assert await store.request_cancel(batch.id)  # both calls were in flight: nothing cancelled
    assert await store.record(batch, item(0), _ok("a")) == "written"
    assert await store.record(batch, item(1), _ok("b")) == "finished"
    done = await store.get(batch.id)
    assert done.status == "completed"
    assert (done.request_counts.succeeded, done.request_counts.cancelled) == (2, 0)
    assert [e.status for e in await _status_events(store, batch.id)][-1] == "completed"


async def test_a_batch_asked_to_cancel_that_cancels_an_item_is_cancelled(
    store: BatchStore,
) -> None:
    batch = await stored(store, 2)
    await store.mark_started(batch.id)
    await store.request_cancel(batch.id)
    await store.record(batch, item(0), _ok("in flight"))
    spec = await store.spec(batch.id)
    assert spec is not None
    assert await store.cancel_pending(spec, 0) == 1
    done = await store.get(batch.id)
    assert done.status == "cancelled"
    assert (done.request_counts.succeeded, done.request_counts.cancelled) == (1, 1)


async def test_a_result_written_while_the_batch_is_queued_starts_it(store: BatchStore) -> None:
    batch = await stored(store, 2)
    assert await store.record(batch, item(0), _ok("a")) == "written"
    running = await store.get(batch.id)
    assert running.status == "in_progress"
    assert running.started_at is not None
    assert [e.status for e in await _status_events(store, batch.id)] == ["in_progress"]
    assert not await store.mark_started(batch.id)  # already started: stamped once
    await store.record(batch, item(1), _ok("b"))
    done = await store.get(batch.id)
    assert done.status == "completed"
    assert done.started_at == running.started_at


async def test_failures_written_before_the_batch_was_marked_started_start_it(
    store: BatchStore,
) -> None:
    batch = await stored(store, 3)
    lost = ErrorInfo(type="worker_lost", message="gone")
    assert await store.fail_pending(batch, 0, lost) == 3  # a chunk given up before it started
    done = await store.get(batch.id)
    assert done.status == "completed"
    assert done.started_at is not None
    assert done.finished_at is not None
    assert done.started_at <= done.finished_at
    assert [e.status for e in await _status_events(store, batch.id)] == [
        "in_progress",
        "completed",
    ]


async def test_a_batch_cancelled_while_queued_never_started(store: BatchStore) -> None:
    batch = await stored(store, 2)
    assert await store.request_cancel(batch.id)
    spec = await store.spec(batch.id)
    assert spec is not None
    assert await store.cancel_pending(spec, 0) == 2
    done = await store.get(batch.id)
    assert done.status == "cancelled"
    assert done.started_at is None
