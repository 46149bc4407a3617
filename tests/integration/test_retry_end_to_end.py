"""Retrying a batch's failed items in place, through real worker processes, the real ChatOpenAI
over HTTP against the mock, and a real Redis: the failed items run again, the others are never
sent again, and the batch ends anew with every count exact."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis

from shared import keys
from tests.conftest import api_client, make_settings
from tests.helpers import MockProvider, Proc
from tests.integration.flows import all_results, openai_worker, submit, wait_final

pytestmark = pytest.mark.integration


def sent_prompts(mock: MockProvider) -> Counter[str]:
    """How many times the mock was sent each prompt (the last user message's text)."""
    sent: Counter[str] = Counter()
    for body in mock.requests():
        user = [m for m in body["messages"] if m["role"] == "user"]
        sent[user[-1]["content"]] += 1
    return sent


def status_events(redis_url: str, batch_id: str) -> list[str]:
    with redis.Redis.from_url(redis_url) as client:
        entries: list[Any] = client.xrange(keys.events(batch_id))
    return [fields[b"s"].decode() for _, fields in entries if fields[b"k"] == b"status"]


async def test_items_that_fail_once_are_retried_in_place_and_the_rest_never_sent_again(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)
    openai_worker(workers, mock)  # the retried chunks may go to either worker
    prompts = [f"question {i}" for i in range(12)]
    failing = {2, 5, 9}  # in chunks 0, 1 and 2 (of 4 items each); chunk 1 also has 4, 6, 7
    for i in failing:
        prompts[i] = f"question {i} refused once [[fail=400:1]]"
    settings = make_settings(
        redis_url, provider="openai", openai_base_url=f"{mock.url}/v1", chunk_size=4
    )
    async with api_client(settings) as client:
        batch = await submit(client, prompts=prompts, model="mock-1", max_concurrency=4)
        first = await wait_final(client, batch["id"])
        first_items = await all_results(client, batch["id"])
        assert first["status"] == "completed"
        assert first["request_counts"] == {
            "total": 12, "succeeded": 9, "failed": 3, "cancelled": 0, "expired": 0, "pending": 0,
        }  # fmt: skip
        assert {i for i, item in enumerate(first_items) if item["status"] == "failed"} == failing
        assert sent_prompts(mock) == Counter(prompts)  # each sent once so far

        response = await client.post(f"/v1/batches/{batch['id']}/retry")
        assert response.status_code == 202, response.text
        retried = response.json()
        assert retried["status"] == "in_progress"
        assert retried["request_counts"]["pending"] == 3
        assert retried["request_counts"]["succeeded"] == 9
        done = await wait_final(client, batch["id"])
        items = await all_results(client, batch["id"])

    assert done["status"] == "completed"
    assert done["request_counts"] == {
        "total": 12, "succeeded": 12, "failed": 0, "cancelled": 0, "expired": 0, "pending": 0,
    }  # fmt: skip
    assert [item["status"] for item in items] == ["succeeded"] * 12
    assert [item["output"] for item in items] == [f"mock reply to: {p}" for p in prompts]
    # The items that had succeeded are as they were: never sent again, never rewritten.
    for i in set(range(12)) - failing:
        assert items[i] == first_items[i]
    sent = sent_prompts(mock)
    assert {p: n for p, n in sent.items() if n != 1} == {prompts[i]: 2 for i in failing}
    assert sum(sent.values()) == 15
    # Summed usage covers every call that answered: nine, then three.
    assert done["usage"]["output_tokens"] == sum(i["usage"]["output_tokens"] for i in items)
    assert done["started_at"] == first["started_at"]
    assert done["finished_at"] > first["finished_at"]
    assert done["expires_at"] is not None
    # The batch went back to running, and ended again, with an event each time.
    assert status_events(redis_url, batch["id"])[-3:] == ["completed", "in_progress", "completed"]
