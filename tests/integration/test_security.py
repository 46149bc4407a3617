"""Security through real processes: limits shared by two API processes, no secret in any log,
job payloads that are not ours refused by a running worker, a password-protected Redis."""

from __future__ import annotations

import asyncio
import json
import pathlib
import pickle
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as sync_redis
from arq.constants import job_key_prefix

from shared import keys
from shared.settings import Settings
from tests.conftest import api_client
from tests.helpers import MockProvider, Proc, bearer, start_worker, wait_for, wait_until
from tests.integration.flows import all_results, openai_settings, submit, wait_final
from tests.servers import Api, password_redis, start_api

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
KEY_A, KEY_B = "sec-key-a-3f9c1e7b20d4", "sec-key-b-8e2a6d4c91f0"


@pytest.fixture
def apis(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Api]]:
    """Start real API processes (uvicorn) on the test's Redis; all are stopped after the test."""
    started: list[Api] = []

    def start(**env: str) -> Api:
        api = start_api(redis_url, tmp_path / f"api{len(started)}.log", **env)
        started.append(api)
        return api

    yield start
    for api in started:
        api.proc.stop()


async def burst(apis: list[Api], key: str, each: int, prompts: int) -> list[httpx.Response]:
    """`each` submissions to every API process at once."""
    body = {"prompts": [f"p{i}" for i in range(prompts)]}
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(
            *(client.post(f"{api.url}/v1/batches", json=body, headers=bearer(key))
              for _ in range(each) for api in apis)
        )  # fmt: skip


def stored_batches(redis_url: str) -> dict[str, int]:
    """Batch id -> total prompts, for every batch in Redis."""
    with sync_redis.Redis.from_url(redis_url) as redis:
        return {
            redis.hget(key, "id").decode(): int(redis.hget(key, "total"))
            for key in redis.scan_iter(keys.batch("*"))
        }


def queued_jobs(redis_url: str) -> int:
    with sync_redis.Redis.from_url(redis_url) as redis:
        return int(redis.zcard(keys.QUEUE))


def scheduled_batches(redis_url: str) -> set[str]:
    """Batches with a chunk job on the queue, or waiting for their turn in a key's rotation."""
    with sync_redis.Redis.from_url(redis_url) as redis:
        queued = {job.decode().rsplit(":", 1)[0] for job in redis.zrange(keys.QUEUE, 0, -1)}
        rotations = list(redis.scan_iter(keys.rotation("*")))
        waiting = {batch.decode() for key in rotations for batch in redis.zrange(key, 0, -1)}
        return queued | waiting


# -- limits across API processes -------------------------------------------------------------


