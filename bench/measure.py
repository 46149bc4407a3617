"""What a benchmark client does and reads: submit, wait for the end, stream, poll; RSS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from shared import keys
from shared.schemas import FINAL_BATCH_STATUSES
from tests.helpers import ROOT

JSON = {"Content-Type": "application/json"}


def body(prompts: list[str], concurrency: int) -> bytes:
    """The request body, encoded before the clock starts (the client's JSON is not ours)."""
    return json.dumps({"prompts": prompts, "max_concurrency": concurrency}).encode()


@dataclass
class Run:
    seconds: float
    batch: dict[str, Any]


async def submit(
    http: httpx.AsyncClient, payload: bytes, headers: dict[str, str] = JSON
) -> tuple[float, str]:
    """POST a batch (JSON unless `headers` say otherwise); (seconds until the 202, batch id)."""
    began = time.perf_counter()
    response = await http.post("/v1/batches", content=payload, headers=headers)
    seconds = time.perf_counter() - began
    if response.status_code != 202:
        raise RuntimeError(f"POST answered {response.status_code}: {response.text[:300]}")
    return seconds, str(response.json()["id"])


async def run_batch(
    http: httpx.AsyncClient, payload: bytes, poll_s: float, *, keep: bool = False
) -> Run:
    """POST a batch and poll it until it is final: the time a user waits for the last result.
    Every item must have succeeded. The batch is deleted after, unless `keep`."""
    began = time.perf_counter()
    _, batch_id = await submit(http, payload)
    while True:
        batch: dict[str, Any] = (await http.get(f"/v1/batches/{batch_id}")).json()
        if batch["status"] in FINAL_BATCH_STATUSES:
            seconds = time.perf_counter() - began
            break
        await asyncio.sleep(poll_s)
    counts = batch["request_counts"]
    if batch["status"] != "completed" or counts["succeeded"] != counts["total"]:
        raise RuntimeError(f"batch {batch_id} ended {batch['status']} with {counts}")
    if not keep:
        await http.delete(f"/v1/batches/{batch_id}")
    return Run(seconds, batch)


async def stream_results(http: httpx.AsyncClient, batch_id: str) -> int:
    """Read every result as NDJSON, one line at a time, as a client that streams does."""
    lines = 0
    headers = {"Accept": "application/x-ndjson"}
    async with http.stream("GET", f"/v1/batches/{batch_id}/results", headers=headers) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            lines += bool(line)
    return lines


@dataclass
class PollLoad:
    latencies_ms: list[float]
    errors: int


async def poll_load(
    url: str, batch_id: str, clients: int, seconds: float, interval_s: float
) -> PollLoad:
    """`clients` independent clients, each with its own connection, GETting the batch every
    `interval_s` (start times spread over the first interval) for `seconds`. Every client is
    made and connected before the clock starts: making 200 httpx clients costs the load
    generator seconds of CPU, which must not be counted as the API's latency."""
    latencies: list[float] = []
    errors = 0
    path = f"/v1/batches/{batch_id}"
    https = [httpx.AsyncClient(base_url=url, timeout=10) for _ in range(clients)]
    try:
        await asyncio.gather(*(http.get(path) for http in https))
        end = time.perf_counter() + seconds

        async def client(http: httpx.AsyncClient, offset: float) -> None:
            nonlocal errors
            next_at = time.perf_counter() + offset
            while next_at < end:
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                began = time.perf_counter()
                try:
                    ok = (await http.get(path)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append((time.perf_counter() - began) * 1000)
                errors += not ok
                next_at += interval_s

        await asyncio.gather(
            *(client(http, interval_s * i / clients) for i, http in enumerate(https))
        )
    finally:
        await asyncio.gather(*(http.aclose() for http in https))
    return PollLoad(latencies, errors)


async def cpu_s(*pids: int) -> float:
    """CPU seconds the processes have used so far (user + system), together."""
    return await asyncio.to_thread(lambda: sum(_cpu_s(pid) for pid in pids))


async def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory (`VmRSS`) or its peak so far (`VmHWM`), in MB."""
    return await asyncio.to_thread(_status_mb, pid, field)


async def reset_peak(pid: int) -> None:
    """Start a process's peak RSS (`VmHWM`) again from its current RSS (Linux 4.0+)."""
    await asyncio.to_thread(Path(f"/proc/{pid}/clear_refs").write_text, "5")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


async def redis_bytes(redis_url: str, names: tuple[str, ...]) -> int:
    """What Redis spends on these keys (`MEMORY USAGE`, every element counted)."""
    async with Redis.from_url(redis_url) as redis:
        sizes = [await redis.memory_usage(name, samples=0) for name in names]
    return sum(size or 0 for size in sizes)


async def forget_pacing(redis_url: str) -> None:
    """Drop what the workers learned of the provider's limits (every model's pacing)."""
    async with Redis.from_url(redis_url) as redis:
        names = [name async for name in redis.scan_iter(match=keys.pacing("*"))]
        if names:
            await redis.delete(*names)


@dataclass
class LoopHold:
    """What the `/healthz` poller saw: its longest wait and its 99th percentile, in ms."""

    worst_ms: float = 0.0
    p99_ms: float = 0.0
    polls: int = 0


@contextlib.asynccontextmanager
async def loop_watch(url: str) -> AsyncIterator[LoopHold]:
    """Poll the API's `/healthz` back to back from a process of its own while the block runs;
    the holder is filled in on exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.healthz", url, cwd=ROOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    assert proc.stdout is not None
    held = LoopHold()
    try:
        if (await proc.stdout.readline()).strip() != b"ready":
            raise RuntimeError("the /healthz poller did not start")
        yield held
    finally:
        proc.stdin.write(b"stop\n")
        await proc.stdin.drain()
        out, _ = await proc.communicate()
    seen = json.loads(out.decode().strip().splitlines()[-1])
    held.worst_ms, held.p99_ms, held.polls = seen["worst_ms"], seen["p99_ms"], seen["polls"]


async def redis_used(redis_url: str) -> int:
    """Redis's `used_memory`, in bytes."""
    async with Redis.from_url(redis_url) as redis:
        return int((await redis.info("memory"))["used_memory"])
