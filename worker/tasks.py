"""The task a worker runs: one chunk of a batch through LangChain's batch interface."""

from __future__ import annotations

import logging
import time
from typing import Any, cast

from arq import Retry
from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig
from redis.exceptions import RedisError

from shared.llm import build_chain, outcome_of
from shared.schemas import FINAL_BATCH_STATUSES, ErrorInfo
from shared.store import BatchSpec, BatchStore
from worker.context import WorkerContext

log = logging.getLogger("promptbatch.worker")

REDIS_RETRY_DELAY_S = 5


async def run_chunk(ctx: dict[str, Any], batch_id: str, chunk: int) -> dict[str, int]:
    """Run the pending items of one chunk, writing each result the moment it finishes."""
    wctx = cast(WorkerContext, ctx)
    store = wctx["store"]
    try:
        spec = await store.spec(batch_id)
        if spec is None or spec.status in FINAL_BATCH_STATUSES:
            log.info("batch %s chunk %d: nothing to do (batch gone or final)", batch_id, chunk)
            return {"written": 0}
        model = wctx["models"].get(spec.provider)
        if model is None:
            reason = f"This worker has no '{spec.provider}' provider configured."
            await store.fail(batch_id, ErrorInfo(type="provider_unavailable", message=reason))
            log.error("batch %s: provider %s not on this worker", batch_id, spec.provider)
            return {"written": 0}
        return await _run(store, spec, model, chunk)
    except RedisError as exc:
        # Redis went away mid-chunk: run the chunk again later; finished items are skipped.
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


async def _run(
    store: BatchStore, spec: BatchSpec, model: BaseChatModel, chunk: int
) -> dict[str, int]:
    batch_id = spec.id
    start, stop = spec.chunk_bounds(chunk)
    await store.mark_started(batch_id)
    pending = await store.pending_items(batch_id, start, stop)
    chain = build_chain(model, spec.model, spec.system, spec.params)
    prompts = [prompt for _, prompt in pending]
    log.info(
        "batch %s chunk %d: %d of %d items pending, concurrency %d",
        batch_id, chunk, len(pending), stop - start, spec.max_concurrency,
    )  # fmt: skip

    began = time.perf_counter()
    counts = {"written": 0, "failed": 0}
    config = RunnableConfig(max_concurrency=spec.max_concurrency)
    async for position, result in chain.abatch_as_completed(
        prompts, config=config, return_exceptions=True
    ):
        outcome = outcome_of(result)
        written = await store.record(batch_id, pending[position][0], outcome)
        if written in ("written", "finished"):
            counts["written"] += 1
            counts["failed"] += outcome.status == "failed"
    log.info(
        "batch %s chunk %d: %d written (%d failed) in %.2fs",
        batch_id, chunk, counts["written"], counts["failed"], time.perf_counter() - began,
    )  # fmt: skip
    return counts
