"""arq entry point: `arq worker.main.WorkerSettings` (any number, on any number of hosts).

The seam to arq, worker side: its settings, the job function it calls, and its Redis connection.
Nothing else in the worker imports arq (the shared side of the seam is `shared/jobs.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, ClassVar, TypeVar, cast

import langsmith
import langsmith.utils
import openai
import uvloop
from arq import Retry
from arq.connections import RedisSettings
from arq.worker import Function, func
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import AbstractBackoff, ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import keys, workers
from shared.jobs import RUN_CHUNK, dumps_job, loads_job
from shared.metrics import WorkerMetrics
from shared.settings import (
    Settings,
    SettingsError,
    get_settings,
    tracing_asked,
    turn_tracing_off,
)
from shared.store import BatchStore
from shared.webhooks import WebhookEndpoints
from worker import tasks
from worker.concurrency import Limiters
from worker.context import CURRENT_CALL, Attempts, WorkerContext, Writes
from worker.embeddings import build_embedders
from worker.llm import OVERLOADED, build_batch_api, build_models
from worker.pacing import Pacer, ProviderSaid, model_of
from worker.providers import ProviderModels
from worker.scheduler import Leases, reconcile, take_turn
from worker.watch import BatchWatch
from worker.webhooks import Outbox, Sender

log = logging.getLogger("promptbatch.worker")

T = TypeVar("T")

#: Longest pause between a worker's retries of a Redis command while Redis is away.
REDIS_BACKOFF_CAP_S = 2.0


async def run_chunk(ctx: dict[str, Any], batch_id: str, chunk: int) -> dict[str, int]:
    """The job arq runs for one chunk (`tasks.run_chunk`); a chunk to run again later is
    handed back to arq's queue: due when the scheduler made it, or after its delay."""
    try:
        return await tasks.run_chunk(ctx, batch_id, chunk)
    except tasks.RunLater as later:
        raise Retry(defer=later.defer_s) from later.__cause__


class WindowRetry(RedisRetry):
    """Retry a failed Redis command with backoff until `window_s` has passed since its first
    failure: a window of time, not a count of attempts, since a refused connect fails at once
    and a timed-out one only after its timeout (a count of 6 rode out 6 s of a restart, or
    24). The last wait ends with the window, and one last attempt is made then."""

    __slots__ = ("_window_s",)

    def __init__(self, backoff: AbstractBackoff, window_s: float) -> None:
        super().__init__(backoff, retries=-1)
        self._window_s = window_s

    async def call_with_retry(
        self, do: Callable[[], Awaitable[T]], fail: Callable[[RedisError], Any]
    ) -> T:
        self._backoff.reset()  # type: ignore[no-untyped-call]
        failures, first = 0, 0.0
        while True:
            try:
                return await do()
            except self._supported_errors as error:
                failures += 1
                first = first or time.monotonic()
                await fail(error)
                left_s = self._window_s - (time.monotonic() - first)
                if left_s <= 0:
                    raise error
                await asyncio.sleep(min(self._backoff.compute(failures), left_s))


def arq_redis_settings(settings: Settings) -> RedisSettings:
    """arq's connection settings for a worker: REDIS_URL, plus retries with backoff so that the
    worker rides out a Redis restart (at most `redis_retry_s`) instead of dying."""
    rs = RedisSettings.from_dsn(settings.require_redis_url())
    rs.conn_timeout = max(1, round(settings.redis_timeout_s))
    rs.conn_retries = 0  # the retry policy below already covers the first connection
    backoff = ExponentialWithJitterBackoff(cap=REDIS_BACKOFF_CAP_S, base=0.05)
    rs.retry = WindowRetry(backoff, settings.redis_retry_s)
    # OSError: a refused or timed-out connect (redis-py retries those inside `connect`);
    # ConnectionError covers a dropped connection and the LOADING reply after a restart.
    rs.retry_on_error = [OSError, RedisConnectionError, RedisTimeoutError]
    return rs


