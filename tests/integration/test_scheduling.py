"""Sharing the fleet, with real workers, the real ChatOpenAI and the mock provider over HTTP:
a small batch never waits behind a big one, and every job slot of every worker can be busy."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.schemas import FINAL_BATCH_STATUSES
from tests.conftest import api_client, make_settings
from tests.helpers import MockProvider, Proc, wait_for
from tests.integration.flows import openai_settings, openai_worker, submit, wait_final

pytestmark = pytest.mark.integration

KEY_BIG, KEY_SMALL = "key-big-0123456789", "key-small-0123456789"


async def _done(client: httpx.AsyncClient, batch_id: str, key: str) -> int:
    batch = (await client.get(f"/v1/batches/{batch_id}", headers=_bearer(key))).json()
    counts = batch["request_counts"]
    return int(counts["total"] - counts["pending"])


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _time_to_completed(client: httpx.AsyncClient, prompts: list[str]) -> float:
    began = time.monotonic()
    response = await client.post(
        "/v1/batches", json={"prompts": prompts}, headers=_bearer(KEY_SMALL)
    )
    assert response.status_code == 202, response.text
    batch_id = response.json()["id"]

    async def completed() -> bool:
        batch = (await client.get(f"/v1/batches/{batch_id}", headers=_bearer(KEY_SMALL))).json()
        assert batch["status"] not in FINAL_BATCH_STATUSES - {"completed"}
        return bool(batch["status"] == "completed")

    await wait_for(completed, timeout_s=60, what="the small batch")
    return time.monotonic() - began


async def test_a_small_batch_completes_at_once_beside_a_big_one_that_keeps_its_pace(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)  # one worker, default settings (8 job slots)
    settings = make_settings(
        redis_url,
        provider="openai",
        openai_base_url=f"{mock.url}/v1",
        api_keys=f"{KEY_BIG},{KEY_SMALL}",
    )
    big_prompts = [f"big {i} [[latency=200]]" for i in range(4000)]
    small_prompts = [f"small {i} [[latency=200]]" for i in range(8)]
    async with api_client(settings) as client:
        response = await client.post(
            "/v1/batches",
            json={"prompts": big_prompts, "max_concurrency": 2},
            headers=_bearer(KEY_BIG),
        )
        assert response.status_code == 202, response.text
        big = response.json()["id"]

        async def running() -> bool:
            return await _done(client, big, KEY_BIG) >= 4

        await wait_for(running, what="the big batch to run")
        # Another key's small batches, one after another for a few seconds; the big batch's
        # pace is measured over the same seconds (2 calls per 0.2 s).
        began, done_before = time.monotonic(), await _done(client, big, KEY_BIG)
        times: list[float] = []
        while time.monotonic() - began < 5:
            times.append(await _time_to_completed(client, small_prompts))
        pace = (await _done(client, big, KEY_BIG) - done_before) / (time.monotonic() - began)
        await client.post(f"/v1/batches/{big}/cancel", headers=_bearer(KEY_BIG))
    assert len(times) >= 2
    assert max(times) < 2, f"small batches took {[round(t, 2) for t in times]} s for 0.2 s of work"
    assert pace >= 0.9 * 2 / 0.2, f"the big batch ran {pace:.1f} items/s of its 10"


async def test_six_workers_of_twenty_slots_run_118_batches_at_once(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    for _ in range(6):
        openai_worker(workers, mock, PROMPTBATCH_WORKER_MAX_JOBS="20")
    prompts = [f"call {i} [[latency=1000]]" for i in range(3)]
    async with api_client(openai_settings(redis_url, mock)) as client:
        mock.reset()
        batches = await asyncio.gather(
            *(submit(client, prompts=prompts, max_concurrency=1) for _ in range(118))
        )
        finals = [await wait_final(client, batch["id"], timeout_s=120) for batch in batches]
    assert [final["status"] for final in finals] == ["completed"] * 118
    in_flight = int(str(mock.stats()["max_in_flight"]))
    assert in_flight >= 112, f"at most {in_flight} calls in flight of 118 batches on 120 slots"


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_show_runnable_batches_chunk_jobs_and_job_slots(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock, PROMPTBATCH_WORKER_MAX_JOBS="2")
    gate = secrets.token_hex(4)
    async with api_client(openai_settings(redis_url, mock)) as client:
        batches = [await submit(client, prompts=[f"held {i} [[gate={gate}]]"]) for i in range(3)]

        async def two_running() -> Samples:
            samples = _samples((await client.get("/metrics")).text)
            busy = samples[("promptbatch_job_slots", (("state", "busy"),))]
            return samples if busy == 2 else {}

        samples = await wait_for(two_running, what="both job slots to be busy")
        assert samples[("promptbatch_job_slots", (("state", "alive"),))] == 2
        assert samples[("promptbatch_chunk_jobs", (("state", "running"),))] == 2
        assert samples[("promptbatch_chunk_jobs", (("state", "queued"),))] == 1
        assert samples[("promptbatch_runnable_batches", ())] == 3
        mock.open_gate(gate)
        for batch in batches:
            assert (await wait_final(client, batch["id"]))["status"] == "completed"

        async def idle() -> bool:
            samples = _samples((await client.get("/metrics")).text)
            return samples[("promptbatch_job_slots", (("state", "busy"),))] == 0

        await wait_for(idle, what="the job slots to be free again")
        samples = _samples((await client.get("/metrics")).text)
    assert samples[("promptbatch_chunk_jobs", (("state", "queued"),))] == 0
    assert samples[("promptbatch_runnable_batches", ())] == 0
