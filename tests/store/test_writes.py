"""The worker's grouped result writes against a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.batches import BatchSpec
from shared.results import ItemOutcome, PendingItem, RecordOutcome
from shared.store import BatchStore
from tests.helpers import free_port
from tests.store.conftest import item, stored
from worker.context import Writes


class CountingStore(BatchStore):
    """The real store, counting its write calls and the results in each."""

    groups: list[int]

    async def record_many(
        self, spec: BatchSpec, done: Sequence[tuple[PendingItem, ItemOutcome]]
    ) -> list[RecordOutcome]:
        self.groups.append(len(done))
        return await super().record_many(spec, done)


def _ok(text: str) -> ItemOutcome:
    return ItemOutcome(status="succeeded", output=text)


@pytest.fixture
async def counting(store: BatchStore) -> CountingStore:
    counting = CountingStore(store.redis)
    counting.groups = []
    return counting


async def test_results_that_finish_together_are_written_in_one_call(
    counting: CountingStore,
) -> None:
    spec = await stored(counting, 300, chunk_size=300)
    writes = Writes(counting)
    outcomes = await asyncio.gather(
        *(writes.record(spec, item(i), _ok(str(i))) for i in range(300))
    )
    assert outcomes.count("written") == 299
    assert outcomes.count("finished") == 1  # the batch's last result, exactly once
    assert sum(counting.groups) == 300
    assert len(counting.groups) < 300  # grouped, not one call each
    assert max(counting.groups) <= Writes.MOST
    batch = await counting.get(spec.id)
    assert batch.status == "completed"
    assert batch.request_counts.succeeded == 300
    page = await counting.results_page(spec.id, after=None, limit=1000)
    assert [r.output for r in page.data] == [str(i) for i in range(300)]


async def test_a_lone_result_is_written_at_once(counting: CountingStore) -> None:
    spec = await stored(counting, 3)
    writes = Writes(counting)
    assert await writes.record(spec, item(0), _ok("a")) == "written"
    assert counting.groups == [1]
    assert await writes.record(spec, item(0), _ok("again")) == "duplicate"


async def test_a_write_whose_run_is_cancelled_still_lands(counting: CountingStore) -> None:
    spec = await stored(counting, 3)
    writes = Writes(counting)
    run = asyncio.create_task(writes.record(spec, item(1), _ok("kept")))
    await asyncio.sleep(0)  # the write is queued
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await writes.drain()
    page = await counting.results_page(spec.id, after=None, limit=10)
    assert page.data[1].output == "kept"


async def test_each_waiting_run_sees_a_failed_write(store: BatchStore) -> None:
    spec = await stored(store, 4)
    gone = Redis(port=free_port(), socket_connect_timeout=0.5)  # nothing listens there
    writes = Writes(BatchStore(gone))
    results = await asyncio.gather(
        *(writes.record(spec, item(i), _ok("x")) for i in range(4)), return_exceptions=True
    )
    assert all(isinstance(r, RedisConnectionError) for r in results)
    await writes.drain()
    await gone.aclose()


async def test_a_writer_cancelled_before_it_ran_strands_nothing(counting: CountingStore) -> None:
    spec = await stored(counting, 3)
    writes = Writes(counting)
    first = asyncio.create_task(writes.record(spec, item(0), _ok("a")))
    await asyncio.sleep(0)  # queued; its writer is made but has not run
    writes._writers[spec.id].cancel()
    await asyncio.sleep(0)
    second = await asyncio.wait_for(writes.record(spec, item(1), _ok("b")), timeout=10)
    assert second == "written"
    assert await asyncio.wait_for(first, timeout=10) == "written"  # a new writer took it too
    await asyncio.wait_for(writes.drain(), timeout=10)
