"""A worker's metrics flush against a real Redis: cut off by the worker stopping, nothing is
counted twice or lost."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from shared import keys
from shared.metrics import WorkerMetrics


# Cut off after 0..39 turns of the event loop: every point of the round trip, from before the
# commands are sent to after the reply arrived.
@pytest.mark.parametrize("yields", range(40))
async def test_a_flush_cut_off_by_shutdown_counts_once(redis: Redis, yields: int) -> None:
    metrics = WorkerMetrics()
    for _ in range(3):
        metrics.count_response(200)
    beat = asyncio.create_task(metrics.flush(redis))  # the heartbeat's flush...
    for _ in range(yields):  # ...at some point of its round trip...
        await asyncio.sleep(0)
    beat.cancel()  # ...is cancelled by shutdown, which then flushes what is left
    await asyncio.gather(beat, return_exceptions=True)
    await metrics.flush(redis)
    assert await redis.hget(keys.STATS, "provider:responses:200") == b"3"  # type: ignore[misc]
