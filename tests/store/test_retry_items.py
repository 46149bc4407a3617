"""Retrying a final batch's items in place (`Retries.retry`, `retry_*.lua`), against a real Redis:
exactly the asked-for items go back to pending with exact counts, the batch runs again and no
longer expires, and the chunks to run again are named (or found by the reconciler)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from redis.asyncio import Redis

from shared import keys, retries
from shared.batches import BatchSpec
from shared.errors import Conflict, NotFound
from shared.model import PAGE
from shared.results import ItemOutcome
from shared.retries import Retries
from shared.scheduler import Scheduler
from shared.schemas import ErrorInfo, FinalItemStatus, Usage
from shared.store import BatchStore
from tests.store.conftest import item, make_plan, stored
from worker.scheduler import reconcile

ERROR = ErrorInfo(type="invalid_request", message="refused")


@pytest.fixture
def store(redis: Redis) -> BatchStore:
    return BatchStore(redis, result_ttl_s=3600)


def outcome(status: FinalItemStatus) -> ItemOutcome:
    if status == "succeeded":
        return ItemOutcome(status="succeeded", output="ok", usage=Usage.of(2, 3))
    return ItemOutcome(status=status, error=ERROR)


async def finish(store: BatchStore, spec: BatchSpec, ended: Sequence[FinalItemStatus]) -> None:
    """Write one result per item, item `i` ending as `ended[i]`: the batch is then final."""
    await store.record_many(spec, [(item(i), outcome(s)) for i, s in enumerate(ended)])


async def stored_results(redis: Redis, batch_id: str) -> dict[int, bytes]:
    raw = await redis.hgetall(keys.results(batch_id))  # type: ignore[misc]
    return {int(index): value for index, value in raw.items()}


# 10 items in chunks of 4: chunk 0 is items 0-3, chunk 1 is 4-7, chunk 2 is 8-9.
ENDED: list[FinalItemStatus] = ["succeeded"] * 10
ENDED[1] = ENDED[5] = "failed"


async def test_a_retry_resets_exactly_the_failed_items_and_runs_the_batch_again(
    store: BatchStore, redis: Redis
) -> None:
    spec = await stored(store, 10, chunk_size=4)
    await finish(store, spec, ENDED)
    before = await store.get(spec.id)
    assert before.status == "completed"
    assert before.request_counts.failed == 2
    kept = await stored_results(redis, spec.id)
    events_before = await redis.xlen(keys.events(spec.id))
    await store.begin_attempt(spec.id, 0, "run-of-a-worker-that-died")

    chunks = await store.retry(spec.id)

    assert chunks == [0, 1]
    batch = await store.get(spec.id)
    assert batch.status == "in_progress"
    assert batch.started_at == before.started_at
    assert (batch.finished_at, batch.expires_at, batch.error) == (None, None, None)
    counts = batch.request_counts
    assert (counts.total, counts.succeeded, counts.failed, counts.pending) == (10, 8, 0, 2)
    assert (counts.cancelled, counts.expired) == (0, 0)
    assert batch.usage == before.usage  # what the first run spent stays spent
    results = await stored_results(redis, spec.id)
    assert set(results) == set(range(10)) - {1, 5}
    assert results == {i: raw for i, raw in kept.items() if i not in (1, 5)}
    page = await store.results_page(spec.id, after=None, limit=10)
    assert [i.status for i in page.data] == ["pending" if n in (1, 5) else "succeeded"
                                             for n in range(10)]  # fmt: skip
    assert await redis.hgetall(keys.chunks(spec.id)) == {b"0": b"3", b"1": b"3", b"2": b"2"}  # type: ignore[misc]
    assert await redis.hget(keys.batch(spec.id), "done") == b"8"  # type: ignore[misc]
    for key in (keys.batch, keys.inputs, keys.results, keys.chunks, keys.events):
        assert await redis.pttl(key(spec.id)) == -1, key.__name__
    assert not await redis.exists(keys.attempts(spec.id))  # the retried chunks start afresh
    assert await redis.zscore(keys.ACTIVE, spec.id) is not None
    assert await redis.sismember(keys.active_batches(keys.PUBLIC_OWNER), spec.id)  # type: ignore[misc]
    assert await redis.xlen(keys.events(spec.id)) == events_before + 1
    [(_, last)] = await redis.xrevrange(keys.events(spec.id), count=1)
    assert last == {b"k": b"status", b"s": b"in_progress"}
    assert await store.pending_items(spec.id, 0, 10) == [item(1), item(5)]

    # The retried items run: the batch ends again, counted exactly, and expires again.
    await store.record_many(spec, [(item(1), outcome("succeeded")), (item(5), outcome("failed"))])
    after = await store.get(spec.id)
    assert after.status == "completed"
    assert after.finished_at is not None
    assert after.expires_at is not None
    assert after.request_counts.succeeded == 9
    assert after.request_counts.failed == 1
    assert after.request_counts.pending == 0
    assert after.usage.input_tokens == before.usage.input_tokens + 2
    assert 0 < await redis.pttl(keys.batch(spec.id)) <= 3600 * 1000
    # Item 5 failed again: the batch can be retried again.
    assert await store.retry(spec.id) == [1]
    assert (await store.get(spec.id)).request_counts.pending == 1


async def test_a_batch_that_is_not_final_is_a_conflict(store: BatchStore, redis: Redis) -> None:
    spec = await stored(store, 3)
    with pytest.raises(Conflict, match="is queued; only a final batch can be retried"):
        await store.retry(spec.id)
    await store.record(spec, item(0), outcome("failed"))
    with pytest.raises(Conflict, match="is in_progress; only a final batch"):
        await store.retry(spec.id)
    assert (await store.get(spec.id)).request_counts.failed == 1  # nothing changed
    assert await redis.hlen(keys.results(spec.id)) == 1  # type: ignore[misc]


async def test_a_batch_with_nothing_to_retry_is_a_conflict_and_stays_final(
    store: BatchStore, redis: Redis
) -> None:
    spec = await stored(store, 3)
    await finish(store, spec, ["succeeded", "cancelled", "succeeded"])
    before = await redis.hgetall(keys.batch(spec.id))  # type: ignore[misc]
    with pytest.raises(Conflict, match="has no failed items to retry"):
        await store.retry(spec.id)
    with pytest.raises(Conflict, match="has no failed or expired items to retry"):
        await store.retry(spec.id, ["expired"])
    assert await redis.hgetall(keys.batch(spec.id)) == before  # type: ignore[misc]
    assert await redis.pttl(keys.batch(spec.id)) > 0
    assert await store.retry(spec.id, ["cancelled"]) == [0]


async def test_cancelled_and_expired_items_are_retried_when_included(
    store: BatchStore, redis: Redis
) -> None:
    ended: list[FinalItemStatus] = ["succeeded", "failed", "cancelled", "expired"] * 2
    spec = await stored(store, 8, chunk_size=2)
    await finish(store, spec, ended)
    assert (await store.get(spec.id)).status == "expired"

    assert await store.retry(spec.id, ["cancelled", "expired"]) == [0, 1, 2, 3]

    counts = (await store.get(spec.id)).request_counts
    assert (counts.succeeded, counts.failed, counts.cancelled, counts.expired) == (2, 0, 0, 0)
    assert counts.pending == 6
    assert set(await stored_results(redis, spec.id)) == {0, 4}
    # Chunk 0 (items 0, 1) keeps item 0; chunk 1 (items 2, 3) has nothing final now.
    assert await redis.hgetall(keys.chunks(spec.id)) == {  # type: ignore[misc]
        b"0": b"1",
        b"1": b"0",
        b"2": b"1",
        b"3": b"0",
    }


async def test_only_the_included_statuses_are_retried(store: BatchStore, redis: Redis) -> None:
    spec = await stored(store, 4, chunk_size=2)
    await finish(store, spec, ["failed", "succeeded", "cancelled", "expired"])
    assert await store.retry(spec.id, ["expired"]) == [0, 1]
    counts = (await store.get(spec.id)).request_counts
    assert (counts.failed, counts.cancelled, counts.expired, counts.pending) == (0, 1, 0, 2)
    assert set(await stored_results(redis, spec.id)) == {1, 2}


async def test_a_batch_failed_as_a_whole_runs_its_failed_and_never_run_items_again(
    store: BatchStore, redis: Redis
) -> None:
    spec = await stored(store, 10, chunk_size=4)
    await store.record_many(spec, [(item(0), outcome("succeeded")), (item(1), outcome("failed"))])
    assert await store.fail(spec.id, ErrorInfo(type="internal_error", message="broke"))
    assert (await store.get(spec.id)).error is not None

    assert await store.retry(spec.id) == [0, 1, 2]

    batch = await store.get(spec.id)
    assert batch.status == "in_progress"
    assert batch.error is None  # the reason it failed no longer holds: it is running
    assert batch.request_counts.pending == 9
    assert batch.request_counts.succeeded == 1


async def test_a_failed_batch_that_never_started_is_queued_again(store: BatchStore) -> None:
    spec = await stored(store, 3)
    assert await store.fail(spec.id, ErrorInfo(type="provider_unavailable", message="none"))
    # Nothing failed item by item, but none ran: they are what a retry runs.
    assert await store.retry(spec.id) == [0]
    batch = await store.get(spec.id)
    assert batch.status == "queued"
    assert batch.started_at is None
    assert await store.mark_started(spec.id)  # a worker starts it as any queued batch


async def test_the_reconciler_queues_the_retried_chunks_if_nobody_did(
    store: BatchStore, redis: Redis
) -> None:
    spec = await stored(store, 10, chunk_size=4)
    await finish(store, spec, ENDED)
    assert await store.unfinished_chunks(spec.id) is None  # final: out of the active set
    assert await store.active_batches() == []

    chunks = await store.retry(spec.id)  # ... and the process dies before queueing them

    assert await store.active_batches() == [spec.id]
    assert await store.unfinished_chunks(spec.id) == chunks == [0, 1]
    assert await reconcile(redis, store, lease_s=30) == 2
    queued = await redis.zrange(keys.QUEUE, 0, -1)
    assert queued == [keys.job_id(spec.id, 0).encode()]  # chunk 1 in the batch's next turn
    assert await redis.zrange(keys.redo(spec.id), 0, -1) == [b"1"]
    await Scheduler(redis).requeue(spec.id, chunks)  # the late queueing changes nothing
    assert await redis.zcard(keys.QUEUE) == 1
    assert await reconcile(redis, store, lease_s=30) == 0


async def test_a_retry_after_the_batch_was_retried_meanwhile_retries_what_failed_since(
    store: BatchStore, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Items are found page by page, then reset at once: should another retry run and the
    batch end again in between, the items are found again."""
    spec = await stored(store, 3)
    await finish(store, spec, ["failed", "succeeded", "cancelled"])
    other = BatchStore(redis)
    scan = store._scan
    scans = []

    async def scan_then_retry_elsewhere(*args: Any) -> list[int]:
        found = await scan(*args)
        scans.append(found)
        if len(scans) == 1:  # another request retries it, and its items end again
            await other.retry(spec.id, ["cancelled"])
            await other.record_many(
                spec, [(item(0), outcome("succeeded")), (item(2), outcome("failed"))]
            )
        return found

    monkeypatch.setattr(store, "_scan", scan_then_retry_elsewhere)
    assert await store.retry(spec.id) == [0]
    assert scans == [[0], [2]]
    assert set(await stored_results(redis, spec.id)) == {0, 1}


