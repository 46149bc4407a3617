"""The batch lifecycle with real workers: cancel, delete, idempotency, events, metrics, ready."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from shared.settings import Settings
from tests.conftest import api_client
from tests.helpers import MockProvider, Proc, parse_sse, wait_for, wait_until
from tests.integration.flows import all_results, openai_settings, openai_worker, submit, wait_final
from tests.servers import start_api

pytestmark = pytest.mark.integration


async def _status(client: httpx.AsyncClient, batch_id: str) -> dict[str, Any]:
    batch: dict[str, Any] = (await client.get(f"/v1/batches/{batch_id}")).json()
    return batch


def _keys_of(redis_url: str, batch_id: str) -> list[bytes]:
    with redis.Redis.from_url(redis_url) as r:
        return list(r.scan_iter(match=f"*{batch_id}*"))


async def test_cancel_stops_new_calls_keeps_finished_items_and_cancels_the_rest(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    worker = openai_worker(workers, mock)
    prompts = [f"item {i} [[latency=100]]" for i in range(300)]
    async with api_client(openai_settings(redis_url, mock)) as client:
        batch = await submit(client, prompts=prompts, max_concurrency=2)

        async def some_done() -> bool:
            return int((await _status(client, batch["id"]))["request_counts"]["succeeded"]) >= 5

        await wait_for(some_done, what="a few items")
        response = await client.post(f"/v1/batches/{batch['id']}/cancel")
        assert response.status_code == 202
        assert response.json()["status"] in ("cancelling", "cancelled")
        done = await wait_final(client, batch["id"], timeout_s=10)
        items = await all_results(client, batch["id"])
        again = await client.post(f"/v1/batches/{batch['id']}/cancel")
    assert done["status"] == "cancelled"
    counts = done["request_counts"]
    assert counts["cancelled"] >= 270  # >= 90%
    assert counts["succeeded"] + counts["cancelled"] == 300
    succeeded = [item for item in items if item["status"] == "succeeded"]
    assert all(item["output"] == f"mock reply to: {prompts[item['index']]}" for item in succeeded)
    calls = mock.stats()["calls"]
    assert calls == counts["succeeded"]  # every call that started finished and was kept
    assert worker.stop(signal.SIGTERM) == 0
    assert mock.stats()["calls"] == calls  # and none started after the batch was cancelled
    assert again.status_code == 409
    assert "already cancelled" in again.json()["error"]["message"]


async def test_cancelling_a_queued_batch_cancels_every_item_at_once(settings: Settings) -> None:
    async with api_client(settings) as client:  # no worker runs: the batch stays queued
        batch = await submit(client, prompts=["a", "b", "c"])
        response = await client.post(f"/v1/batches/{batch['id']}/cancel")
        missing = await client.post("/v1/batches/batch_nope/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"
    assert response.json()["request_counts"]["cancelled"] == 3
    assert response.json()["expires_at"] is not None
    assert missing.status_code == 404
    with redis.Redis.from_url(settings.require_redis_url()) as r:
        assert r.zcard("pb:queue") == 0  # its jobs left the queue


async def test_delete_removes_every_key_of_a_finished_and_of_a_running_batch(
    settings: Settings, workers: Callable[..., Proc]
) -> None:
    workers(PROMPTBATCH_OFFLINE_LATENCY_MS="200")
    redis_url = settings.require_redis_url()
    async with api_client(settings) as client:
        finished = await submit(client, prompts=["one"])
        await wait_final(client, finished["id"])
        running = await submit(client, prompts=[f"p{i}" for i in range(40)], max_concurrency=2)

        async def started() -> bool:
            return bool((await _status(client, running["id"]))["status"] == "in_progress")

        await wait_for(started, what="the second batch to start")
        for batch in (finished, running):
            assert _keys_of(redis_url, batch["id"])
            response = await client.delete(f"/v1/batches/{batch['id']}")
            assert response.status_code == 204
            assert (await client.get(f"/v1/batches/{batch['id']}")).status_code == 404
            listed = (await client.get("/v1/batches")).json()["data"]
            assert batch["id"] not in [b["id"] for b in listed]
        assert _keys_of(redis_url, finished["id"]) == []
        wait_until(  # the running batch's worker lets go of it within a watch period
            lambda: _keys_of(redis_url, running["id"]) == [],
            timeout_s=10,
            what="every key of the deleted running batch to be gone",
        )
        assert (await client.delete(f"/v1/batches/{running['id']}")).status_code == 404


async def test_an_idempotency_key_makes_one_batch_and_one_call_per_prompt(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock)
    body = {"prompts": ["one", "two", "three"]}
    headers = {"Idempotency-Key": "order-42"}
    async with api_client(openai_settings(redis_url, mock)) as client:
        first = await client.post("/v1/batches", json=body, headers=headers)
        second = await client.post("/v1/batches", json=body, headers=headers)
        other = await client.post("/v1/batches", json={"prompts": ["x"]}, headers=headers)
        await wait_final(client, first.json()["id"])
        third = await client.post("/v1/batches", json=body, headers=headers)
        listed = (await client.get("/v1/batches")).json()["data"]
    assert (first.status_code, second.status_code, third.status_code) == (202, 200, 200)
    assert first.json()["id"] == second.json()["id"] == third.json()["id"]
    assert second.headers["Location"] == f"/v1/batches/{first.json()['id']}"
    assert third.json()["status"] == "completed"
    assert other.status_code == 409
    assert other.json()["error"]["param"] == "Idempotency-Key"
    assert [b["id"] for b in listed] == [first.json()["id"]]
    assert mock.stats()["calls"] == 3


async def test_an_event_stream_shows_progress_and_ends_with_the_final_state(
    settings: Settings, workers: Callable[..., Proc]
) -> None:
    workers(PROMPTBATCH_OFFLINE_LATENCY_MS="50")
    async with api_client(settings) as client:
        batch = await submit(client, prompts=[f"q{i}" for i in range(10)], max_concurrency=2)
        async with client.stream("GET", f"/v1/batches/{batch['id']}/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = parse_sse((await response.aread()).decode())
        resumed = await client.get(
            f"/v1/batches/{batch['id']}/events", headers={"Last-Event-ID": events[1][1]}
        )
        missing = await client.get("/v1/batches/batch_nope/events")
    kinds = [kind for kind, _, _ in events]
    assert kinds[0] == "batch"
    assert events[0][2]["status"] in ("queued", "in_progress")
    assert kinds[-1] == "batch"
    assert events[-1][2]["status"] == "completed"
    assert events[-1][2]["request_counts"]["succeeded"] == 10
    items = [item for kind, _, data in events if kind == "items" for item in data["data"]]
    assert sorted(item["index"] for item in items) == list(range(10))
    assert {item["status"] for item in items} == {"succeeded"}
    assert {item["custom_id"] for item in items} == {str(i) for i in range(10)}
    succeeded = [data["request_counts"]["succeeded"] for kind, _, data in events if kind == "batch"]
    assert succeeded == sorted(succeeded)  # progress only moves forward
    assert len(succeeded) > 2  # progress came in steps, not only at the end
    # Resuming after the second event: the current state, then only what came after it.
    seen = {i["index"] for kind, _, d in events[:2] if kind == "items" for i in d["data"]}
    replayed = parse_sse(resumed.text)
    assert replayed[0][2]["status"] == "completed"
    assert replayed[-1][2]["status"] == "completed"
    again = [i["index"] for kind, _, d in replayed if kind == "items" for i in d["data"]]
    assert sorted(again) == sorted(set(range(10)) - seen)
    assert missing.status_code == 404


async def test_metrics_parse_and_count_a_finished_batch(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    worker = openai_worker(workers, mock)
    prompts = ["one", "two", "three", "refused [[status=400]]"]
    async with api_client(openai_settings(redis_url, mock)) as client:
        batch = await submit(client, prompts=prompts)
        done = await wait_final(client, batch["id"])
        worker.stop(signal.SIGTERM)  # a worker flushes what it observed when it stops
        text = (await client.get("/metrics")).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("promptbatch_batches_created_total", ())] == 1
    assert samples[("promptbatch_batches_finished_total", (("status", "completed"),))] == 1
    assert samples[("promptbatch_items_total", (("status", "succeeded"),))] == 3
    assert samples[("promptbatch_items_total", (("status", "failed"),))] == 1
    usage = done["usage"]
    assert samples[("promptbatch_tokens_total", (("kind", "input"),))] == usage["input_tokens"]
    assert samples[("promptbatch_tokens_total", (("kind", "output"),))] == usage["output_tokens"]
    assert samples[("promptbatch_provider_responses_total", (("code", "200"),))] == 3
    assert samples[("promptbatch_provider_responses_total", (("code", "400"),))] == 1
    assert samples[("promptbatch_provider_latency_seconds_count", ())] == 4
    assert samples[("promptbatch_batches", (("status", "in_progress"),))] == 0
    assert samples[("promptbatch_workers_alive", ())] == 0


async def test_readiness_drops_within_seconds_of_a_worker_kill_and_returns_with_a_new_one(
    settings: Settings, workers: Callable[..., Proc]
) -> None:
    worker = workers()
    async with api_client(settings) as client:
        assert (await client.get("/readyz")).status_code == 200
        worker.popen.send_signal(signal.SIGKILL)
        worker.popen.wait()

        async def not_ready() -> httpx.Response | None:
            response = await client.get("/readyz")
            return response if response.status_code == 503 else None

        down = await wait_for(not_ready, timeout_s=10, what="/readyz to answer 503")
        assert down is not None
        assert "worker" in down.json()["error"]["message"]
        workers()
        assert (await client.get("/readyz")).status_code == 200


async def test_many_watchers_of_one_batch_cost_redis_one_reader(
    settings: Settings, tmp_path: Path
) -> None:
    api = start_api(settings.require_redis_url(), tmp_path / "api.log")
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            batch = await submit(client, prompts=["a", "b"])  # no worker: it stays queued
            url = f"/v1/batches/{batch['id']}/events"
            async with contextlib.AsyncExitStack() as streams:
                watchers = [
                    await streams.enter_async_context(client.stream("GET", url)) for _ in range(20)
                ]
                lines = [response.aiter_lines() for response in watchers]
                for stream in lines:  # each has its current state, and waits for more
                    assert (await anext(stream)).startswith("id: ")
                with redis.Redis.from_url(settings.require_redis_url()) as r:
                    blocked = wait_until(
                        lambda: r.info("clients")["blocked_clients"], what="a blocked XREAD"
                    )
                    assert blocked == 1  # one XREAD for all twenty
                cancel = await client.post(f"/v1/batches/{batch['id']}/cancel")
                assert cancel.json()["status"] == "cancelled"
                for stream in lines:  # every stream ends with the final state
                    tail = [line async for line in stream]
                    assert '"status":"cancelled"' in "".join(tail)
    finally:
        api.proc.stop()
