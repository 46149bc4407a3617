"""Liveness and readiness."""

from __future__ import annotations

import os

import httpx
from redis.asyncio import Redis

from shared import workers
from tests.conftest import api_client, make_settings
from tests.helpers import free_port


async def test_healthz_is_200(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "pid": os.getpid()}


async def test_readyz_needs_a_live_worker(client: httpx.AsyncClient, redis_url: str) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert "worker" in response.json()["error"]["message"]

    redis = Redis.from_url(redis_url)
    await workers.beat(redis, "test-worker", alive_s=6)
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["workers"] == 1

    await workers.forget(redis, "test-worker")
    await redis.aclose()
    assert (await client.get("/readyz")).status_code == 503


async def test_readyz_is_503_when_redis_is_down() -> None:
    async with api_client(make_settings(f"redis://127.0.0.1:{free_port()}/0")) as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert "Redis" in response.json()["error"]["message"]
