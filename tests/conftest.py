"""Session-wide real parts (a Redis server, the mock provider) and per-test clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from asgi_lifespan import LifespanManager

from api.main import create_app
from shared.settings import Settings
from tests.helpers import MockProvider, Proc, RedisServer, start_worker


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def mock_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockProvider]:
    provider = MockProvider(tmp_path_factory.mktemp("mock"))
    yield provider
    provider.stop()


@pytest.fixture
def mock(mock_provider: MockProvider) -> MockProvider:
    """The mock provider with its counters reset for this test."""
    mock_provider.reset()
    return mock_provider


def make_settings(redis_url: str, **overrides: Any) -> Settings:
    """Settings for the in-process API: explicit, whatever the machine's environment holds."""
    base: dict[str, Any] = {"redis_url": redis_url, "provider": "offline", "openai_api_key": None}
    return Settings(**{**base, **overrides})


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return make_settings(redis_url)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API in process (its real lifespan) over ASGITransport, against the real Redis."""
    async with api_client(settings) as http:
        yield http


@asynccontextmanager
async def api_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API app with its lifespan run, and an httpx client that talks to it in process."""
    async with LifespanManager(create_app(settings)) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


@pytest.fixture
def workers(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start real worker processes on the test's Redis; all are stopped after the test."""
    started: list[Proc] = []

    def start(**env: str) -> Proc:
        proc = start_worker(redis_url, tmp_path / f"worker{len(started)}.log", **env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
