"""Bounded requests and per-key limits through the real app and a real Redis (no worker)."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis as sync_redis
from asgi_lifespan import LifespanManager
from redis.asyncio import Redis

from api.admission import Limits
from api.auth import owner_id
from api.main import create_app
from shared import keys
from shared.errors import TooManyRequests
from shared.settings import Settings
from tests.conftest import api_client, make_settings
from tests.helpers import bearer, wait_for

MiB = 1024 * 1024
KEY_A, KEY_B = "limits-key-a-5e2b8c", "limits-key-b-7d1f0a"


def stored(redis_url: str) -> list[bytes]:
    with sync_redis.Redis.from_url(redis_url) as redis:
        return sorted(redis.scan_iter("*"))


def batches_and_jobs(redis_url: str) -> tuple[int, int]:
    with sync_redis.Redis.from_url(redis_url) as redis:
        return len(list(redis.scan_iter(keys.batch("*")))), int(redis.zcard(keys.QUEUE))


class Body:
    """A valid batch of about `size` bytes, handed over in 64 KiB pieces, counting how many
    were taken."""

    def __init__(self, size: int) -> None:
        self.data = json.dumps({"prompts": ["x" * 1000] * (size // 1004)}).encode()
        assert size - 1004 < len(self.data) <= size
        self.taken = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), 64 * 1024):
            self.taken += 1
            yield self.data[start : start + 64 * 1024]


# -- body size -------------------------------------------------------------------------------


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_body_over_the_limit_is_413_before_it_is_read(
    redis_url: str, declared: bool
) -> None:
    body = Body(2 * MiB)
    headers = {"Content-Type": "application/json"}
    if declared:
        headers["Content-Length"] = str(len(body.data))
    async with api_client(make_settings(redis_url, max_body_bytes=MiB)) as client:
        response = await client.post("/v1/batches", content=body, headers=headers)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["type"] == "request_too_large"
    assert str(MiB) in response.json()["error"]["message"]
    if declared:
        assert body.taken == 0  # refused on the declared length alone
    else:
        assert body.taken == 17  # 16 pieces make the 1 MiB limit; the 17th passes it: stop
    assert stored(redis_url) == []


async def test_a_body_under_the_limit_is_accepted(redis_url: str) -> None:
    body = Body(MiB - 100)
    async with api_client(make_settings(redis_url, max_body_bytes=MiB)) as client:
        response = await client.post(
            "/v1/batches", content=body, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 202, response.text


async def test_the_body_limit_comes_before_authentication(redis_url: str) -> None:
    settings = make_settings(redis_url, max_body_bytes=1000, api_keys=KEY_A)
    async with api_client(settings) as client:
        response = await client.post("/v1/batches", json={"prompts": ["x" * 2000]})
    assert response.status_code == 413


# -- validation, with every limit on -----------------------------------------------------------


@pytest.fixture
def strict(redis_url: str) -> Settings:
    return make_settings(
        redis_url, api_keys=KEY_A, rate_limit_per_min=100, max_queued_prompts=1000,
        max_prompts=5, max_prompt_chars=50, max_output_tokens=100, max_concurrency=8,
        default_concurrency=4,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompts": ["a"] * 6}, "prompts"),
        ({"prompts": ["a", "x" * 51]}, "prompts[1]"),
        ({"prompts": ["a"], "system": "x" * 51}, "system"),
        ({"prompts": ["a"], "params": {"temperature": 2.5}}, "params.temperature"),
        ({"prompts": ["a"], "params": {"temperature": -0.1}}, "params.temperature"),
        ({"prompts": ["a"], "params": {"top_p": 0}}, "params.top_p"),
        ({"prompts": ["a"], "params": {"max_tokens": 101}}, "params.max_tokens"),
        ({"prompts": ["a"], "params": {"max_tokens": 0}}, "params.max_tokens"),
        ({"prompts": ["a"], "max_concurrency": 9}, "max_concurrency"),
        ({"prompts": ["a"], "temperature": 0.2}, "temperature"),
        ({"prompts": ["a"], "params": {"functions": []}}, "params.functions"),
        ({"prompts": [{"prompt": "a", "id": "x"}]}, "prompts[0].id"),
        ({"prompts": ["a"], "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ],
)
async def test_each_refusal_names_its_field_and_leaves_nothing_behind(
    strict: Settings, redis_url: str, body: dict[str, Any], param: str
) -> None:
    async with api_client(strict) as client:
        response = await client.post("/v1/batches", json=body, headers=bearer(KEY_A))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param
    assert stored(redis_url) == []  # no batch, no job, not even a count against the rate


# -- rate and queue ceiling, in one API process ---------------------------------------------


async def test_the_submission_rate_is_per_key_with_retry_after(redis_url: str) -> None:
    settings = make_settings(redis_url, api_keys=f"{KEY_A},{KEY_B}", rate_limit_per_min=2)
    async with api_client(settings) as client:
        for _ in range(2):
            ok = await client.post("/v1/batches", json={"prompts": ["a"]}, headers=bearer(KEY_A))
            assert ok.status_code == 202
        before = batches_and_jobs(redis_url)
        refused = await client.post("/v1/batches", json={"prompts": ["a"]}, headers=bearer(KEY_A))
        other = await client.post("/v1/batches", json={"prompts": ["a"]}, headers=bearer(KEY_B))
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert before == (2, 2)
    assert other.status_code == 202  # another key has its own budget
    assert batches_and_jobs(redis_url) == (3, 3)


async def test_a_repeat_with_an_idempotency_key_gets_its_batch_at_the_rate_limit(
    redis_url: str,
) -> None:
    settings = make_settings(redis_url, rate_limit_per_min=1, max_queued_prompts=2)
    body, retry = {"prompts": ["a", "b"]}, {"Idempotency-Key": "order-17"}
    async with api_client(settings) as client:
        first = await client.post("/v1/batches", json=body, headers=retry)
        again = await client.post("/v1/batches", json=body, headers=retry)
        other_body = await client.post("/v1/batches", json={"prompts": ["c"]}, headers=retry)
        new = await client.post("/v1/batches", json={"prompts": ["c"]})
    assert first.status_code == 202
    assert (again.status_code, again.json()["id"]) == (200, first.json()["id"])
    assert other_body.status_code == 409  # the key's conflict, not the rate limit
    assert new.status_code == 429  # the repeat took none of the budget, and gave none back
    assert batches_and_jobs(redis_url) == (1, 1)


async def test_the_queued_prompt_ceiling_counts_a_keys_unfinished_batches(
    redis_url: str,
) -> None:
    settings = make_settings(redis_url, api_keys=f"{KEY_A},{KEY_B}", max_queued_prompts=5)
    async with api_client(settings) as client:

        async def submit(n: int, key: str = KEY_A) -> httpx.Response:
            body = {"prompts": [f"p{i}" for i in range(n)]}
            return await client.post("/v1/batches", json=body, headers=bearer(key))

        assert (await submit(3)).status_code == 202
        full = await submit(3)
        assert full.status_code == 429
        assert full.headers["retry-after"].isdigit()
        assert "3 prompts queued" in full.json()["error"]["message"]
        assert (await submit(2)).status_code == 202
        assert (await submit(1)).status_code == 429
        assert (await submit(5, KEY_B)).status_code == 202
        never = await submit(6, KEY_B)
    assert never.status_code == 422  # could never fit: not worth a retry
    assert never.json()["error"]["param"] == "prompts"
    assert batches_and_jobs(redis_url) == (3, 3)


async def test_a_finished_batch_gives_its_room_back(redis_url: str) -> None:
    settings = make_settings(redis_url, max_queued_prompts=4)
    async with api_client(settings) as client:
        first = (await client.post("/v1/batches", json={"prompts": ["a", "b", "c"]})).json()

        async def submit(n: int) -> int:
            body = {"prompts": [f"p{i}" for i in range(n)]}
            return (await client.post("/v1/batches", json=body)).status_code

        assert await submit(2) == 429
        with sync_redis.Redis.from_url(redis_url) as redis:  # as a worker leaves it: 2 of 3 done
            redis.hset(keys.batch(first["id"]), mapping={"succeeded": 1, "failed": 1})
        assert await submit(4) == 429
        assert await submit(3) == 202  # 1 + 3
        assert await submit(1) == 429
        with sync_redis.Redis.from_url(redis_url) as redis:
            redis.hset(keys.batch(first["id"]), mapping={"status": "completed", "succeeded": 2})
            assert redis.sismember(keys.active_batches(keys.PUBLIC_OWNER), first["id"])
        assert await submit(1) == 202  # 3 + 1
    with sync_redis.Redis.from_url(redis_url) as redis:  # the finished batch left the index
        assert not redis.sismember(keys.active_batches(keys.PUBLIC_OWNER), first["id"])


# -- the limiter's own bookkeeping -----------------------------------------------------------


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_a_released_admission_leaves_nothing_counted(redis: Redis, redis_url: str) -> None:
    limits = Limits(redis, make_settings(redis_url, rate_limit_per_min=1, max_queued_prompts=3))
    owner = owner_id(KEY_A)
    admission = await limits.admit(owner, 3)
    with pytest.raises(TooManyRequests):
        await limits.admit(owner, 1)
    await limits.release(admission)
    assert await limits.admit(owner, 3) is not None


async def test_an_unsettled_reservation_lapses(
    redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys, "RESERVATION_TTL_MS", 200)
    limits = Limits(redis, make_settings(redis_url, max_queued_prompts=3))
    owner = owner_id(KEY_A)
    await limits.admit(owner, 3)  # an API process that died before storing its batch
    with pytest.raises(TooManyRequests):
        await limits.admit(owner, 1)

    async def admitted() -> bool:
        try:
            return await limits.admit(owner, 1) is not None
        except TooManyRequests:
            return False

    await wait_for(admitted, what="the reservation to lapse")


async def test_no_limit_set_means_no_redis_work(redis: Redis, redis_url: str) -> None:
    limits = Limits(redis, make_settings(redis_url))
    assert await limits.admit(owner_id(KEY_A), 10**6) is None
    assert stored(redis_url) == []


# -- unexpected errors -----------------------------------------------------------------------


async def test_an_unexpected_error_is_a_500_and_its_message_is_not_logged(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    marker = f"secret-prompt-{secrets.token_hex(4)}"
    app = create_app(settings)

    async def boom() -> None:
        raise RuntimeError(f"could not handle {marker}")

    app.add_api_route("/boom", boom)
    with caplog.at_level(logging.DEBUG):
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                response = await client.get("/boom")
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "internal_error"
    assert marker not in response.text
    assert "RuntimeError" in caplog.text
    assert "boom" in caplog.text  # where it happened is logged
    assert marker not in caplog.text