async def test_the_rate_limit_holds_across_two_api_processes(
    apis: Callable[..., Api], redis_url: str
) -> None:
    env = {"PROMPTBATCH_API_KEYS": f"{KEY_A},{KEY_B}", "PROMPTBATCH_RATE_LIMIT_PER_MIN": "5"}
    one, two = apis(**env), apis(**env)

    responses = await burst([one, two], KEY_A, each=6, prompts=1)
    assert Counter(r.status_code for r in responses) == {202: 5, 429: 7}
    for refused in (r for r in responses if r.status_code == 429):
        assert refused.json()["error"]["type"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
    for api in (one, two):  # each process sees the submissions the other let in
        again = httpx.post(f"{api.url}/v1/batches", json={"prompts": ["a"]}, headers=bearer(KEY_A))
        assert again.status_code == 429
    other = httpx.post(f"{two.url}/v1/batches", json={"prompts": ["a"]}, headers=bearer(KEY_B))
    assert other.status_code == 202
    assert set(stored_batches(redis_url)) == scheduled_batches(redis_url)
    assert len(stored_batches(redis_url)) == 6


async def test_the_queued_prompt_ceiling_holds_across_two_api_processes(
    apis: Callable[..., Api], redis_url: str
) -> None:
    env = {"PROMPTBATCH_API_KEYS": KEY_A, "PROMPTBATCH_MAX_QUEUED_PROMPTS": "10"}
    one, two = apis(**env), apis(**env)  # no worker: nothing finishes

    responses = await burst([one, two], KEY_A, each=8, prompts=2)
    assert Counter(r.status_code for r in responses) == {202: 5, 429: 11}
    assert all(r.headers["retry-after"].isdigit() for r in responses if r.status_code == 429)
    assert sum(stored_batches(redis_url).values()) == 10  # not one prompt past the ceiling
    assert set(stored_batches(redis_url)) == scheduled_batches(redis_url)
    assert len(stored_batches(redis_url)) == 5


async def test_queue_room_comes_back_as_a_worker_finishes_prompts(
    redis_url: str, mock: MockProvider, workers: Callable[..., Proc]
) -> None:
    workers(OPENAI_BASE_URL=f"{mock.url}/v1", OPENAI_API_KEY="sk-test")
    first_gate, second_gate = secrets.token_hex(4), secrets.token_hex(4)
    settings = openai_settings(redis_url, mock).model_copy(update={"max_queued_prompts": 5})
    async with api_client(settings) as client:

        async def post(*prompts: str) -> int:
            return (await client.post("/v1/batches", json={"prompts": prompts})).status_code

        first = await submit(client, prompts=["quick 0", "quick 1", f"slow [[gate={first_gate}]]"])

        async def two_done() -> bool:
            got = (await client.get(f"/v1/batches/{first['id']}")).json()
            return bool(got["request_counts"]["succeeded"] == 2)

        await wait_for(two_done, what="the quick items")
        gated = [f"later {i} [[gate={second_gate}]]" for i in range(4)]
        assert await post(*gated) == 202  # 1 still pending + 4
        assert await post(f"one more [[gate={second_gate}]]") == 429
        mock.open_gate(first_gate)
        await wait_final(client, first["id"])
        assert await post(f"one more [[gate={second_gate}]]") == 202  # 4 + 1
        mock.open_gate(second_gate)


# -- the request body limit under uvicorn ----------------------------------------------------


def test_uvicorn_serves_413_for_a_body_over_the_limit(
    apis: Callable[..., Api], redis_url: str
) -> None:
    api = apis(PROMPTBATCH_MAX_BODY_BYTES=str(MiB))
    body = json.dumps({"prompts": ["x" * 1000] * (2 * MiB // 1004)}).encode()
    headers = {"Content-Type": "application/json"}
    taken = 0

    def chunked() -> Iterator[bytes]:
        nonlocal taken
        for start in range(0, len(body), 64 * 1024):
            taken += 1
            yield body[start : start + 64 * 1024]

    declared = httpx.post(f"{api.url}/v1/batches", content=body, headers=headers, timeout=30)
    streamed = httpx.post(f"{api.url}/v1/batches", content=chunked(), headers=headers, timeout=30)
    for response in (declared, streamed):
        assert response.status_code == 413, response.text
        assert response.json()["error"]["type"] == "request_too_large"
    assert stored_batches(redis_url) == {}
    assert queued_jobs(redis_url) == 0
    small = httpx.post(f"{api.url}/v1/batches", json={"prompts": ["x" * 1000] * 900})
    assert small.status_code == 202


# -- nothing secret in any log ---------------------------------------------------------------


async def test_no_prompt_output_or_key_reaches_a_log(
    apis: Callable[..., Api], redis_url: str, mock: MockProvider, tmp_path: Path
) -> None:
    marker = f"MARK{secrets.token_hex(8)}"
    api_key, provider_key = f"{marker}-api-key", f"sk-{marker}-provider"
    provider = {"OPENAI_BASE_URL": f"{mock.url}/v1", "OPENAI_API_KEY": provider_key}
    api = apis(PROMPTBATCH_API_KEYS=api_key, PROMPTBATCH_MAX_PROMPT_CHARS="200", **provider)
    auth = bearer(api_key)
    prompts = [f"{marker} first", f"{marker} refused [[status=400]] [[quote]]", f"{marker} last"]
    body = {"prompts": prompts, "system": f"{marker} system prompt", "model": "mock-1"}
    with httpx.Client(base_url=api.url, headers=auth, timeout=30) as client:
        batch = client.post("/v1/batches", json=body).json()
        corrupt = client.post("/v1/batches", json={"prompts": [f"{marker} never read"]}).json()
        # The API's refusals, each carrying the marker somewhere.
        assert client.post("/v1/batches", json={"prompts": [marker * 20]}).status_code == 422
        assert client.post("/v1/batches", json={"prompts": [marker], marker: 1}).status_code == 422
        assert client.post("/v1/batches", content=marker).status_code == 422
        stranger = bearer(f"{marker}-wrong-key")
        assert client.get("/v1/batches", headers=stranger).status_code == 401
    with sync_redis.Redis.from_url(redis_url) as redis:  # a batch the worker cannot even read
        params = json.dumps({"temperature": f"{marker} as params"})
        redis.hset(keys.batch(corrupt["id"]), "params", params)

    worker = start_worker(redis_url, tmp_path / "worker.log", **provider)
    try:
        async with httpx.AsyncClient(base_url=api.url, headers=auth, timeout=30) as client:
            done = await wait_final(client, batch["id"])
            failed = await wait_final(client, corrupt["id"])
            items = await all_results(client, batch["id"])
    finally:
        worker.stop()
        api.proc.stop()

    # The secrets really went through both processes ...
    assert done["request_counts"] == {
        "total": 3, "succeeded": 2, "failed": 1, "cancelled": 0, "expired": 0, "pending": 0,
    }  # fmt: skip
    assert marker in items[0]["output"]
    assert marker in items[1]["error"]["message"]  # the provider quoted the prompt back
    assert failed["status"] == "failed"
    assert marker not in failed["error"]["message"]
    # ... and neither log holds any of them, though both logged the work.
    worker_log, api_log = worker.log(), api.log()
    assert batch["id"] in worker_log
    assert corrupt["id"] in worker_log
    assert "POST /v1/batches" in api_log
    for log in (worker_log, api_log):
        assert marker not in log
        assert "api-key" not in log
    # arq logs each job's arguments and result: ids and counts only.
    calls = re.findall(r"run_chunk\((.*)\)", worker_log)
    results = re.findall(r"● (.*)", worker_log)
    assert calls
    assert results
    assert all(re.fullmatch(r"[\w:,' ]+", call) for call in calls), calls
    assert all(re.fullmatch(r"\{('\w+': \d+(, )?)*\}", result) for result in results), results


# -- job payloads ----------------------------------------------------------------------------


class Exploit:
    """A payload that runs code when unpickled: it creates the file it names."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.path,))


async def test_a_running_worker_refuses_job_payloads_that_are_not_its_json(
    settings: Settings, redis_url: str, workers: Callable[..., Proc], tmp_path: Path
) -> None:
    async with api_client(settings) as client:
        victim = await submit(client, prompts=["a real batch the bogus jobs name"])
    with sync_redis.Redis.from_url(redis_url) as redis:  # leave only the bogus jobs queued
        redis.delete(keys.QUEUE)
    job: dict[str, Any] = {"t": None, "f": "run_chunk", "a": [victim["id"], 0], "k": {}, "et": 1}
    pwned = tmp_path / "pwned"
    bogus = {
        "bogus:code-on-load": pickle.dumps(Exploit(pwned)),
        "bogus:pickled-job": pickle.dumps(job),
        "bogus:chunk-as-text": json.dumps(job | {"a": [victim["id"], "0"]}).encode(),
        "bogus:other-function": json.dumps(job | {"f": "shutdown"}).encode(),
        "bogus:keyword-args": json.dumps(job | {"k": {"chunk": 0}}).encode(),
        "bogus:not-json": b"\x00\x01 not json",
    }
    with sync_redis.Redis.from_url(redis_url) as redis:
        for job_id, payload in bogus.items():
            redis.set(job_key_prefix + job_id, payload)
            redis.zadd(keys.QUEUE, {job_id: int(time.time() * 1000)})

    worker = workers()

    def all_taken() -> bool:
        with sync_redis.Redis.from_url(redis_url) as redis:
            return not any(redis.zscore(keys.QUEUE, job_id) for job_id in bogus)

    wait_until(all_taken, what="the worker to take every bogus job")
    log = worker.log()
    assert log.count("refused a job payload") == len(bogus)
    for job_id in bogus:
        assert f"deserializing job {job_id} failed" in log
        assert f"→ {job_id}:" not in log  # arq never started it
    assert not pwned.exists()
    async with api_client(settings) as client:  # the worker is still serving good jobs
        good = await submit(client, prompts=["a", "b"])
        assert (await wait_final(client, good["id"]))["status"] == "completed"
    assert worker.popen.poll() is None


# -- a Redis with a password -----------------------------------------------------------------


async def test_a_password_protected_redis_works_end_to_end(tmp_path: Path) -> None:
    password = secrets.token_hex(12)
    with password_redis(tmp_path, password) as url:
        with (
            pytest.raises(sync_redis.AuthenticationError),
            sync_redis.Redis.from_url(url.replace(f":{password}@", "")) as anonymous,
        ):
            anonymous.ping()
        worker = start_worker(url, tmp_path / "worker.log")
        api = start_api(url, tmp_path / "api.log")
        try:
            async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
                assert (await client.get("/readyz")).status_code == 200
                batch = await submit(client, prompts=["Where is Seoul?"])
                done = await wait_final(client, batch["id"])
                items = await all_results(client, batch["id"])
        finally:
            worker.stop()
            api.proc.stop()
    assert done["status"] == "completed"
    assert items[0]["output"] == "[offline] You asked: Where is Seoul?"
    assert "PROMPTBATCH_API_KEYS is not set" in api.log()  # no keys: said so at start
    for log in (worker.log(), api.log()):
        assert password not in log
