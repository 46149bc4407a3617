"""Sharing the fleet: a small batch of another key beside a big slow one (its time against its
own work), and many one-call-at-a-time batches on six workers (the most calls in flight at
once against the job slots)."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from bench.measure import body
from bench.report import Row
from bench.workload import prompts
from shared.schemas import FINAL_BATCH_STATUSES

if TYPE_CHECKING:
    from bench.__main__ import Bench

BIG_KEY, SMALL_KEY = "bench-key-big", "bench-key-small"


@dataclass(frozen=True)
class SharingSizes:
    #: The big batch (prompts, its max_concurrency), the small one's prompts, the latency (ms),
    #: and how many small batches are timed.
    small_behind_big: tuple[int, int, int, float, int] = (4000, 2, 8, 200.0, 5)
    #: Workers, job slots each, one-call-at-a-time batches, prompts each, latency (ms).
    fleet: tuple[int, int, int, int, float] = (6, 20, 118, 3, 1000.0)


SMOKE = SharingSizes(small_behind_big=(40, 2, 4, 20.0, 1), fleet=(2, 3, 5, 2, 50.0))


def _keyed(key: str) -> dict[str, str]:
    """A JSON request's headers, as the key's (none: an API without keys)."""
    return {"Content-Type": "application/json"} | (
        {"Authorization": f"Bearer {key}"} if key else {}
    )


async def _post(http: httpx.AsyncClient, payload: bytes, key: str) -> str:
    response = await http.post("/v1/batches", content=payload, headers=_keyed(key))
    if response.status_code != 202:
        raise RuntimeError(f"POST answered {response.status_code}: {response.text[:300]}")
    return str(response.json()["id"])


async def _final(http: httpx.AsyncClient, batch_id: str, key: str, poll_s: float) -> Any:
    while True:
        batch = (await http.get(f"/v1/batches/{batch_id}", headers=_keyed(key))).json()
        if batch["status"] in FINAL_BATCH_STATUSES:
            if batch["status"] != "completed":
                raise RuntimeError(f"batch {batch_id} ended {batch['status']}")
            return batch
        await asyncio.sleep(poll_s)


async def small_behind_big(bench: Bench, sizes: SharingSizes) -> None:
    """One worker with default settings runs a big batch of one key at a small concurrency;
    another key's small batches are timed from POST to completed against their own work (one
    round of calls), one after another while the big batch runs."""
    big_count, big_concurrency, small_count, latency_ms, runs = sizes.small_behind_big
    api = await bench.stack.keyed_api(BIG_KEY, SMALL_KEY)
    times: list[float] = []
    async with (
        httpx.AsyncClient(base_url=api.url, timeout=60) as http,
        bench.stack.workers(1, latency_ms),
    ):
        big = await _post(http, body(prompts(big_count), big_concurrency), BIG_KEY)
        small = body(prompts(small_count), small_count)
        for _ in range(runs):
            began = time.perf_counter()
            batch_id = await _post(http, small, SMALL_KEY)
            await _final(http, batch_id, SMALL_KEY, 0.02)
            times.append(time.perf_counter() - began)
            bench.log(f"  small behind big: {times[-1]:.2f} s")
        big_batch = (await http.get(f"/v1/batches/{big}", headers=_keyed(BIG_KEY))).json()
        await http.delete(f"/v1/batches/{big}", headers=_keyed(BIG_KEY))
    if big_batch["status"] != "in_progress":
        raise RuntimeError(f"the big batch was {big_batch['status']} before the small ones ended")
    own = latency_ms / 1000
    median = statistics.median(times)
    bench.rows.append(Row(
        name=f"small behind big: {small_count} prompts of another key while {big_count} run at "
             f"concurrency {big_concurrency}, {latency_ms:g} ms calls, 1 worker, POST to completed",
        unit="s", service=median, ideal=own, target="≤ 2 s", met=median <= 2, runs=len(times),
        extra=f"{median / own:.1f}× its own work; worst {max(times):.2f} s",
    ))  # fmt: skip


async def fleet_utilisation(bench: Bench, sizes: SharingSizes) -> None:
    """Many one-call-at-a-time batches on a fleet of workers: the most calls the provider saw
    in flight at once, against the fleet's job slots (and the batches' count)."""
    workers, slots, batches, count, latency_ms = sizes.fleet
    mock = await asyncio.to_thread(bench.stack.mock, latency_ms)
    async with bench.stack.workers(workers, latency_ms, PROMPTBATCH_WORKER_MAX_JOBS=str(slots)):
        await asyncio.to_thread(mock.reset)
        payload = body(prompts(count), 1)
        began = time.perf_counter()
        ids = await asyncio.gather(*(_post(bench.http, payload, "") for _ in range(batches)))
        await asyncio.gather(*(_final(bench.http, batch_id, "", 0.1) for batch_id in ids))
        seconds = time.perf_counter() - began
        await asyncio.gather(*(bench.http.delete(f"/v1/batches/{i}") for i in ids))
    in_flight = int(str((await asyncio.to_thread(mock.stats))["max_in_flight"]))
    best = min(batches, workers * slots)
    ideal = count * latency_ms / 1000 * -(-batches // best)
    bench.rows.append(Row(
        name=f"fleet utilisation: {batches} one-call-at-a-time batches of {count} "
             f"{latency_ms:g} ms calls, {workers} workers of {slots} job slots, most calls "
             "in flight at once",
        unit="calls", service=in_flight, ideal=best, target=f"≥ {best - 6}",
        met=in_flight >= best - 6, runs=1,
        extra=f"of {workers * slots} slots; all done in {seconds:.1f} s, ideal {ideal:g} s",
    ))  # fmt: skip
