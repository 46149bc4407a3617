"""The task a worker runs: one chunk of a batch through LangChain's batch interface."""

from __future__ import annotations

import logging
import time
from typing import Any, cast

from langchain_core.runnables import RunnableConfig

from shared.llm import build_chain, outcome_of
from shared.schemas import FINAL_BATCH_STATUSES, ErrorInfo
from worker.context import WorkerContext

log = logging.getLogger("promptbatch.worker")


async def run_chunk(ctx: dict[str, Any], batch_id: str, chunk: int) -> dict[str, int]:
    """Run the pending items of one chunk, writing each result the moment it finishes."""
    wctx = cast(WorkerContext, ctx)
    store = wctx["store"]
    spec = await store.spec(batch_id)
    if spec is None or spec.status in FINAL_BATCH_STATUSES:
        log.info("batch %s chunk %d: nothing to do (batch gone or final)", batch_id, chunk)
        return {"written": 0}
    model = wctx["models"].get(spec.provider)
    if model is None:
        reason = f"This worker has no '{spec.provider}' provider configured."
        await store.fail(batch_id, ErrorInfo(type="provider_unavailable", message=reason))
        log.error("batch %s: provider %s not configured on this worker", batch_id, spec.provider)
        return {"written": 0}

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