async def test_a_completion_window_that_ended_is_lifted_one_still_open_stays(
    store: BatchStore, redis: Redis
) -> None:
    for deadline_ms, kept in ((1, False), (2**50, True)):
        spec = await stored(store, 2)
        await redis.hset(keys.batch(spec.id), "deadline_ms", str(deadline_ms))  # type: ignore[misc]
        await finish(store, spec, ["succeeded", "expired"])
        await store.retry(spec.id, ["expired"])
        found = await redis.hget(keys.batch(spec.id), "deadline_ms")  # type: ignore[misc]
        assert (found is not None) is kept


async def test_an_unknown_batch_or_another_owners_is_not_found(
    store: BatchStore, redis: Redis
) -> None:
    with pytest.raises(NotFound):
        await store.retry("batch_" + "0" * 32)
    batch, _ = await store.create(make_plan(2), chunk_size=10, owner="alice")
    spec = await store.spec(batch.id)
    assert spec is not None
    await finish(store, spec, ["failed", "failed"])
    with pytest.raises(NotFound):
        await store.retry(batch.id, owner="bob")
    assert await store.retry(batch.id, owner="alice") == [0]
    assert await redis.sismember(keys.active_batches("alice"), batch.id)  # type: ignore[misc]


async def test_a_status_no_retry_resets_is_refused(store: BatchStore) -> None:
    spec = await stored(store, 1)
    await finish(store, spec, ["succeeded"])
    with pytest.raises(ValueError, match="succeeded"):
        await store.retry(spec.id, ["succeeded"])


