"""The Redis data model against a real server: results are written once, counts stay exact."""

from __future__ import annotations

import pytest

from shared import keys
from shared.errors import InvalidRequest
from shared.results import ItemOutcome
from shared.schemas import ErrorInfo, Usage
from shared.store import BatchStore
from tests.store.conftest import item, stored


def _ok(text: str, tokens: int = 1) -> ItemOutcome:
    return ItemOutcome(status="succeeded", output=text, usage=Usage.of(tokens, tokens))


async def test_a_repeated_write_changes_neither_output_nor_counts(store: BatchStore) -> None:
    batch = await stored(store, 3)
    assert await store.record(batch, item(1), _ok("first", 2)) == "written"
    assert await store.record(batch, item(1), _ok("second", 5)) == "duplicate"
    got = await store.get(batch.id)
    assert got.request_counts.succeeded == 1
    assert got.usage.input_tokens == 2
    page = await store.results_page(batch.id, after=None, limit=10)
    assert page.data[1].output == "first"


async def test_the_last_item_finishes_the_batch_exactly_once(store: BatchStore) -> None:
    batch = await stored(store, 3)
    await store.mark_started(batch.id)
    outcomes = [await store.record(batch, item(i), _ok(str(i))) for i in (2, 0, 1)]
    assert outcomes == ["written", "written", "finished"]
    # A write once the batch is final changes nothing (a late one is refused whole: "gone").
    assert await store.record(batch, item(1), _ok("again")) == "gone"
    done = await store.get(batch.id)
    assert done.status == "completed"
    assert done.finished_at is not None
    assert done.started_at is not None
    assert done.request_counts.pending == 0
    assert done.expires_at is not None
    assert (done.expires_at - done.finished_at).total_seconds() == 7 * 24 * 3600
    for key in keys.batch_keys(batch.id):  # every key of the batch expires with it
        ttl = await store.redis.pttl(key)
        assert ttl == -2 or 0 < ttl <= 7 * 24 * 3600 * 1000, key


async def test_pending_items_skips_finished_ones(store: BatchStore) -> None:
    batch = await stored(store, 5)
    await store.record(batch, item(0), _ok("x"))
    await store.record(
        batch, item(3), ItemOutcome(status="failed", error=ErrorInfo(type="t", message="m"))
    )
    assert await store.pending_items(batch.id, 0, 5) == [item(1), item(2), item(4)]


async def test_a_write_for_a_removed_batch_leaves_nothing(store: BatchStore) -> None:
    batch = await stored(store, 2)
    await store.remove(batch.id)
    assert await store.record(batch, item(0), _ok("late")) == "gone"
    assert await store.redis.exists(*keys.batch_keys(batch.id)) == 0


async def test_a_batch_failed_as_a_whole_takes_no_more_results(store: BatchStore) -> None:
    batch = await stored(store, 2)
    assert await store.fail(batch.id, ErrorInfo(type="x", message="why"))
    assert await store.record(batch, item(0), _ok("late")) == "gone"
    failed = await store.get(batch.id)
    assert failed.status == "failed"
    assert failed.error == ErrorInfo(type="x", message="why")


async def test_listing_is_newest_first_with_a_cursor(store: BatchStore) -> None:
    ids = [(await stored(store, 1)).id for _ in range(5)]
    first = await store.list_batches(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2]
    assert first.has_more
    second = await store.list_batches(limit=2, after=first.next_after)
    third = await store.list_batches(limit=2, after=second.next_after)
    assert [b.id for b in second.data + third.data] == ids[::-1][2:]
    assert not third.has_more
    assert third.next_after is None
    with pytest.raises(InvalidRequest):
        await store.list_batches(limit=2, after="batch_unknown")


async def test_listing_skips_and_forgets_batches_past_their_retention(store: BatchStore) -> None:
    ids = [(await stored(store, 1)).id for _ in range(5)]
    for expired in (ids[1], ids[3], ids[4]):  # as Redis leaves a batch whose keys expired
        await store.redis.delete(*keys.batch_keys(expired))
    page = await store.list_batches(limit=2)
    assert [b.id for b in page.data] == [ids[2], ids[0]]
    assert not page.has_more
    index = await store.redis.zrange(keys.batch_index(keys.PUBLIC_OWNER), 0, -1)
    assert [i.decode() for i in index] == [ids[0], ids[2]]


async def test_chunks_count_their_final_items_for_the_reconciler(store: BatchStore) -> None:
    batch = await stored(store, 5, chunk_size=2)
    assert batch.chunks == 3
    assert await store.active_batches() == [batch.id]
    await store.record(batch, item(0), _ok("a"))
    await store.record(batch, item(1), _ok("b"))
    await store.record(batch, item(4), _ok("c"))
    await store.record(batch, item(4), _ok("again"))
    assert await store.unfinished_chunks(batch.id) == [1]
    await store.record(batch, item(2), _ok("d"))
    await store.record(batch, item(3), _ok("e"))
    assert await store.unfinished_chunks(batch.id) is None  # final: dropped from the active set
    assert await store.active_batches() == []


async def test_fail_pending_fails_only_the_chunks_unfinished_items(store: BatchStore) -> None:
    batch = await stored(store, 6, chunk_size=3)
    await store.record(batch, item(4), _ok("kept"))
    lost = ErrorInfo(type="worker_lost", message="gone")
    assert await store.fail_pending(batch, 1, lost) == 2
    assert await store.fail_pending(batch, 1, lost) == 0
    page = await store.results_page(batch.id, after=None, limit=10)
    assert [item.status for item in page.data] == ["pending"] * 3 + [
        "failed",
        "succeeded",
        "failed",
    ]
    assert page.data[3].error == lost
    assert (await store.get(batch.id)).request_counts.failed == 2


async def test_attempts_count_runs_that_never_ended(store: BatchStore) -> None:
    batch = await stored(store, 4, chunk_size=2)
    assert await store.begin_attempt(batch.id, 1, "run-a") == 1
    await store.end_attempt(batch.id, 1, "run-a")
    await store.end_attempt(batch.id, 1, "run-a")  # a repeat (Redis did not answer) is harmless
    assert await store.begin_attempt(batch.id, 1, "run-b") == 1
    assert await store.begin_attempt(batch.id, 1, "run-c") == 2  # run-b never ended
    assert await store.begin_attempt(batch.id, 0, "run-d") == 1
    await store.end_attempt(batch.id, 1, "run-c")
    assert await store.begin_attempt(batch.id, 1, "run-e") == 2  # run-b still counts


async def _sent_bytes(store: BatchStore) -> int:
    return int((await store.redis.info("stats"))["total_net_output_bytes"])


async def test_a_results_page_reads_custom_ids_and_results_never_the_prompts(
    store: BatchStore,
) -> None:
    prompts = [(f"task-{i}", "x" * 10_000) for i in range(1000)]  # 10 MB of prompts
    spec = await stored(store, 1000, items=prompts)
    await store.record(spec, item(3), ItemOutcome(status="succeeded", output="done"))
    before = await _sent_bytes(store)
    page = await store.results_page(spec.id, after=None, limit=1000)
    read = await _sent_bytes(store) - before
    assert [i.custom_id for i in page.data] == [f"task-{i}" for i in range(1000)]
    assert page.data[3].output == "done"
    assert read < 100_000  # ids and results; the prompts alone are 10 MB
    # A batch stored before custom ids were kept apart reads them from its inputs.
    await store.redis.delete(keys.custom_ids(spec.id))
    legacy = await store.results_page(spec.id, after=None, limit=5)
    assert [i.custom_id for i in legacy.data] == [f"task-{i}" for i in range(5)]