async def startup(ctx: dict[str, Any]) -> None:
    """Build this process's clients once: the store, the HTTP pool, the chat models."""
    settings = get_settings()
    _show_logs()
    _limit_tracing(settings)
    # One HTTP pool per process and event loop, shared by every batch this worker runs: the
    # OpenAI SDK's client on its aiohttp transport, which costs about a third of the CPU per
    # call of its default (httpx) transport (BENCHMARKS.md).
    metrics = WorkerMetrics()
    pacer = Pacer(ctx["redis"], settings.rpm_limit, settings.tpm_limit)

    async def count_response(response: Any) -> None:
        metrics.count_response(response.status_code)
        said = ProviderSaid.of(response.status_code, response.headers)
        if said is None:
            return
        if response.status_code in (429, OVERLOADED):  # Anthropic's 529 means "later" too
            # Retried by the item's call, after its turn in the shared buckets, rather than
            # at once by the SDK (which honours this header): a retry is paced like any call.
            response.headers["x-should-retry"] = "false"
            if (run := CURRENT_CALL.get()) is not None:
                run.rate_limited += 1
        with contextlib.suppress(Exception):  # learning must never break the call itself
            pacer.observe(model_of(response.request), said)

    http = openai.DefaultAioHttpClient(event_hooks={"response": [count_response]})
    worker_id = workers.worker_id(socket.gethostname(), os.getpid(), secrets.token_hex(3))
    store = BatchStore(ctx["redis"], result_ttl_s=settings.result_ttl_s)
    ctx.update(
        settings=settings,
        store=store,
        watch=BatchWatch(store),
        metrics=metrics,
        writes=Writes(store),
        attempts=Attempts(store),
        http=http,
        models=build_models(settings, http),
        embedders=build_embedders(settings, http),
        provider_models=ProviderModels(settings, count_response),
        batch_api=build_batch_api(settings),
        worker_id=worker_id,
        limiters=Limiters(ctx["redis"], worker_id, ttl_s=settings.worker_alive_s),
        pacer=pacer,
        leases=Leases(ctx["redis"], worker_id, settings.lease_s),
    )
    wctx = cast(WorkerContext, ctx)
    beat_s = settings.worker_heartbeat_s
    # One task per chore of the heartbeat, so that none waits for another: a flush stalled on
    # a slow Redis must not hold up the renewals that keep this worker's leases alive.
    ctx["heartbeat"] = _every("heartbeat", beat_s, partial(_beat, wctx), limit_s=beat_s)
    ctx["renewer"] = _every("lease renewal", beat_s, partial(_renew, wctx), limit_s=beat_s)
    ctx["flusher"] = _every("metrics flush", beat_s, partial(_flush, wctx))
    ctx["reconciler"] = asyncio.create_task(_reconciler(wctx), name="reconciler")
    ctx["watcher"] = asyncio.create_task(_watcher(wctx), name="watcher")
    # Webhooks: one task reads the outbox into scheduled deliveries, one sends those due.
    endpoints = WebhookEndpoints(ctx["redis"])
    sender = ctx["webhook_sender"] = Sender(ctx["redis"], endpoints, settings)
    outbox = Outbox(ctx["redis"], endpoints, worker_id, settings, scheduled=sender.wake)
    ctx["outbox_reader"] = asyncio.create_task(outbox.run(), name="webhook outbox")
    ctx["deliverer"] = asyncio.create_task(sender.run(), name="webhook sender")
    # What start-up made lives as long as the process: out of the garbage collector's sight,
    # its full collections (which stop the event loop) walk only what batches make.
    gc.collect()
    gc.freeze()
    offered = [*ctx["models"], *ctx["provider_models"].offered()]
    log.info("worker %s up; providers: %s", worker_id, ", ".join(offered))


async def shutdown(ctx: dict[str, Any]) -> None:
    """Finish result writes, stop the heartbeat (so readiness drops at once) and the webhook
    tasks (an attempt in flight is due again at once, for another worker), give back slots,
    close the HTTP pools."""
    wctx = cast(WorkerContext, ctx)
    if "writes" in ctx:
        await wctx["writes"].drain()
    if "leases" in ctx:
        await wctx["leases"].drain()
    chores = ("heartbeat", "renewer", "flusher", "reconciler", "watcher")
    for name in (*chores, "outbox_reader", "deliverer"):
        if name in ctx:
            ctx[name].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ctx[name]
    if "webhook_sender" in ctx:
        with contextlib.suppress(Exception):
            await wctx["webhook_sender"].close()
    if "limiters" in ctx:
        await wctx["limiters"].close()
    if "pacer" in ctx:
        await wctx["pacer"].drain()
    if "attempts" in ctx:
        with contextlib.suppress(Exception):
            await wctx["attempts"].record_ended()
    if "metrics" in ctx:
        with contextlib.suppress(Exception):
            await wctx["metrics"].flush(wctx["redis"])
    if "worker_id" in ctx:
        with contextlib.suppress(Exception):
            await workers.forget(wctx["redis"], wctx["worker_id"])
    if "http" in ctx:
        await wctx["http"].aclose()
    if ctx.get("batch_api") is not None:
        await wctx["batch_api"].close()  # type: ignore[union-attr]


def _every(
    what: str, period_s: float, step: Callable[[], Awaitable[None]], limit_s: float | None = None
) -> asyncio.Task[None]:
    """A task that runs `step` every period until cancelled. A step that fails, or takes
    longer than `limit_s`, is logged and run again next period: the worker keeps running."""

    async def loop() -> None:
        while True:
            try:
                async with asyncio.timeout(limit_s):
                    await step()
            except Exception as exc:  # Redis away, or too slow: try again next period
                log.warning("%s failed: %s", what, type(exc).__name__)
            await asyncio.sleep(period_s)

    return asyncio.create_task(loop(), name=what)


