"""More real processes for tests: the API under uvicorn, and a Redis that wants a password."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from tests.helpers import Proc, free_port, redis_binary, wait_until, worker_env


@dataclass
class Api:
    """`uvicorn api.main:app` in a process of its own, as deployed."""

    proc: Proc
    url: str

    def log(self) -> str:
        return self.proc.log()


def start_api(redis_url: str, log_path: Path, **env: str) -> Api:
    """A real API process on a free port, returned once `/healthz` answers."""
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
            "--port", str(port)]  # fmt: skip
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
    return Api(proc, url)


@contextmanager
def password_redis(workdir: Path, password: str) -> Iterator[str]:
    """A Redis server of its own that refuses clients without `password`; yields its URL."""
    port = free_port()
    args = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(workdir), "--requirepass", password]  # fmt: skip
    proc = Proc(args, worker_env("unused"), workdir / "redis.log").start()
    url = f"redis://:{password}@127.0.0.1:{port}/0"

    def up() -> bool:
        try:
            with redis.Redis.from_url(url, socket_timeout=1) as client:
                return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_until(up, what="the password-protected Redis")
        yield url
    finally:
        proc.stop()
