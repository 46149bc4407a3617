"""The completion window with real worker processes: a batch whose window ends while it runs,
and one whose window ends while its chunks are still queued, both end `expired`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from shared.schemas import FINAL_BATCH_STATUSES
from shared.settings import Settings
from tests.conftest import api_client, make_settings
from tests.helpers import MockProvider, Proc, parse_sse, wait_for, wait_until
from tests.integration.flows import all_results, openai_settings, openai_worker, submit

pytestmark = pytest.mark.integration


async def _final(client: httpx.AsyncClient, batch_id: str, timeout_s: float = 60) -> Any:
    async def final() -> Any:
        batch = (await client.get(f"/v1/batches/{batch_id}")).json()
        return batch if batch["status"] in FINAL_BATCH_STATUSES else None

    return await wait_for(final, timeout_s, what=f"batch {batch_id} to finish")


def _expired(item: dict[str, Any]) -> bool:
    return (
        item["status"] == "expired"
        and item["error"]["type"] == "batch_expired"
        and item["output"] is None
    )


async def _last_event(client: httpx.AsyncClient, batch_id: str) -> tuple[str, Any]:
    async with client.stream("GET", f"/v1/batches/{batch_id}/events") as response:
        events = parse_sse((await response.aread()).decode())
    kind, _, data = events[-1]
    return kind, data


async def test_a_batch_whose_window_ends_while_it_runs_keeps_what_finished_and_expires_the_rest(
    redis_url: str, workers: Callable[..., Proc]
) -> None:
    workers(PROMPTBATCH_OFFLINE_LATENCY_MS="200")
    prompts = [f"q{i}" for i in range(60)]  # 12 s of calls, one at a time
    async with api_client(make_settings(redis_url, chunk_size=10)) as client:
        batch = await submit(client, prompts=prompts, max_concurrency=1, completion_window="2s")
        assert batch["completion_window"] == "2s"
        done = await _final(client, batch["id"])
        items = await all_results(client, batch["id"])
        kind, last = await _last_event(client, batch["id"])
    assert done["status"] == "expired"
    counts = done["request_counts"]
    assert counts["succeeded"] > 0
    assert counts["expired"] > 0
    assert counts["pending"] == 0
    assert counts["succeeded"] + counts["expired"] == 60
    assert done["finished_at"] is not None
    assert done["expired_at"] == done["finished_at"]
    succeeded = [item for item in items if item["status"] == "succeeded"]
    assert len(succeeded) == counts["succeeded"]
    assert all(
        item["output"] == f"[offline] You asked: {prompts[item['index']]}" for item in succeeded
    )
    assert all(_expired(item) for item in items if item["status"] != "succeeded")
    assert sum(_expired(item) for item in items) == counts["expired"]
    assert (kind, last["status"], last["request_counts"]) == ("batch", "expired", counts)


async def test_a_batch_whose_window_ends_on_the_queue_expires_without_a_call(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    settings: Settings = openai_settings(redis_url, mock)
    async with api_client(settings) as client:  # no worker yet: the batch stays queued
        batch = await submit(client, prompts=["a", "b", "c"], completion_window=1)
        deadline = datetime.fromisoformat(batch["deadline_at"])
        wait_until(lambda: datetime.now(UTC) > deadline, what="the completion window to end")
        assert (await client.get(f"/v1/batches/{batch['id']}")).json()["status"] == "queued"
        openai_worker(workers, mock)
        done = await _final(client, batch["id"])
        items = await all_results(client, batch["id"])
    assert done["status"] == "expired"
    assert done["request_counts"] == {
        "total": 3, "succeeded": 0, "failed": 0, "cancelled": 0, "expired": 3, "pending": 0,
    }  # fmt: skip
    assert all(_expired(item) for item in items)
    assert mock.stats()["calls"] == 0
    assert mock.requests() == []
