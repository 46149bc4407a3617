"""Batches through real worker processes, the real ChatOpenAI over HTTP, and a real Redis."""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from typing import Any

import pytest

from shared.settings import Settings
from tests.conftest import api_client
from tests.helpers import MockProvider, Proc, wait_for
from tests.integration.flows import (
    all_results,
    openai_settings,
    openai_worker,
    submit,
    wait_final,
)
from worker.llm import OFFLINE_PREFIX

pytestmark = pytest.mark.integration


async def test_offline_batch_runs_end_to_end(
    settings: Settings, workers: Callable[..., Proc]
) -> None:
    workers()
    prompts = [f"offline question {i}" for i in range(20)]
    async with api_client(settings) as client:
        batch = await submit(client, prompts=prompts, system="be brief", max_concurrency=4)
        assert batch["provider"] == "offline"
        done = await wait_final(client, batch["id"])
        items = await all_results(client, batch["id"])
    assert done["status"] == "completed"
    assert done["started_at"] is not None
    assert done["finished_at"] is not None
    assert done["request_counts"]["succeeded"] == 20
    assert [item["output"] for item in items] == [f"{OFFLINE_PREFIX}{p}" for p in prompts]
    assert done["usage"]["output_tokens"] == sum(i["usage"]["output_tokens"] for i in items)


async def test_300_prompts_at_random_latency_each_get_their_own_output_in_order(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)
    rng = random.Random(7)
    prompts = [f"question {i} [[latency={rng.randint(5, 200)}]]" for i in range(300)]
    async with api_client(openai_settings(redis_url, mock)) as client:
        batch = await submit(client, prompts=prompts, model="mock-1", max_concurrency=32)
        assert batch["provider"] == "openai"
        done = await wait_final(client, batch["id"])
        items = await all_results(client, batch["id"])

    assert done["status"] == "completed"
    assert done["request_counts"] == {
        "total": 300, "succeeded": 300, "failed": 0, "cancelled": 0, "expired": 0, "pending": 0,
    }  # fmt: skip
    assert [item["index"] for item in items] == list(range(300))
    assert [item["custom_id"] for item in items] == [str(i) for i in range(300)]
    assert [item["output"] for item in items] == [f"mock reply to: {p}" for p in prompts]
    for item in items:  # the mock counts words: 3 in each prompt, 6 in each reply
        assert item["usage"] == {"input_tokens": 3, "output_tokens": 6, "total_tokens": 9,
                                 "cached_tokens": 0, "reasoning_tokens": 0}  # fmt: skip
    for field in ("input_tokens", "output_tokens", "total_tokens"):
        assert done["usage"][field] == sum(item["usage"][field] for item in items)
    assert mock.stats()["calls"] == 300


async def test_one_prompts_400_fails_only_that_item(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)
    prompts = [f"fine {i}" for i in range(10)]
    prompts[4] = "too long for the model [[status=400]]"
    async with api_client(openai_settings(redis_url, mock)) as client:
        batch = await submit(client, prompts=prompts)
        done = await wait_final(client, batch["id"])
        items = await all_results(client, batch["id"])
    assert done["status"] == "completed"
    assert done["request_counts"]["failed"] == 1
    assert done["request_counts"]["succeeded"] == 9
    failed = items[4]
    assert failed["status"] == "failed"
    assert failed["output"] is None
    assert failed["error"]["type"] == "invalid_request"
    assert "refused this prompt with 400" in failed["error"]["message"]
    assert all(items[i]["output"] == f"mock reply to: {prompts[i]}" for i in range(10) if i != 4)
    assert mock.stats()["statuses"] == {"400": 1, "200": 9}  # a 400 is not retried


async def test_results_are_readable_while_the_batch_runs(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)
    gate = secrets.token_hex(4)
    prompts = [f"quick {i}" for i in range(5)] + [f"slow {i} [[gate={gate}]]" for i in range(3)]
    async with api_client(openai_settings(redis_url, mock)) as client:
        batch = await submit(client, prompts=prompts, max_concurrency=8)
        url = f"/v1/batches/{batch['id']}"

        async def quick_ones_done() -> Any:
            got = (await client.get(url)).json()
            return got if got["request_counts"]["succeeded"] == 5 else None

        running = await wait_for(quick_ones_done, what="the quick items")
        page = (await client.get(f"{url}/results")).json()
        assert running["status"] == "in_progress"
        assert running["request_counts"]["pending"] == 3
        assert [item["status"] for item in page["data"]] == ["succeeded"] * 5 + ["pending"] * 3
        assert page["data"][0]["output"] == "mock reply to: quick 0"

        mock.open_gate(gate)
        done = await wait_final(client, batch["id"])
    assert done["status"] == "completed"
    assert done["request_counts"]["succeeded"] == 8


async def test_provider_faults_are_retried_a_bounded_number_of_times(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock, PROMPTBATCH_MAX_RETRIES="2", PROMPTBATCH_REQUEST_TIMEOUT_S="1")
    prompts = [
        "fine",
        "limited once [[fail=429:1]]",
        "server error twice [[fail=500:2]]",
        "always unavailable [[status=503]]",
        "never answers [[hang]]",
    ]
    async with api_client(openai_settings(redis_url, mock)) as client:
        batch = await submit(client, prompts=prompts)
        done = await wait_final(client, batch["id"])
        items = await all_results(client, batch["id"])
    assert done["status"] == "completed"
    assert [item["status"] for item in items] == ["succeeded"] * 3 + ["failed"] * 2
    assert [item["output"] for item in items[:3]] == [f"mock reply to: {p}" for p in prompts[:3]]
    assert items[3]["error"]["type"] == "provider_error"
    assert items[4]["error"]["type"] == "timeout"
    statuses = mock.stats()["statuses"]
    assert statuses == {"200": 3, "429": 1, "500": 2, "503": 3}  # 2 retries, then it gives up
