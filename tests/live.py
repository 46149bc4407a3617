"""The API as a real uvicorn process, for the clients that talk HTTP to it (CLI, Python client)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import Proc, free_port, wait_until, worker_env


def start_api(redis_url: str, log_path: Path, **env: str) -> tuple[Proc, str]:
    """`uvicorn api.main:app` on a free loopback port; returned once `/healthz` answers."""
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "api.main:app",
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    proc = Proc(args, worker_env(redis_url, **env), log_path).start()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"the API exited at start:\n{proc.log()}")
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout_s=60, what="the API process")
    return proc, url


@pytest.fixture
def live_api(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start real API processes on the test's Redis (offline provider unless told); returns the
    URL. All are stopped after the test."""
    started: list[Proc] = []

    def start(**env: str) -> str:
        proc, url = start_api(redis_url, tmp_path / f"api{len(started)}.log", **env)
        started.append(proc)
        return url

    yield start
    for proc in started:
        proc.stop()
