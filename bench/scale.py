"""The scenarios that have no direct script to compare with: the service's own ceiling (the
offline model, no provider call), large submissions and the API's event loop meanwhile, and a
batch of a million prompts end to end, with the memory each part takes."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from bench.measure import (
    JSON,
    LoopHold,
    body,
    loop_watch,
    redis_used,
    reset_peak,
    rss_mb,
    run_batch,
    stream_results,
    submit,
)
from bench.report import Row
from bench.workload import chat_items, openai_batch_file, prompts
from shared.schemas import FINAL_BATCH_STATUSES

if TYPE_CHECKING:
    from bench.__main__ import Bench

NDJSON = {"Content-Type": "application/x-ndjson"}


@dataclass(frozen=True)
class ScaleSizes:
    offline: tuple[int, int] = (50_000, 3)  # prompts, runs
    submit: tuple[int, int] = (50_000, 9)  # prompts, POSTs
    big: tuple[int, int, int] = (50_000, 1200, 3)  # prompts, bytes each, POSTs
    million: int = 1_000_000
    openai_file: tuple[int, int] = (50_000, 2000)  # request lines, bytes each


SMOKE = ScaleSizes(
    offline=(500, 1), submit=(200, 2), big=(200, 1200, 1), million=2000, openai_file=(200, 2000)
)


async def offline(bench: Bench, sizes: ScaleSizes) -> None:
    """The offline model on two workers: what a batch costs the service besides the provider's
    calls (the model's own LangChain run, the limiter, the Redis writes). No batch can go
    faster than this, whatever the provider's speed."""
    count, runs = sizes.offline
    api = await bench.stack.offline_api()
    payload = body(prompts(count), 1024)
    seconds: list[float] = []
    async with (
        httpx.AsyncClient(base_url=api.url, timeout=600) as http,
        bench.stack.workers(2, 0.0),
    ):
        for i in range(runs):
            seconds.append((await run_batch(http, payload, 0.05)).seconds)
            bench.log(f"  offline run {i + 1}: {count / seconds[-1]:,.0f} items/s")
    rate = count / statistics.median(seconds)
    bench.rows.append(Row(
        name=f"offline model: {count:,} prompts, 2 workers, POST to completed, items/s",
        unit="/s", service=rate, target="≥ 4,000 items/s", met=rate >= 4000, runs=runs,
        extra=f"{statistics.median(seconds):.2f} s",
    ))  # fmt: skip


async def submit_time(bench: Bench, sizes: ScaleSizes) -> None:
    """POSTs of many short prompts (no workers: the batches only queue), and the longest the
    API's event loop was held meanwhile, seen by a `/healthz` poller of its own."""
    count, posts = sizes.submit
    payload = body(prompts(count), 8)
    times: list[float] = []
    async with loop_watch(bench.stack.api.url) as held:
        for _ in range(posts):
            seconds, batch_id = await submit(bench.http, payload)
            times.append(seconds * 1000)
            await bench.http.delete(f"/v1/batches/{batch_id}")
    s = statistics.median(times)
    bench.rows.append(Row(
        name=f"submit: POST of {count:,} short prompts answered", unit="ms", service=s,
        target="≤ 250 ms", met=s <= 250, runs=posts,
    ))  # fmt: skip
    bench.rows.append(_held_row(f"POSTs of {count:,} short prompts", held))


async def big_body(bench: Bench, sizes: ScaleSizes) -> None:
    """POSTs of a body of tens of MB (chat items of about 1.2 KB), as JSON and as an OpenAI
    Batch file (NDJSON), and the longest the API's event loop was held meanwhile."""
    count, size, posts = sizes.big
    items = chat_items(count, size)
    forms = [
        ("JSON", json.dumps({"prompts": items}).encode(), JSON),
        ("NDJSON", openai_batch_file(count, items), NDJSON),
    ]
    for form, payload, headers in forms:
        times: list[float] = []
        async with loop_watch(bench.stack.api.url) as held:
            for _ in range(posts):
                seconds, batch_id = await submit(bench.http, payload, headers)
                times.append(seconds)
                await bench.http.delete(f"/v1/batches/{batch_id}")
        what = f"a {len(payload) / 1e6:.0f} MB {form} body ({count:,} chat items)"
        bench.rows.append(Row(
            name=f"submit: POST of {what} answered", unit="s",
            service=statistics.median(times), target="(reported)", met=True, runs=posts,
        ))  # fmt: skip
        bench.rows.append(_held_row(f"POSTs of {what}", held))


async def openai_file(bench: Bench, sizes: ScaleSizes) -> None:
    """An OpenAI Batch input file of 100 MB uploaded to `/openai/v1/files` (multipart, as the
    OpenAI SDK sends it), then a batch made of it: the API's memory growth and the longest its
    event loop was held meanwhile."""
    count, size = sizes.openai_file
    payload = openai_batch_file(count, chat_items(count, size))
    api = bench.stack.api
    await reset_peak(api.proc.pid)
    before = await rss_mb(api.proc.pid)
    async with loop_watch(api.url) as held:
        began = time.perf_counter()
        uploaded = await bench.http.post(
            "/openai/v1/files", files={"file": ("big.jsonl", payload)}, data={"purpose": "batch"}
        )
        uploaded.raise_for_status()
        file_id = uploaded.json()["id"]
        up = time.perf_counter() - began
        began = time.perf_counter()
        created = await bench.http.post("/openai/v1/batches", json={
            "input_file_id": file_id, "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        })  # fmt: skip
        created.raise_for_status()
        made = time.perf_counter() - began
    grown = await rss_mb(api.proc.pid, "VmHWM") - before
    await bench.http.delete(f"/v1/batches/{created.json()['id']}")
    await bench.http.delete(f"/openai/v1/files/{file_id}")
    what = f"a {len(payload) / 1e6:.0f} MB OpenAI Batch file ({count:,} lines)"
    bench.rows.append(Row(
        name=f"OpenAI surface: upload of {what}, then a batch of it; the API's memory growth",
        unit="MB", service=grown, target="≤ 150 MB", met=grown <= 150, runs=1,
        extra=f"upload {up:.1f} s, create {made:.1f} s",
    ))  # fmt: skip
    bench.rows.append(_held_row(f"the upload and create of {what}", held))


def _held_row(during: str, held: LoopHold) -> Row:
    return Row(
        name=f"API event loop held, during {during}: the worst /healthz wait", unit="ms",
        service=held.worst_ms, target="≤ 100 ms", met=held.worst_ms <= 100, runs=held.polls,
        extra=f"p99 {held.p99_ms:.1f} ms",
    )  # fmt: skip


async def million(bench: Bench, sizes: ScaleSizes) -> None:
    """A batch of `sizes.million` prompts as an OpenAI Batch input file (NDJSON), run by two
    workers on the offline model, its results streamed as NDJSON: the peak memory of every
    process, and what Redis holds per item (queued, and with its result)."""
    count = sizes.million
    api = await bench.stack.offline_api()
    payload = openai_batch_file(count)
    redis_url = bench.stack.redis.url
    base = await redis_used(redis_url)
    await reset_peak(api.proc.pid)
    api_before = await rss_mb(api.proc.pid)
    async with (
        httpx.AsyncClient(base_url=api.url, timeout=1800) as http,
        bench.stack.workers(2, 0.0) as procs,
    ):
        began = time.perf_counter()
        posted, batch_id = await submit(http, payload, NDJSON)
        queued = await redis_used(redis_url) - base  # the workers have begun meanwhile
        run = await _wait(http, batch_id)
        ran = time.perf_counter() - began - posted
        worker_peak = max([await rss_mb(p.pid, "VmHWM") for p in procs])
        done = await redis_used(redis_url) - base
        began = time.perf_counter()
        lines = await stream_results(http, batch_id)
        streamed = time.perf_counter() - began
        api_peak = await rss_mb(api.proc.pid, "VmHWM")
        await http.delete(f"/v1/batches/{batch_id}")
    if lines != count or run != "completed":
        raise RuntimeError(f"the batch ended {run}, {lines} results of {count} streamed")
    bench.log(f"  million: POST {posted:.1f} s, run {ran:.1f} s, stream {streamed:.1f} s")
    what = f"{count:,} prompts (NDJSON, {len(payload) / 1e6:.0f} MB)"
    bench.rows += [
        Row(name=f"{what}: submitted, run on 2 workers, streamed; peak worker RSS", unit="MB",
            service=worker_peak, target="≤ 200 MB", met=worker_peak <= 200, runs=1,
            extra=f"POST {posted:.1f} s, run {ran:.0f} s ({count / ran:,.0f} items/s), "
                  f"stream {streamed:.1f} s"),
        Row(name=f"{what}: peak API RSS over the POST and the stream", unit="MB",
            service=api_peak, target="≤ 300 MB", met=api_peak <= 300, runs=1,
            extra=f"{api_before:.0f} MB before"),
        Row(name=f"{what}: Redis memory per item, queued / with its result", unit="B",
            service=done / count, target="(reported)", met=True, runs=1,
            extra=f"queued {queued / count:.0f} B"),
    ]  # fmt: skip


async def _wait(http: httpx.AsyncClient, batch_id: str) -> str:
    while True:
        status = str((await http.get(f"/v1/batches/{batch_id}")).json()["status"])
        if status in FINAL_BATCH_STATUSES:
            return status
        await asyncio.sleep(0.5)
