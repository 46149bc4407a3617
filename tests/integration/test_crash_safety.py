"""Faults with real processes: workers killed and stopped, provider faults, Redis going away.

Every batch here runs on real arq worker processes and the real ChatOpenAI against the mock
provider over HTTP; each result is checked against its own prompt.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from shared import jobs, keys
from shared.store import BatchStore
from tests.conftest import api_client, make_settings
from tests.helpers import MockProvider, Proc, RedisServer, start_worker, wait_for, wait_until
from tests.integration.flows import all_results, openai_settings, openai_worker, submit, wait_final
from tests.store.conftest import make_plan

pytestmark = pytest.mark.integration

#: A worker whose chunks another takes over within seconds of its death or freeze.
FAST_LEASE = {
    "PROMPTBATCH_LEASE_S": "2",
    "PROMPTBATCH_WORKER_HEARTBEAT_S": "0.5",
    "PROMPTBATCH_WORKER_REDIS_RETRY_S": "0.5",
    "PROMPTBATCH_WORKER_ALIVE_S": "1.5",
}


async def _done(client: httpx.AsyncClient, batch_id: str) -> int:
    counts = (await client.get(f"/v1/batches/{batch_id}")).json()["request_counts"]
    return int(counts["total"] - counts["pending"])


def _assert_each_output_is_its_own(items: list[dict[str, Any]], prompts: list[str]) -> None:
    assert [item["status"] for item in items] == ["succeeded"] * len(prompts)
    assert [item["output"] for item in items] == [f"mock reply to: {p}" for p in prompts]


def _kill(proc: Proc) -> None:
    proc.popen.send_signal(signal.SIGKILL)
    proc.popen.wait()


async def test_a_killed_worker_is_resumed_by_another_with_nothing_lost_or_doubled(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    concurrency = 8
    first = openai_worker(workers, mock)  # the default lease: a killed worker's chunks wait 30 s
    prompts = [f"item {i} [[latency=40]]" for i in range(600)]
    async with api_client(openai_settings(redis_url, mock)) as client:
        batch = await submit(client, prompts=prompts, max_concurrency=concurrency)
        await wait_for(lambda: _at_least(client, batch["id"], 240), what="40% of the batch")
        _kill(first)
        done_at_kill = await _done(client, batch["id"])
        assert done_at_kill < 600
        openai_worker(workers, mock)
        await wait_for(
            lambda: _at_least(client, batch["id"], done_at_kill + 1),
            timeout_s=60,
            what="another worker to resume the batch within 60 s",
        )
        done = await wait_final(client, batch["id"])
        items = await all_results(client, batch["id"])
    assert done["status"] == "completed"
    _assert_each_output_is_its_own(items, prompts)
    resent = int(str(mock.stats()["calls"])) - len(prompts)
    # Only what the killed worker had not written: its calls in flight, and replies that had
    # arrived but were still on their way to Redis (a call gives its slot back before its
    # result's grouped write returns, so there can be up to as many of those again).
    assert 0 <= resent <= 2 * concurrency


async def test_sigterm_hands_the_chunks_back_at_once_and_redoes_nothing_finished(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    concurrency = 8
    first = openai_worker(workers, mock)
    prompts = [f"item {i} [[latency=40]]" for i in range(400)]
    # Two chunks, both running at the SIGTERM (a window of two: concurrency 8 at 4 a run).
    settings = openai_settings(redis_url, mock).model_copy(
        update={"chunk_size": 200, "run_concurrency": 4}
    )
    async with api_client(settings) as client:
        batch = await submit(client, prompts=prompts, max_concurrency=concurrency)
        await wait_for(lambda: _at_least(client, batch["id"], 100), what="a quarter of the batch")
        assert first.stop(signal.SIGTERM) == 0
        job_ids = [keys.job_id(batch["id"], chunk) for chunk in range(2)]
        with redis.Redis.from_url(redis_url) as r:
            assert r.exists(*(jobs.arq_in_progress(j) for j in job_ids)) == 0  # released
            scores = [r.zscore(keys.QUEUE, j) for j in job_ids]
            seconds, micros = r.time()
            now_ms = seconds * 1000 + micros // 1000
            assert all(s is not None and s <= now_ms for s in scores)  # queued, due at once
        openai_worker(workers, mock)
        done = await wait_final(client, batch["id"])
        items = await all_results(client, batch["id"])
    assert done["status"] == "completed"
    _assert_each_output_is_its_own(items, prompts)
    assert int(str(mock.stats()["calls"])) - len(prompts) <= concurrency


async def test_two_workers_on_one_batch_stay_within_its_max_concurrency(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc], tmp_path: Path
) -> None:
    a, b = openai_worker(workers, mock), openai_worker(workers, mock)
    prompts = [f"item {i} [[latency={20 + i % 40}]]" for i in range(300)]
    settings = openai_settings(redis_url, mock).model_copy(update={"chunk_size": 20})
    async with api_client(settings) as client:
        batch = await submit(client, prompts=prompts, max_concurrency=6)
        done = await wait_final(client, batch["id"])
        items = await all_results(client, batch["id"])
    assert done["status"] == "completed"
    _assert_each_output_is_its_own(items, prompts)
    assert mock.stats()["max_in_flight"] == 6  # reached, never exceeded
    assert batch["id"] in a.log()  # both workers ran chunks of it
    assert batch["id"] in b.log()


async def test_a_mix_of_provider_faults_fails_only_the_400_and_the_hung_call(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    openai_worker(workers, mock, PROMPTBATCH_MAX_RETRIES="4", PROMPTBATCH_REQUEST_TIMEOUT_S="1")
    prompts = [f"flaky {i} [[flaky=503:10]]" for i in range(80)]
    prompts += [f"rate limited {i} [[fail=429:2]] [[retry_after=1]]" for i in range(5)]
    prompts += [f"server error {i} [[fail=500:2]]" for i in range(5)]
    prompts += ["too long for the model [[status=400]]", "never answers [[hang]]"]
    async with api_client(openai_settings(redis_url, mock)) as client:
        batch = await submit(client, prompts=prompts, max_concurrency=16)
        done = await wait_final(client, batch["id"])
        items = await all_results(client, batch["id"])
    assert done["status"] == "completed"
    assert done["request_counts"]["succeeded"] == 90
    _assert_each_output_is_its_own(items[:90], prompts[:90])
    bad_request, hung = items[90], items[91]
    assert bad_request["error"]["type"] == "invalid_request"
    assert "refused this prompt with 400" in bad_request["error"]["message"]
    assert hung["error"]["type"] == "timeout"
    assert "timed out" in hung["error"]["message"].lower()
    stats = mock.stats()
    assert stats["early_retries"] == 0  # every Retry-After was honoured
    statuses: Any = stats["statuses"]
    assert statuses["400"] == 1  # a 400 is not retried
    assert statuses["429"] == 10
    assert statuses["500"] == 10
    assert int(statuses.get("503", 0)) > 0


async def test_redis_stopped_mid_batch_gives_503s_then_the_batch_completes(
    mock: MockProvider, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path, appendonly=True)
    worker = start_worker(
        server.url,
        tmp_path / "worker.log",
        OPENAI_BASE_URL=f"{mock.url}/v1",
        OPENAI_API_KEY="sk-test",
    )
    prompts = [f"item {i} [[latency=50]]" for i in range(400)]
    # One chunk: the worker runs on with the chunk it holds while Redis is away.
    settings = openai_settings(server.url, mock).model_copy(update={"chunk_size": 400})
    try:
        async with api_client(settings) as client:
            batch = await submit(client, prompts=prompts, max_concurrency=4)
            await wait_for(lambda: _at_least(client, batch["id"], 60), what="a fifth of the batch")
            server.stop()
            during = await client.get(f"/v1/batches/{batch['id']}")
            assert during.status_code == 503
            assert during.json()["error"]["type"] == "service_unavailable"
            calls = int(str(mock.stats()["calls"]))
            wait_until(  # the worker keeps going while Redis is away (for about 2 s)
                lambda: int(str(mock.stats()["calls"])) >= calls + 160,
                what="provider calls while Redis is down",
            )
            assert worker.popen.poll() is None
            server.start()
            done = await wait_final(client, batch["id"], timeout_s=120)
            items = await all_results(client, batch["id"])
    finally:
        worker.stop()
        server.stop()
    assert done["status"] == "completed"
    _assert_each_output_is_its_own(items, prompts)
    # Its lease outlived the outage: no run took the chunk over, no call was made twice.
    assert mock.stats()["calls"] == len(prompts)


async def test_a_chunk_that_keeps_killing_workers_fails_its_items_and_the_rest_completes(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    fast_lease = {**FAST_LEASE, "PROMPTBATCH_CHUNK_MAX_ATTEMPTS": "2"}
    prompts = [f"item {i}" for i in range(10)]
    prompts[2] = "the poison pill [[gate=never]]"  # its call never ends; we kill the worker
    settings = openai_settings(redis_url, mock).model_copy(update={"chunk_size": 5})
    async with api_client(settings) as client:
        batch = await submit(client, prompts=prompts)
        first = openai_worker(workers, mock, **fast_lease)
        # Every other item written: a new run of chunk 0 calls the provider for the pill only.
        await wait_for(lambda: _at_least(client, batch["id"], 9), what="the other 9 items")
        wait_until(partial(_calls_are, mock, 10), what="the pill's first call")
        _kill(first)
        second = openai_worker(workers, mock, **fast_lease)
        wait_until(partial(_calls_are, mock, 11), what="the pill's second call")
        _kill(second)
        openai_worker(workers, mock, **fast_lease)
        done = await wait_final(client, batch["id"])
        items = await all_results(client, batch["id"])
    assert done["status"] == "completed"
    assert done["request_counts"]["succeeded"] == 9
    assert items[2]["status"] == "failed"
    assert items[2]["error"]["type"] == "worker_lost"
    assert "2 times" in items[2]["error"]["message"]
    others = [p for i, p in enumerate(prompts) if i != 2]
    _assert_each_output_is_its_own([it for i, it in enumerate(items) if i != 2], others)
    assert mock.stats()["calls"] == 11  # the third run did not call the provider again


async def test_a_batch_whose_queued_work_was_lost_is_queued_again_and_runs(
    redis_url: str, workers: Callable[..., Proc]
) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:  # stored but never queued: as if Redis lost the queue entries in a crash
        batch, _ = await BatchStore(client).create(make_plan(5), chunk_size=2)
    finally:
        await client.aclose()
    workers(PROMPTBATCH_RECONCILE_S="1")
    async with api_client(make_settings(redis_url)) as api:
        done = await wait_final(api, batch.id)
    assert done["status"] == "completed"
    assert done["request_counts"]["succeeded"] == 5


async def test_a_frozen_worker_s_chunk_is_taken_over_and_nothing_is_lost_or_doubled(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    fast_lease = FAST_LEASE
    concurrency = 4
    frozen = openai_worker(workers, mock, **fast_lease)
    prompts = [f"item {i} [[latency=50]]" for i in range(240)]
    async with api_client(openai_settings(redis_url, mock)) as client:
        batch = await submit(client, prompts=prompts, max_concurrency=concurrency)
        await wait_for(lambda: _at_least(client, batch["id"], 20), what="the batch to run")
        frozen.popen.send_signal(signal.SIGSTOP)  # frozen past its lease, not dead
        try:
            done_at_stop = await _done(client, batch["id"])
            openai_worker(workers, mock, **fast_lease)
            await wait_for(
                lambda: _at_least(client, batch["id"], done_at_stop + 20),
                what="another worker to take the frozen worker's chunk over",
            )
        finally:
            frozen.popen.send_signal(signal.SIGCONT)  # it wakes up and finds its claim gone
        done = await wait_final(client, batch["id"])
        items = await all_results(client, batch["id"])
    assert done["status"] == "completed"
    assert done["request_counts"]["succeeded"] == len(prompts)  # each counted once
    _assert_each_output_is_its_own(items, prompts)
    assert frozen.popen.poll() is None  # it went on serving
    assert "taken over by another worker" in frozen.log()
    resent = int(str(mock.stats()["calls"])) - len(prompts)
    # Only what it had not written at the freeze (as for a killed worker): awake, it starts no
    # call before a renewal has told it the chunk is another's.
    assert 0 <= resent <= 2 * concurrency


def _calls_are(mock: MockProvider, n: int) -> bool:
    return mock.stats()["calls"] == n


async def _at_least(client: httpx.AsyncClient, batch_id: str, n: int) -> bool:
    return await _done(client, batch_id) >= n
