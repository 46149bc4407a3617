"""Prometheus metrics for the whole service, kept in Redis so every process and host adds up.

Counters that the store's scripts keep (batches, items, tokens) and what workers add (provider
latency, provider responses) live in one hash, `keys.STATS`; gauges (batches by status, queued
jobs, workers alive) are read at scrape time. Whichever API process is scraped answers for all,
so there is no per-process directory to share, across processes or across hosts.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from shared import keys, scheduler, workers
from shared.schemas import (
    ACTIVE_BATCH_STATUSES,
    BATCH_STATUSES,
    FINAL_BATCH_STATUSES,
    FINAL_ITEM_STATUSES,
)

#: Upper bounds (seconds) of the provider-latency histogram's buckets.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, math.inf)

FINAL_STATUSES = tuple(s for s in BATCH_STATUSES if s in FINAL_BATCH_STATUSES)
#: The prefix of the stats fields counting provider batches by status (`<prefix><status>`).
PROVIDER_BATCHES = "provider_batches:"

#: The statuses of batches the scheduler gives job slots to.
RUNNABLE_STATUSES = ("queued", "in_progress")


class WorkerMetrics:
    """What one worker observed since its last flush; `flush` adds it to the shared hash."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._latency_sum = 0.0
        self._flushing = asyncio.Lock()

    def observe_latency(self, seconds: float) -> None:
        bucket = next(le for le in LATENCY_BUCKETS if seconds <= le)
        self._counts[f"latency:bucket:{bucket}"] += 1
        self._counts["latency:count"] += 1
        self._latency_sum += seconds

    def count_response(self, status_code: int) -> None:
        self._counts[f"provider:responses:{status_code}"] += 1

    async def flush(self, redis: Redis) -> None:
        """Add what was observed to Redis; kept for the next flush if Redis is away.

        A flush runs to its end even if its caller is cancelled (the worker stopping), and the
        next one waits for it: counts sent are never sent again, nor lost unsent.
        """
        await asyncio.shield(self._flush(redis))

    async def _flush(self, redis: Redis) -> None:
        async with self._flushing:
            counts, latency_sum = dict(self._counts), self._latency_sum
            if not counts:
                return
            async with redis.pipeline(transaction=True) as pipe:
                for name, value in counts.items():
                    pipe.hincrby(keys.STATS, name, value)
                pipe.hincrbyfloat(keys.STATS, "latency:sum", latency_sum)
                await pipe.execute()
            self._counts.subtract(counts)
            self._counts = +self._counts  # drop the zeros
            self._latency_sum -= latency_sum