async def _beat(ctx: WorkerContext) -> None:
    """Say this worker is alive (and how many of its job slots run a chunk), and record runs
    that ended while Redis was away (usually none: then no Redis call)."""
    settings = ctx["settings"]
    await workers.beat(
        ctx["redis"],
        ctx["worker_id"],
        settings.worker_alive_s,
        busy=ctx["leases"].busy,
        slots=settings.worker_max_jobs,
        providers=[*ctx["models"], *ctx["provider_models"].offered()],
    )
    await ctx["attempts"].record_ended()


async def _renew(ctx: WorkerContext) -> None:
    """Renew this worker's claims on the chunks it runs; a run whose claim is lost stops."""
    for job_id in await ctx["leases"].renew():
        log.warning("job %s: claim lost to another worker; stopping this run", job_id)


async def _flush(ctx: WorkerContext) -> None:
    """Add this worker's metrics to the shared ones. No time limit: a flush runs to its end
    anyway (it is shielded), and the next one waits for it."""
    await ctx["metrics"].flush(ctx["redis"])


async def _reconciler(ctx: WorkerContext) -> None:
    """Once per period, one of the workers re-queues work that is on no queue."""
    settings = ctx["settings"]
    while True:
        try:
            if await take_turn(ctx["redis"], ctx["worker_id"], settings.reconcile_s):
                await reconcile(
                    ctx["redis"], ctx["store"], settings.lease_s, ctx["leases"].scheduler
                )
        except Exception as exc:
            log.warning("reconcile failed: %s", type(exc).__name__)
        await asyncio.sleep(settings.reconcile_s)


async def _watcher(ctx: WorkerContext) -> None:
    """Stop the runs of batches that were cancelled or deleted, within one watch period."""
    while True:
        try:
            await ctx["watch"].check()
        except Exception as exc:
            log.warning("watch failed: %s", type(exc).__name__)
        await asyncio.sleep(ctx["settings"].worker_watch_s)


def _limit_tracing(settings: Settings) -> None:
    """LangSmith tracing sends every prompt and reply to the tracing endpoint: it is off in a
    worker, whatever LANGSMITH_TRACING says, unless PROMPTBATCH_ALLOW_TRACING is true. Run
    before any model call (langsmith reads the environment once and keeps what it read)."""
    asked = tracing_asked()
    if settings.allow_tracing:
        if asked:
            names = ", ".join(asked)
            log.warning("tracing is on (%s): prompts and replies leave this worker", names)
        return
    turn_tracing_off()
    langsmith.utils.get_env_var.cache_clear()  # type: ignore[attr-defined]
    langsmith.configure(enabled=False)  # over the environment, for every task of the process
    if asked:
        log.warning(
            "tracing asked for by %s is off: it would send prompts to the tracing endpoint "
            "(PROMPTBATCH_ALLOW_TRACING=true allows it)",
            ", ".join(asked),
        )


def _show_logs() -> None:
    """arq configures only its own logger; give ours a handler too (at start, not import)."""
    logger = logging.getLogger("promptbatch")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _settings() -> Settings:
    try:
        settings = get_settings()
        settings.require_redis_url()
    except SettingsError as exc:
        raise SystemExit(f"promptbatch worker: {exc}") from None
    return settings


def worker_settings(settings: Settings) -> type:
    """What `arq` reads to run a worker. Signal handling stays on: SIGTERM cancels the running
    chunks, and arq puts them back on the queue at once for another worker."""

    class WorkerSettings:
        functions: ClassVar[list[Function]] = [func(run_chunk, name=RUN_CHUNK)]
        on_startup = startup
        on_shutdown = shutdown
        redis_settings = arq_redis_settings(settings)
        queue_name = keys.QUEUE
        job_serializer = dumps_job
        job_deserializer = loads_job
        max_jobs = settings.worker_max_jobs
        job_timeout = settings.job_timeout_s
        poll_delay = settings.worker_poll_delay_s
        # arq's record of a finished job is not needed (results live in the batch), and keeping
        # it would block queueing the same deterministic job id again.
        keep_result = 0
        # Deaths are bounded per chunk by PROMPTBATCH_CHUNK_MAX_ATTEMPTS (which then fails the
        # items with a reason); arq's own cap would drop the job without running the task.
        max_tries = 1_000_000

    return WorkerSettings


def __getattr__(name: str) -> type:
    """`WorkerSettings` is built when arq asks for it, from the environment then: importing
    this module reads no settings (so tests can import its job function)."""
    if name == "WorkerSettings":
        # arq makes the worker's event loop from the policy: uvloop's, for less CPU per call.
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return worker_settings(_settings())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
