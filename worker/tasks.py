"""The task a worker runs: one chunk of a batch through LangChain's batch interface."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, cast

from arq import Retry
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from redis.exceptions import RedisError

from shared import keys
from shared.limiter import BatchLimiter
from shared.llm import build_chain, outcome_of
from shared.schemas import FINAL_BATCH_STATUSES, ErrorInfo
from shared.store import BatchSpec, BatchStore, ItemOutcome
from worker.context import WorkerContext

log = logging.getLogger("promptbatch.worker")

REDIS_RETRY_DELAY_S = 5

Item = tuple[int, str]


class ChunkStopped(Exception):
    """This run must start no more provider calls (its claim on the chunk was lost)."""


async def run_chunk(ctx: dict[str, Any], batch_id: str, chunk: int) -> dict[str, int]:
    """Run the pending items of one chunk, writing each result the moment it finishes.

    The chunk is claimed for a short lease that the worker renews while it lives, so if this
    process is killed another worker resumes the chunk's unfinished items soon after. A run
    that ends in any way but death (done, SIGTERM, an error) does not count as an attempt.
    """
    wctx = cast(WorkerContext, ctx)
    store = wctx["store"]
    job_id = str(ctx.get("job_id") or keys.job_id(batch_id, chunk))
    try:
        async with wctx["leases"].hold(job_id) as lost:
            attempt = await store.begin_attempt(batch_id, chunk)
            try:
                return await _run_attempt(wctx, batch_id, chunk, attempt, lost)
            finally:
                with contextlib.suppress(RedisError):
                    await store.end_attempt(batch_id, chunk)
    except RedisError as exc:
        # Redis stayed away longer than the client's retries: run the chunk again later;
        # finished items are skipped.
        log.warning(
            "batch %s chunk %d: Redis error (%s), retrying", batch_id, chunk, type(exc).__name__
        )
        raise Retry(defer=REDIS_RETRY_DELAY_S) from exc
    except Exception as exc:
        # The type only: an exception's text may quote a prompt, and prompts never reach logs.
        log.error("batch %s chunk %d: could not run (%s)", batch_id, chunk, type(exc).__name__)
        reason = f"The worker could not run this batch ({type(exc).__name__})."
        await store.fail(batch_id, ErrorInfo(type="internal_error", message=reason))
        return {"written": 0}


async def _run_attempt(
    ctx: WorkerContext, batch_id: str, chunk: int, attempt: int, stop: asyncio.Event
) -> dict[str, int]:
    store = ctx["store"]
    spec = await store.spec(batch_id)
    if spec is None or spec.status in FINAL_BATCH_STATUSES:
        log.info("batch %s chunk %d: nothing to do (batch gone or final)", batch_id, chunk)
        return {"written": 0}
    model = ctx["models"].get(spec.provider)
    if model is None:
        reason = f"This worker has no '{spec.provider}' provider configured."
        await store.fail(batch_id, ErrorInfo(type="provider_unavailable", message=reason))
        log.error("batch %s: provider %s not on this worker", batch_id, spec.provider)
        return {"written": 0}
    limit = ctx["settings"].chunk_max_attempts
    if attempt > limit:
        failed = await store.fail_pending(spec, chunk, _worker_lost(attempt - 1))
        log.error(
            "batch %s chunk %d: its worker died %d times; %d items failed",
            batch_id, chunk, attempt - 1, failed,
        )  # fmt: skip
        return {"written": failed, "failed": failed}
    async with ctx["limiters"].hold(spec.id, spec.max_concurrency) as limiter:
        return await _run_items(store, spec, model, chunk, limiter, stop)


def _worker_lost(deaths: int) -> ErrorInfo:
    return ErrorInfo(
        type="worker_lost",
        message=(
            f"The worker running this item stopped without finishing it {deaths} times "
            "(killed, out of memory or crashed), so it was not tried again."
        ),
    )


async def _run_items(
    store: BatchStore,
    spec: BatchSpec,
    model: BaseChatModel,
    chunk: int,
    limiter: BatchLimiter,
    stop: asyncio.Event,
) -> dict[str, int]:
    start, end = spec.chunk_bounds(chunk)
    await store.mark_started(spec.id)
    pending = await store.pending_items(spec.id, start, end)
    log.info(
        "batch %s chunk %d: %d of %d items pending, concurrency %d",
        spec.id, chunk, len(pending), end - start, spec.max_concurrency,
    )  # fmt: skip
    began = time.perf_counter()
    counts = {"written": 0, "failed": 0, "stopped": 0}
    items = _item_runnable(build_chain(model, spec.model, spec.system, spec.params), limiter, stop)
    config = RunnableConfig(max_concurrency=spec.max_concurrency)
    async for position, result in items.abatch_as_completed(
        pending, config=config, return_exceptions=True
    ):
        index = pending[position][0]
        if isinstance(result, ChunkStopped):
            counts["stopped"] += 1
            continue
        outcome = _outcome(index, result)
        if await store.record(spec, index, outcome) in ("written", "finished"):
            counts["written"] += 1
            counts["failed"] += outcome.status == "failed"
    log.info(
        "batch %s chunk %d: %d written (%d failed, %d left for another run) in %.2fs",
        spec.id, chunk, counts["written"], counts["failed"], counts["stopped"],
        time.perf_counter() - began,
    )  # fmt: skip
    return counts


def _item_runnable(
    chain: Runnable[str, BaseMessage], limiter: BatchLimiter, stop: asyncio.Event
) -> Runnable[Item, tuple[int, BaseMessage]]:
    """One item -> (its index, the model's reply), holding one of the batch's slots meanwhile.

    The index travels with the reply, so a reply can never be written to another item.
    """

    async def call(item: Item, config: RunnableConfig) -> tuple[int, BaseMessage]:
        index, prompt = item
        async with limiter.slot():
            if stop.is_set():
                raise ChunkStopped
            return index, await chain.ainvoke(prompt, config)

    return RunnableLambda(call, name="promptbatch_item")


def _outcome(index: int, result: tuple[int, BaseMessage] | BaseException) -> ItemOutcome:
    if isinstance(result, BaseException):
        return outcome_of(result)
    replied_for, message = result
    if replied_for != index:  # never store one item's reply as another's
        log.error("item %d got the reply meant for item %d; failing it", index, replied_for)
        error = ErrorInfo(type="internal_error", message="The reply was for another item.")
        return ItemOutcome(status="failed", error=error)
    return outcome_of(message)