async def test_a_batch_of_more_than_a_page_of_items_is_scanned_whole(
    store: BatchStore, redis: Redis
) -> None:
    n = 2500
    spec = await stored(store, n, chunk_size=500)
    ended: list[FinalItemStatus] = ["succeeded"] * n
    for i in (0, 999, 1000, 2499):
        ended[i] = "failed"
    for start in range(0, n, 1000):
        page = [(item(i), outcome(ended[i])) for i in range(start, min(start + 1000, n))]
        await store.record_many(spec, page)
    assert (await store.get(spec.id)).status == "completed"
    assert await store.retry(spec.id) == [0, 1, 2, 4]
    assert [p.index for p in await store.pending_items(spec.id, 0, n)] == [0, 999, 1000, 2499]


async def test_a_cancelled_batch_retried_without_its_cancelled_items_ends_cancelled_again(
    store: BatchStore,
) -> None:
    spec = await stored(store, 4)
    assert await store.request_cancel(spec.id)
    await finish(store, spec, ["succeeded", "failed", "cancelled", "cancelled"])
    assert (await store.get(spec.id)).status == "cancelled"
    assert await store.retry(spec.id) == [0]  # the failed item only
    await store.record_many(spec, [(item(1), outcome("succeeded"))])
    batch = await store.get(spec.id)
    assert batch.status == "cancelled"  # two of its items still are
    assert (batch.request_counts.succeeded, batch.request_counts.cancelled) == (2, 2)


