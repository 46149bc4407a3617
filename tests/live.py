"""The API as a real uvicorn process, for the clients that talk HTTP to it (CLI, Python client)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import Proc
from tests.servers import start_api


@pytest.fixture
def live_api(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start real API processes on the test's Redis (offline provider unless told); returns the
    URL. All are stopped after the test."""
    started: list[Proc] = []

    def start(**env: str) -> str:
        api = start_api(redis_url, tmp_path / f"api{len(started)}.log", **env)
        started.append(api.proc)
        return api.url

    yield start
    for proc in started:
        proc.stop()
