"""A worker's hold on its chunks against a real Redis: a run whose chunk another worker took
over leaves the job to it (run by arq's own job code), and leases are renewed while a metrics
flush is stalled (the worker's real startup)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import langsmith
import pytest
from arq.connections import ArqRedis
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult
from pydantic import PrivateAttr
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from api.lifecycle import submit
from shared import jobs, keys, scheduler
from shared.metrics import WorkerMetrics
from shared.settings import TRACING_VARS
from shared.store import BatchStore
from tests.conftest import make_settings
from tests.helpers import free_port, wait_for
from tests.store.conftest import make_plan
from tests.store.workers import arq_worker, worker_ctx
from worker import main
from worker.llm import OfflineChatModel
from worker.scheduler import Leases

#: Bounds a wait for something the test itself brings about (a failure, never a pace).
WAIT_S = 30


class _GatedModel(OfflineChatModel):
    """The offline model, its replies held until the test opens the gate."""

    _entered: asyncio.Event = PrivateAttr(default_factory=asyncio.Event)
    _gate: asyncio.Event = PrivateAttr(default_factory=asyncio.Event)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self._entered.set()
        await self._gate.wait()
        return await super()._agenerate(messages, stop, run_manager, **kwargs)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    client = ArqRedis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_a_run_whose_chunk_was_taken_over_leaves_the_job_to_the_new_owner(
    redis: ArqRedis, redis_url: str
) -> None:
    settings = make_settings(redis_url)
    model = _GatedModel()
    stalled = worker_ctx(redis, settings, "stalled-worker", model)
    store: BatchStore = stalled["store"]
    plan = make_plan(4, max_concurrency=1)
    batch, _ = await submit(store, plan, make_settings(redis_url, chunk_size=4))
    job_id = keys.job_id(batch.id, 0)
    worker = arq_worker(settings, redis, stalled)
    await worker.start_jobs([job_id.encode()])  # as arq's poll does: claim it, run it
    run = worker.tasks[job_id]
    await asyncio.wait_for(model._entered.wait(), WAIT_S)  # a provider call in flight

    # Meanwhile this worker stalled past its lease; another started the job and claimed it.
    await redis.delete(jobs.arq_in_progress(job_id))  # its lease lapsed
    new_owner = Leases(redis, "new-owner", settings.lease_s)
    async with new_owner.hold(batch.id, 0):
        assert await stalled["leases"].renew() == [job_id]  # the stalled worker's next renewal
        model._gate.set()
        await asyncio.wait_for(run, WAIT_S)  # the run stops, and arq deals with the job

        score = await redis.zscore(keys.QUEUE, job_id)
        assert score is not None
        assert score > time.time() * 1000  # due only after the new owner's next renewal
        assert await redis.exists(jobs.arq_job(job_id))  # its record kept for that run's end
        assert await new_owner.renew() == []  # the new owner keeps (takes back) its claim
        assert await redis.get(jobs.arq_in_progress(job_id)) == b"new-owner"
        third = arq_worker(settings, redis, worker_ctx(redis, settings, "third-worker", model))
        await third.start_jobs([job_id.encode()])
        assert job_id not in third.tasks  # nobody else starts it meanwhile

    page = await store.results_page(batch.id, after=None, limit=10)
    assert [i.status for i in page.data] == ["succeeded"] + ["pending"] * 3  # left to the owner


async def test_a_run_whose_batch_was_deleted_meanwhile_leaves_nothing_queued(
    redis: ArqRedis, redis_url: str
) -> None:
    settings = make_settings(redis_url)
    model = _GatedModel()
    ctx = worker_ctx(redis, settings, "worker", model)
    store: BatchStore = ctx["store"]
    batch, _ = await submit(
        store, make_plan(2, max_concurrency=1), make_settings(redis_url, chunk_size=2)
    )
    job_id = keys.job_id(batch.id, 0)
    worker = arq_worker(settings, redis, ctx)
    await worker.start_jobs([job_id.encode()])
    run = worker.tasks[job_id]
    await asyncio.wait_for(model._entered.wait(), WAIT_S)
    await store.remove(batch.id)  # deleted, with its jobs (as the API's delete does)
    await scheduler.drop_jobs(redis, [job_id])
    assert await ctx["leases"].renew() == [job_id]
    model._gate.set()
    await asyncio.wait_for(run, WAIT_S)
    assert await redis.zscore(keys.QUEUE, job_id) is None  # not put back for nobody
    assert await redis.exists(jobs.arq_job(job_id), jobs.arq_in_progress(job_id)) == 0


class _StalledMetrics(WorkerMetrics):
    """Metrics whose flush stalls (as on a slow Redis call) until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = asyncio.Event()
        self.release = asyncio.Event()

    async def flush(self, redis: Redis) -> None:
        self.stalled.set()
        await self.release.wait()
        await super().flush(redis)


async def test_leases_are_renewed_while_a_metrics_flush_is_stalled(
    redis: ArqRedis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(
        redis_url,
        worker_heartbeat_s=0.1,
        worker_alive_s=1,
        lease_s=1,
        reconcile_s=60,
        worker_redis_retry_s=0.5,
    )
    monkeypatch.setattr(main, "get_settings", lambda: settings)
    monkeypatch.setattr(main, "WorkerMetrics", _StalledMetrics)
    for name in TRACING_VARS:  # startup turns tracing off: for this test only
        monkeypatch.setenv(name, "")
    handlers = list(logging.getLogger("promptbatch").handlers)
    ctx: dict[str, Any] = {"redis": redis}
    await main.startup(ctx)
    try:
        metrics: _StalledMetrics = ctx["metrics"]
        await asyncio.wait_for(metrics.stalled.wait(), WAIT_S)
        claim = jobs.arq_in_progress(keys.job_id("batch_x", 0))
        async with ctx["leases"].hold("batch_x", 0):
            await redis.persist(claim)  # renewed from here on, or it never expires

            async def renewed() -> bool:
                return int(await redis.pttl(claim)) > 0

            await wait_for(renewed, WAIT_S, what="the lease to be renewed")
            beat = await redis.zscore(keys.WORKERS, ctx["worker_id"])

            async def beating() -> bool:
                now = await redis.zscore(keys.WORKERS, ctx["worker_id"])
                return now is not None and beat is not None and now > beat

            await wait_for(beating, WAIT_S, what="another liveness beat")
            assert not metrics.release.is_set()  # the flush was stalled all along
    finally:
        ctx["metrics"].release.set()
        await main.shutdown(ctx)
        langsmith.configure(enabled=None)
        logger = logging.getLogger("promptbatch")
        for handler in logger.handlers[len(handlers) :]:
            logger.removeHandler(handler)


async def test_the_worker_rides_out_redis_for_its_retry_window_when_refused_at_once() -> None:
    """A refused connect fails at once: the worker's client keeps trying for its retry window
    (here 2 s), as a count of attempts sized for connects that time out did not (it gave up
    after one retry, within a tenth of a second, and a Redis restart of a few seconds sent a
    chunk's calls in flight round again)."""
    port = free_port()  # nothing listens there
    settings = make_settings(f"redis://127.0.0.1:{port}/0", worker_redis_retry_s=2)
    rs = main.arq_redis_settings(settings)
    client = Redis(
        host="127.0.0.1", port=port, retry=rs.retry, retry_on_error=rs.retry_on_error,
        socket_connect_timeout=rs.conn_timeout,
    )  # fmt: skip
    began = time.monotonic()
    with pytest.raises(RedisConnectionError):
        await client.ping()
    await client.aclose()
    assert 1.0 <= time.monotonic() - began <= 5.0