async def test_a_batch_whose_budget_ran_out_with_its_last_calls_ends_completed_without_error(
    store: BatchStore,
) -> None:
    spec = await stored(store, 3, max_total_tokens=10)
    await store.record_many(spec, [(item(0), outcome("succeeded"))])
    # 5 tokens; the next result crosses the budget while the last call is in flight.
    await store.record_many(spec, [(item(1), outcome("succeeded"))])
    crossed = await store.get(spec.id)
    assert crossed.status == "cancelling"
    assert crossed.error is not None
    assert crossed.error.type == "budget_exceeded"
    await store.record_many(spec, [(item(2), outcome("succeeded"))])  # kept, as calls in flight are
    batch = await store.get(spec.id)
    assert batch.status == "completed"  # every item ran: nothing was cancelled
    assert batch.error is None


async def test_a_retry_while_another_is_resetting_pages_is_a_conflict_until_that_one_lapses(
    store: BatchStore, redis: Redis
) -> None:
    spec = await stored(store, 10, chunk_size=4)
    await finish(store, spec, ENDED)
    assert await store.run_script("retry_begin", spec.id, ["0", 60_000]) == 1  # another request
    with pytest.raises(Conflict, match="being retried"):
        await store.retry(spec.id)
    assert (await store.get(spec.id)).request_counts.failed == 2  # nothing reset
    # ... cut off long ago:
    await redis.hset(keys.batch(spec.id), "resetting", "0:1")  # type: ignore[misc]
    assert await store.retry(spec.id) == [0, 1]