async def render(redis: Redis, alive_s: float) -> bytes:
    """The service's metrics in Prometheus text format."""
    raw = await redis.hgetall(keys.STATS)  # type: ignore[misc]
    stats = {k.decode(): v.decode() for k, v in raw.items()}
    active = [raw_id.decode() for raw_id in await redis.zrange(keys.ACTIVE, 0, -1)]
    async with redis.pipeline(transaction=False) as pipe:
        for batch_id in active:
            pipe.hget(keys.batch(batch_id), "status")
        statuses = Counter(s.decode() for s in await pipe.execute() if s is not None)
    queued = int(await redis.zcard(keys.QUEUE))
    busy, slots = await workers.job_slots(redis, alive_s)
    fleet = _Fleet(
        queued=queued,
        waiting=await scheduler.due_jobs(redis, time.time_ns() // 1_000_000),
        busy=busy,
        slots=slots,
        alive=await workers.alive(redis, alive_s),
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(stats, statuses, fleet))
    return generate_latest(registry)


@dataclass(frozen=True)
class _Fleet:
    """The queue and the workers, as read a moment ago."""

    queued: int  # chunk jobs on the queue: waiting, running, or due later
    waiting: int  # of those, due and waiting for a job slot
    busy: int  # job slots running a chunk, over the workers alive
    slots: int  # job slots of the workers alive
    alive: int  # workers alive


class _Snapshot(Collector):
    """Metric families from values read from Redis a moment ago."""

    def __init__(
        self, stats: Mapping[str, str], statuses: Mapping[str, int], fleet: _Fleet
    ) -> None:
        self.stats, self.statuses, self.fleet = stats, statuses, fleet

    def _n(self, name: str) -> float:
        return float(self.stats.get(name, 0))

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "promptbatch_batches_created", "Batches accepted.", value=self._n("batches:created")
        )
        finished = CounterMetricFamily(
            "promptbatch_batches_finished", "Batches that became final.", labels=["status"]
        )
        for status in FINAL_STATUSES:
            finished.add_metric([status], self._n(f"batches:{status}"))
        yield finished
        running = GaugeMetricFamily(
            "promptbatch_batches", "Batches not yet final, by status.", labels=["status"]
        )
        for status in ACTIVE_BATCH_STATUSES:
            running.add_metric([status], self.statuses.get(status, 0))
        yield running
        items = CounterMetricFamily(
            "promptbatch_items", "Items that became final, by status.", labels=["status"]
        )
        for item_status in FINAL_ITEM_STATUSES:
            items.add_metric([item_status], self._n(f"items:{item_status}"))
        yield items
        tokens = CounterMetricFamily("promptbatch_tokens", "Tokens used.", labels=["kind"])
        for kind in ("input", "output"):
            tokens.add_metric([kind], self._n(f"tokens:{kind}"))
        yield tokens
        # Parts of the input and output tokens above, so not more values of their label.
        yield CounterMetricFamily(
            "promptbatch_cached_tokens", "Input tokens read from the provider's prompt cache.",
            value=self._n("tokens:cached"),
        )  # fmt: skip
        yield CounterMetricFamily(
            "promptbatch_reasoning_tokens", "Output tokens a reasoning model spent thinking.",
            value=self._n("tokens:reasoning"),
        )  # fmt: skip
        yield CounterMetricFamily(
            "promptbatch_pacing_wait_seconds",
            "Time provider calls waited for their turn under the provider's rate limits.",
            value=self._n("pacing:wait_ms") / 1000,
        )
        yield CounterMetricFamily(
            "promptbatch_provider_rate_limited",
            "Provider calls answered 429 (each waited out and made again).",
            value=self._n("pacing:rate_limited"),
        )
        yield self._responses()
        yield self._latency()
        yield self._provider_batches()
        yield from self._fleet()

    def _provider_batches(self) -> Metric:
        """Batches handed to the provider's Batch API, by the status the provider last gave
        (`worker/handoff.py` moves each from status to status)."""
        family = GaugeMetricFamily(
            "promptbatch_provider_batches",
            "Provider batches (mode provider_batch), by their status at the provider.",
            labels=["status"],
        )
        for name in sorted(self.stats):
            if name.startswith(PROVIDER_BATCHES):
                family.add_metric([name.removeprefix(PROVIDER_BATCHES)], self._n(name))
        return family

    def _fleet(self) -> Iterator[Metric]:
        fleet = self.fleet
        yield GaugeMetricFamily(
            "promptbatch_queue_jobs", "Chunk jobs queued or running.", value=fleet.queued
        )
        yield GaugeMetricFamily(
            "promptbatch_runnable_batches",
            "Batches that can run (queued or in progress): the scheduler shares the job slots "
            "among them.",
            value=sum(self.statuses.get(status, 0) for status in RUNNABLE_STATUSES),
        )
        yield _by_state(
            "promptbatch_chunk_jobs",
            "Chunk jobs on the queue waiting for a job slot, and running in one.",
            queued=fleet.waiting,
            running=fleet.busy,
        )
        yield _by_state(
            "promptbatch_job_slots",
            "Job slots of the workers alive (max_jobs each), and those running a chunk.",
            busy=fleet.busy,
            alive=fleet.slots,
        )
        yield GaugeMetricFamily(
            "promptbatch_workers_alive", "Workers with a recent heartbeat.", value=fleet.alive
        )

    def _responses(self) -> Metric:
        family = CounterMetricFamily(
            "promptbatch_provider_responses",
            "Provider HTTP responses by status code; 429 and 5xx ones are retried.",
            labels=["code"],
        )
        prefix = "provider:responses:"
        for name in sorted(n for n in self.stats if n.startswith(prefix)):
            family.add_metric([name.removeprefix(prefix)], self._n(name))
        return family

    def _latency(self) -> Metric:
        cumulative, buckets = 0.0, []
        for le in LATENCY_BUCKETS:
            cumulative += self._n(f"latency:bucket:{le}")
            buckets.append(("+Inf" if le == math.inf else str(le), cumulative))
        return HistogramMetricFamily(
            "promptbatch_provider_latency_seconds",
            "Time from a provider call's start to its answer, retries included.",
            buckets=buckets,
            sum_value=self._n("latency:sum"),
        )


def _by_state(name: str, documentation: str, **states: int) -> Metric:
    """A gauge with one value per `state` label."""
    family = GaugeMetricFamily(name, documentation, labels=["state"])
    for state, value in states.items():
        family.add_metric([state], value)
    return family
