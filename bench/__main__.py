"""`make bench` (`python -m bench`): every scenario of BENCHMARKS.md, service and direct script
alternating in one run; prints the table, writes BENCHMARKS.md's results and the plot.

`python -m bench --smoke` runs each scenario once at a toy size (what CI runs; no time is
judged there)."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx

from bench import scale, sharing, vectors
from bench.measure import (
    body,
    cpu_s,
    forget_pacing,
    poll_load,
    redis_bytes,
    reset_peak,
    rss_mb,
    run_batch,
    stream_results,
    submit,
)
from bench.report import Row, Sweep, publish, table
from bench.stack import Stack
from bench.workload import chat_items, prompts
from shared import keys
from tests.helpers import ROOT


@dataclass(frozen=True)
class Sizes:
    repeat: int = 5
    latency: tuple[int, float, int] = (2000, 100.0, 32)  # prompts, latency ms, concurrency
    cpu: tuple[int, float, int] = (4000, 20.0, 64)
    first: int = 15  # one-prompt batches
    scale: scale.ScaleSizes = field(default_factory=scale.ScaleSizes)
    sharing: sharing.SharingSizes = field(default_factory=sharing.SharingSizes)
    memory: tuple[int, float, int] = (50_000, 20.0, 64)
    storage: tuple[int, int] = (50_000, 1200)  # items, bytes of JSON each
    paced: tuple[int, int] = (300, 1200)  # prompts, the mock's requests per minute
    pollers: tuple[int, float, float] = (200, 30.0, 0.5)  # clients, seconds, interval
    sweep: tuple[int, ...] = (4, 8, 16, 32, 64, 128, 256)
    sweep_rounds: int = 12  # prompts per point = rounds * concurrency, at most sweep_most
    sweep_most: int = 1500
    sweep_latency_ms: float = 100.0
    embeddings: tuple[int, float, int] = (20_000, 100.0, 16)  # inputs, ms a call, concurrency


SMOKE = Sizes(
    repeat=1,
    latency=(40, 20.0, 8),
    cpu=(40, 5.0, 8),
    first=2,
    scale=scale.SMOKE,
    sharing=sharing.SMOKE,
    memory=(300, 0.0, 16),
    storage=(100, 1200),
    paced=(40, 1200),
    pollers=(4, 1.0, 0.2),
    sweep=(2, 8),
    sweep_rounds=4,
    sweep_latency_ms=10.0,
    embeddings=(300, 5.0, 4),
)


@dataclass
class Sides:
    """Runs of the same work by the direct script and by the service."""

    direct: list[float] = field(default_factory=list)
    service: list[float] = field(default_factory=list)
    direct_cpu_ms: list[float] = field(default_factory=list)
    service_cpu_ms: list[float] = field(default_factory=list)


@dataclass
class Bench:
    stack: Stack
    sizes: Sizes
    http: httpx.AsyncClient
    log: Callable[[str], None] = print
    rows: list[Row] = field(default_factory=list)
    direct_cpu_ms: list[float] = field(default_factory=list)  # the scenarios' direct runs

    async def side_by_side(
        self,
        name: str,
        count: int,
        latency_ms: float,
        concurrency: int,
        workers: int,
        repeat: int | None = None,
    ) -> Sides:
        """Direct script and service on the same work, alternating (and which goes first
        alternating too): seconds of each run, and CPU per item of each side."""
        sides = Sides()
        payload = body(prompts(count), concurrency)
        async with self.stack.workers(workers, latency_ms) as procs:
            # A service's workers are long-lived: warmed by one small batch first (their HTTP
            # pools connected, the provider's first answer heard). The script starts cold
            # every run, as a user's script does.
            await run_batch(self.http, body(prompts(2 * concurrency), concurrency), 0.02)
            pids = [p.pid for p in procs]
            for i in range(repeat or self.sizes.repeat):
                for side in ("direct", "service") if i % 2 == 0 else ("service", "direct"):
                    if side == "direct":
                        result = await self.stack.direct(latency_ms, count, concurrency)
                        if result["failed"]:
                            raise RuntimeError(f"{name}: the direct script had failures")
                        sides.direct.append(result["seconds"])
                        sides.direct_cpu_ms.append(result["cpu_s"] * 1000 / count)
                    else:
                        cpu = await cpu_s(*pids)
                        sides.service.append((await run_batch(self.http, payload, 0.02)).seconds)
                        cpu = await cpu_s(*pids) - cpu
                        sides.service_cpu_ms.append(cpu * 1000 / count)
                self.log(f"  {name} run {i + 1}: direct {sides.direct[-1]:.2f} s, "
                         f"service {sides.service[-1]:.2f} s")  # fmt: skip
        return sides

    async def throughput(self, name: str, spec: tuple[int, float, int], workers: int,
                         target: float) -> None:  # fmt: skip
        count, latency_ms, concurrency = spec
        sides = await self.side_by_side(name, count, latency_ms, concurrency, workers)
        ideal = count / (concurrency / (latency_ms / 1000))
        d, s = statistics.median(sides.direct), statistics.median(sides.service)
        self.direct_cpu_ms += sides.direct_cpu_ms
        self.rows.append(Row(
            name=f"{name}: {count} prompts, {latency_ms:g} ms, concurrency {concurrency}, "
                 f"{workers} worker{'s' * (workers > 1)}",
            unit="s", service=s, direct=d, ideal=ideal, target=f"≤ {target:g}× direct",
            met=s <= target * d, runs=len(sides.service),
            extra=f"CPU per item: workers {statistics.median(sides.service_cpu_ms):.2f} ms, "
                  f"direct script {statistics.median(sides.direct_cpu_ms):.2f} ms",
        ))  # fmt: skip

    async def first_result(self) -> None:
        latency_ms = self.sizes.latency[1]
        payload = body(prompts(1), 1)
        waits: list[float] = []
        direct: list[float] = []
        async with self.stack.workers(1, latency_ms):
            for _ in range(self.sizes.first):
                waits.append((await run_batch(self.http, payload, 0.005)).seconds * 1000)
                direct.append((await self.stack.direct(latency_ms, 1, 1))["seconds"] * 1000)
        s = statistics.median(waits)
        self.rows.append(Row(
            name=f"first result: a one-prompt batch at {latency_ms:g} ms, POST to completed",
            unit="ms", service=s, direct=statistics.median(direct), ideal=latency_ms,
            target="≤ 150 ms", met=s <= 150, runs=len(waits),
        ))  # fmt: skip

    async def memory(self) -> None:
        count, latency_ms, concurrency = self.sizes.memory
        api_pid = self.stack.api.proc.pid
        async with self.stack.workers(2, latency_ms) as procs:
            run = await run_batch(self.http, body(prompts(count), concurrency), 0.5, keep=True)
            worker_peak = max([await rss_mb(p.pid, "VmHWM") for p in procs])
        before = await rss_mb(api_pid)
        await reset_peak(api_pid)
        began = time.perf_counter()
        lines = await stream_results(self.http, run.batch["id"])
        streamed = time.perf_counter() - began
        # The peak cannot be below the RSS at the reset; a small negative is pages given back.
        rise = max(0.0, await rss_mb(api_pid, "VmHWM") - before)
        await self.http.delete(f"/v1/batches/{run.batch['id']}")
        if lines != count:
            raise RuntimeError(f"streamed {lines} results of {count}")
        self.rows.append(Row(
            name=f"memory: {count:,} prompts over 2 workers, peak worker RSS",
            unit="MB", service=worker_peak, target="≤ 250 MB", met=worker_peak <= 250, runs=1,
        ))  # fmt: skip
        self.rows.append(Row(
            name=f"memory: streaming {count:,} results as NDJSON ({streamed:.1f} s), "
                 "API RSS rise",
            unit="MB", service=rise, target="≤ 50 MB", met=rise <= 50, runs=1,
        ))  # fmt: skip

    async def storage(self) -> None:
        """Redis bytes per item of a batch of chat items (no worker runs it: the batch as
        stored at submit), against the bytes of each item's JSON, compact."""
        count, size = self.sizes.storage
        items = chat_items(count, size)
        payload = json.dumps({"prompts": items}).encode()
        sent = sum(len(json.dumps(item, separators=(",", ":"))) for item in items)
        _, batch_id = await submit(self.http, payload)
        stored = await redis_bytes(self.stack.redis.url, keys.batch_keys(batch_id))
        await self.http.delete(f"/v1/batches/{batch_id}")
        ratio = stored / sent
        self.rows.append(Row(
            name=f"storage: {count:,} items of {sent / count / 1000:.1f} KB (messages and "
                 "params), Redis bytes per item",
            unit="B", service=stored / count, target="≤ 1.5× the item's JSON",
            met=ratio <= 1.5, runs=1, extra=f"{ratio:.2f}× its {sent / count:.0f} B of JSON",
        ))  # fmt: skip

    async def paced(self) -> None:
        """Two workers against a provider that allows `rpm` requests a minute (and answers 429
        beyond it, with Retry-After and x-ratelimit-* headers): the limit configured, then only
        learned from the headers. Against the time the limit allows, and the 429s it took."""
        count, rpm = self.sizes.paced
        ideal = count / (rpm / 60)
        for how, settings in (("configured", {"PROMPTBATCH_RPM_LIMIT": str(rpm)}), ("learned", {})):
            mock = await asyncio.to_thread(self.stack.mock, 20.0, rpm)
            await asyncio.to_thread(mock.reset)
            await forget_pacing(self.stack.redis.url)  # each row learns (or not) afresh
            async with self.stack.workers(2, 20.0, rpm, **settings):
                run = await run_batch(self.http, body(prompts(count), 32), 0.05)
            stats = await asyncio.to_thread(mock.stats)
            share = int(str(stats["rate_limited"])) / int(str(stats["calls"]))
            target = 1.3 if how == "configured" else 1.5
            self.rows.append(Row(
                name=f"paced: {count} prompts, 2 workers, a provider allowing {rpm:,} requests "
                     f"a minute, the limit {how}",
                unit="s", service=run.seconds, ideal=ideal, target=f"≤ {target:g}× ideal",
                met=run.seconds <= target * ideal, runs=1,
                extra=f"{run.seconds / ideal:.2f}× ideal, 429s {share:.1%} of calls",
            ))  # fmt: skip
        await forget_pacing(self.stack.redis.url)  # the later rows' mocks state no limits

    async def pollers(self) -> None:
        clients, seconds, interval = self.sizes.pollers
        latency_ms = self.sizes.latency[1]
        # The batch polled is running: a worker writes its results while the clients read,
        # and it has half as many prompts again as the worker can finish in that time.
        concurrency = 16
        count = int(seconds * concurrency / (latency_ms / 1000) * 1.5)
        async with self.stack.workers(1, latency_ms):
            _, batch_id = await submit(self.http, body(prompts(count), concurrency))
            load = await poll_load(self.stack.api.url, batch_id, clients, seconds, interval)
            status = (await self.http.get(f"/v1/batches/{batch_id}")).json()["status"]
            await self.http.delete(f"/v1/batches/{batch_id}")
        if status != "in_progress":
            self.log(f"  note: the polled batch was {status} by the end")
        lat = sorted(load.latencies_ms)
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        self.rows.append(Row(
            name=f"API under load: {clients} clients polling GET /v1/batches/{{id}} every "
                 f"{interval:g} s for {seconds:g} s ({len(lat) / seconds:.0f} req/s, "
                 f"{load.errors} errors), p99",
            unit="ms", service=p99, target="≤ 50 ms, no errors",
            met=p99 <= 50 and load.errors == 0, runs=len(lat),
            extra=f"p50 {statistics.median(lat):.1f} ms",
        ))  # fmt: skip

    def steps(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """Every scenario but the sweep, in the order they run (`--only` takes these names)."""
        return [
            (
                "latency-bound",
                partial(self.throughput, "latency-bound", self.sizes.latency, 1, 1.0),
            ),
            (
                "client-CPU-bound",
                partial(self.throughput, "client-CPU-bound", self.sizes.cpu, 2, 0.6),
            ),
            ("first result", self.first_result),
            ("submit", partial(scale.submit_time, self, self.sizes.scale)),
            ("large body", partial(scale.big_body, self, self.sizes.scale)),
            ("openai file", partial(scale.openai_file, self, self.sizes.scale)),
            ("offline", partial(scale.offline, self, self.sizes.scale)),
            ("memory", self.memory),
            ("storage", self.storage),
            ("paced", self.paced),
            ("API under load", self.pollers),
            ("million", partial(scale.million, self, self.sizes.scale)),
            ("small behind big", partial(sharing.small_behind_big, self, self.sizes.sharing)),
            ("fleet utilisation", partial(sharing.fleet_utilisation, self, self.sizes.sharing)),
            ("embeddings", partial(vectors.embeddings, self, self.sizes.embeddings)),
        ]

    async def sweep(self) -> list[Sweep]:
        latency_ms = self.sizes.sweep_latency_ms
        lines: list[Sweep] = []
        for workers in (1, 2):
            line = Sweep(label=f"service, {workers} worker{'s' * (workers > 1)}")
            direct = Sweep(label="direct abatch script")
            for concurrency in self.sizes.sweep:
                count = min(self.sizes.sweep_rounds * concurrency, self.sizes.sweep_most)
                name = f"sweep c{concurrency} w{workers}"
                sides = await self.side_by_side(
                    name, count, latency_ms, concurrency, workers, repeat=1
                )
                line.points.append((concurrency, count / statistics.median(sides.service)))
                direct.points.append((concurrency, count / statistics.median(sides.direct)))
            lines.append(line)
            if workers == 1:
                lines.append(direct)
        return lines


@dataclass
class Results:
    rows: list[Row]
    sweeps: list[Sweep]
    direct_cpu_ms: float | None


async def main_async(sizes: Sizes, workdir: Path, only: set[str] | None = None) -> Results:
    print(f"starting Redis, the API and the mock provider (logs in {workdir})")
    stack = await asyncio.to_thread(Stack, workdir)
    sweeps: list[Sweep] = []
    try:
        async with httpx.AsyncClient(base_url=stack.api.url, timeout=120) as http:
            bench = Bench(stack, sizes, http)
            for name, step in bench.steps():
                if only is None or name in only:
                    print(f"{name}…")
                    await step()
            if only is None or "sweep" in only:
                print("throughput against concurrency…")
                sweeps = await bench.sweep()
    finally:
        await asyncio.to_thread(stack.close)
    cpu_ms = statistics.median(bench.direct_cpu_ms) if bench.direct_cpu_ms else None
    return Results(bench.rows, sweeps, cpu_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every scenario once, toy sizes")
    parser.add_argument("--out-dir", type=Path, default=ROOT, help="where BENCHMARKS.md goes")
    parser.add_argument("--repeat", type=int, help="alternating runs per scenario")
    parser.add_argument(
        "--only",
        help="comma-separated scenarios (their names as printed, "
        "and sweep); BENCHMARKS.md is written only for a whole run",
    )
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sizes = SMOKE if args.smoke else Sizes()
    if args.repeat:
        sizes = Sizes(**{**sizes.__dict__, "repeat": args.repeat})
    with tempfile.TemporaryDirectory(prefix="promptbatch-bench-") as workdir:
        only = {name.strip() for name in args.only.split(",")} if args.only else None
        results = asyncio.run(main_async(sizes, Path(workdir), only))
    if only is not None:
        print("\n" + table(results.rows))
        return
    publish(
        results.rows, results.sweeps, sizes.sweep_latency_ms, args.out_dir,
        smoke=args.smoke, cpu_ms=results.direct_cpu_ms,
    )  # fmt: skip


if __name__ == "__main__":
    main()