async def test_a_retry_of_200000_failed_items_holds_redis_for_no_command_over_50_ms(
    store: BatchStore, redis: Redis
) -> None:
    count = 200_000
    spec = await stored(store, count, chunk_size=100)
    for start in range(0, count, PAGE):
        page = [(item(i), outcome("failed")) for i in range(start, min(start + PAGE, count))]
        await store.record_many(spec, page)
    assert (await store.get(spec.id)).request_counts.failed == count
    await redis.config_set("slowlog-log-slower-than", 50_000)  # µs
    await redis.slowlog_reset()
    try:
        chunks = await store.retry(spec.id)
        slow = await redis.slowlog_get(10)
    finally:
        await redis.config_set("slowlog-log-slower-than", 10_000)
    assert len(chunks) == count // 100
    assert (await store.get(spec.id)).request_counts.pending == count
    assert slow == []  # one script for all of them held Redis 1.3 s


async def test_a_late_write_during_a_retry_never_makes_the_batch_final_twice(
    store: BatchStore, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An earlier run's call that finished late (its worker stalled past its claim) writes its
    item just as a retry has reset it: the batch stays as the retry leaves it, its end comes
    once, from the retry's run."""
    spec = await stored(store, 4, chunk_size=4)
    ended: list[FinalItemStatus] = ["succeeded", "succeeded", "succeeded", "failed"]
    await finish(store, spec, ended)
    assert await redis.xlen(keys.OUTBOX) == 1  # completed, announced once
    reset_pages = Retries._reset_pages

    async def then_a_late_write(self: Retries, *args: Any) -> int:
        reset = await reset_pages(self, *args)
        assert await store.record_many(spec, [(item(3), outcome("succeeded"))]) == ["gone"]
        return reset

    monkeypatch.setattr(Retries, "_reset_pages", then_a_late_write)
    chunks = await store.retry(spec.id)
    assert chunks == [0]  # item 3 runs again, in its chunk
    again = await store.get(spec.id)
    assert (again.status, again.request_counts.pending) == ("in_progress", 1)
    assert await redis.xlen(keys.OUTBOX) == 1  # no second end meanwhile
    await store.record_many(spec, [(item(3), outcome("succeeded"))])
    assert (await store.get(spec.id)).status == "completed"
    assert await redis.xlen(keys.OUTBOX) == 2  # the retry's end


async def test_a_retry_cut_off_midway_takes_no_late_write(
    store: BatchStore, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retries, "RESET_LEASE_MS", 1)  # a cut-off retry's hold lapses at once
    spec = await stored(store, 4, chunk_size=4)
    ended: list[FinalItemStatus] = ["succeeded", "succeeded", "failed", "failed"]
    await finish(store, spec, ended)
    end = Retries._end

    async def killed(self: Retries, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("the API process died before the retry's end")

    monkeypatch.setattr(Retries, "_end", killed)
    with pytest.raises(ConnectionError):
        await store.retry(spec.id)
    late = await store.record_many(spec, [(item(2), outcome("succeeded"))])
    assert late == ["gone"]
    assert await redis.xlen(keys.OUTBOX) == 1  # never final a second time
    monkeypatch.setattr(Retries, "_end", end)
    assert await store.retry(spec.id) == [0]  # retried again: both items run
    assert (await store.get(spec.id)).request_counts.pending == 2
