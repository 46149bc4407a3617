"""The task a worker runs: one chunk of a batch through LangChain's batch interface."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import Any, cast

import httpx
import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable, RunnableConfig, ensure_config
from redis.exceptions import RedisError

from shared import keys, workers
from shared.batches import BatchSpec
from shared.results import ItemOutcome, PendingItem, RecordOutcome
from shared.scheduler import close_idle
from shared.schemas import EMBEDDINGS, FINAL_BATCH_STATUSES, ErrorInfo
from worker.concurrency import BatchLimiter
from worker.context import CURRENT_CALL, CallRun, WorkerContext
from worker.embeddings import run_embeddings
from worker.handoff import ChunkLost, Handoff, LookAgain, refused_for_good
from worker.llm import (
    REFUSED_KEY,
    batch_kwargs,
    call_kwargs,
    checked_outcome,
    halt_refused,
    item_chars,
    outcome_of,
    rate_limited,
    refusal_error,
    to_messages,
)
from worker.pacing import estimate_tokens
from worker.providers import OTHER_PROVIDERS
from worker.scheduler import Leases, Run

log = logging.getLogger("promptbatch.worker")

REDIS_RETRY_DELAY_S = 5


class RunLater(Exception):
    """Run this chunk again later (its finished items are skipped then): after `defer_s`, or,
    when None, when the scheduler has made its job due (`Run.due_ms`)."""

    def __init__(self, defer_s: float | None) -> None:
        super().__init__(f"run again in {defer_s} s" if defer_s is not None else "run again")
        self.defer_s = defer_s


#: How many items a run sees refused for the key (`REFUSED_KEY`) before it halts its batch.
HALT_AFTER_REFUSALS = 2


#: How soon a chunk this worker cannot run (its provider is elsewhere) is due again.
HAND_BACK_MS = 500


class _HandBack(Exception):
    """This worker lacks the batch's provider and another alive worker has it."""


class _PollLater(Exception):
    """A chunk at the provider's Batch API is still running there: run it again later."""


class ChunkStopped(Exception):
    """This run must start no more provider calls (its claim was lost, or its batch stopped)."""


async def run_chunk(ctx: dict[str, Any], batch_id: str, chunk: int) -> dict[str, int]:
    """Run the pending items of one chunk, writing each result the moment it finishes.

    The chunk is claimed for a short lease that the worker renews while it lives, so if this
    process is killed another worker resumes the chunk's unfinished items soon after. A run
    that ends in any way but death (done, SIGTERM, an error) does not count as an attempt. A
    run whose chunk another worker took over meanwhile ends with RunLater, never finished.
    """
    wctx = cast(WorkerContext, ctx)
    store, leases = wctx["store"], wctx["leases"]
    job_id = str(ctx.get("job_id") or keys.job_id(batch_id, chunk))
    held: Run | None = None
    try:
        async with leases.hold(batch_id, chunk) as held:
            try:
                counts = {"written": 0}
                if not held.lost.is_set():
                    async with wctx["attempts"].run(batch_id, chunk) as attempt:
                        counts = await _run_attempt(wctx, batch_id, chunk, attempt, held)
            except RedisError:
                held.due_ms = REDIS_RETRY_DELAY_S * 1000
                raise
        taken_over = held.lost.is_set() and await leases.taken_over(job_id)
    except _HandBack:
        log.info("batch %s chunk %d: its provider is not on this worker; handed back",
                 batch_id, chunk)  # fmt: skip
        raise RunLater(None) from None
    except _PollLater:
        raise RunLater(None) from None
    except RedisError as exc:
        # Redis stayed away longer than the client's retries: run the chunk again later;
        # finished items are skipped. Once the run began, the scheduler set when (or its
        # lease's end does); before, arq does.
        log.warning(
            "batch %s chunk %d: Redis error (%s), retrying", batch_id, chunk, type(exc).__name__
        )
        raise RunLater(None if held is not None else REDIS_RETRY_DELAY_S) from exc
    except Exception as exc:
        # The type only: an exception's text may quote a prompt, and prompts never reach logs.
        log.error("batch %s chunk %d: could not run (%s)", batch_id, chunk, type(exc).__name__)
        reason = f"The worker could not run this batch ({type(exc).__name__})."
        await store.fail(batch_id, ErrorInfo(type="internal_error", message=reason))
        return {"written": 0}
    if taken_over:
        # This worker stalled past its lease and another took the chunk over. Finished, the job
        # would be deleted by arq with that worker's claim, and that run would stop too. Run
        # later instead: the job stays queued, scored at that worker's lease (not due), and
        # that worker's next renewal takes back the claim arq deletes here.
        log.warning("batch %s chunk %d: taken over by another worker; left to it", batch_id, chunk)
        raise RunLater(None)
    return counts


async def _run_attempt(
    ctx: WorkerContext, batch_id: str, chunk: int, attempt: int, run: Run
) -> dict[str, int]:
    store = ctx["store"]
    stop = run.lost
    spec = await store.spec(batch_id)
    if spec is None or spec.status in FINAL_BATCH_STATUSES:
        log.info("batch %s chunk %d: nothing to do (batch gone or final)", batch_id, chunk)
        return {"written": 0}
    model = _chat_model(ctx, spec)
    if model is None:
        settings = ctx["settings"]
        if await workers.offering(ctx["redis"], spec.provider, settings.worker_alive_s):
            run.due_ms = HAND_BACK_MS  # a mixed fleet: for a worker that has the provider
            raise _HandBack
        reason = f"No worker alive has the '{spec.provider}' provider configured."
        await store.fail(batch_id, ErrorInfo(type="provider_unavailable", message=reason))
        log.error("batch %s: provider %s on no worker alive", batch_id, spec.provider)
        return {"written": 0}
    if spec.mode == "provider_batch":
        return await _hand_off(ctx, spec, chunk, run)
    if spec.status == "cancelling":
        closed = await store.cancel_pending(spec, chunk)
        await _close_rest(ctx, spec)
        log.info("batch %s chunk %d: cancelled %d items", batch_id, chunk, closed)
        return {"written": closed, "cancelled": closed}
    if spec.overdue():  # taken after its completion window ended: nothing is called
        closed = await store.expire_pending(spec, chunk)
        log.info("batch %s chunk %d: window ended; %d items expired", batch_id, chunk, closed)
        return {"written": closed, "expired": closed}
    limit = ctx["settings"].chunk_max_attempts
    if attempt > limit:
        failed = await store.fail_pending(spec, chunk, _worker_lost(attempt - 1))
        log.error(
            "batch %s chunk %d: its worker died %d times; %d items failed",
            batch_id, chunk, attempt - 1, failed,
        )  # fmt: skip
        return {"written": failed, "failed": failed}
    with ctx["watch"].watch(spec.id) as stopped:
        async with ctx["limiters"].hold(spec.id, spec.max_concurrency) as limiter:
            stops = _Stop(stop, stopped, spec.overdue)
            feed = _Feed(run, ctx["leases"], spec)
            if spec.endpoint == EMBEDDINGS:
                embedder = ctx["embedders"][spec.provider]
                counts = await run_embeddings(ctx, spec, embedder, chunk, limiter, stops, feed)
            else:
                counts = await _run_items(ctx, spec, model, chunk, limiter, stops, feed)
    # Calls in flight finished and were kept; the rest are cancelled: the batch was cancelled,
    # or spent its token budget (seen before a call, sooner than the watch sees it). Else the
    # completion window ended: the rest are expired.
    budget_spent = counts["stopped"] and not stop.is_set() and await store.stopped(spec.id)
    if stopped.is_set() or budget_spent:
        counts["cancelled"] = await store.cancel_pending(spec, chunk)
        if budget_spent:  # no one else ends the chunks no worker runs
            await _close_rest(ctx, spec)
    elif counts["stopped"] and not stop.is_set() and spec.overdue():
        counts["expired"] = await store.expire_pending(spec, chunk)
        log.info(
            "batch %s chunk %d: window ended; %d items expired", spec.id, chunk, counts["expired"]
        )
    return counts


def _chat_model(ctx: WorkerContext, spec: BatchSpec) -> BaseChatModel | None:
    """The chat model a batch runs on here, or None when this worker lacks its provider."""
    if spec.provider in OTHER_PROVIDERS:
        if not ctx["provider_models"].runs(spec.provider):
            return None
        return ctx["provider_models"].get(spec.provider, spec.model)
    return ctx["models"].get(spec.provider)


async def _hand_off(ctx: WorkerContext, spec: BatchSpec, chunk: int, run: Run) -> dict[str, int]:
    """A step of the chunk at the provider's Batch API (`worker/handoff.py`); until it is done,
    the job is handed back to be run again (`Handoff.next_look_ms`). Once done, the
    items the provider never answered end as the batch did: cancelled, or expired."""
    store = ctx["store"]
    await store.mark_started(spec.id)
    handoff = Handoff(cast(dict[str, Any], ctx), spec, chunk, run)
    try:
        done = await handoff.step()
    except ChunkLost:
        return {"written": 0}  # another worker has the chunk, or the batch is gone
    except LookAgain:
        run.due_ms, run.feeds = 0, False
        raise _PollLater from None
    except openai.APIStatusError as exc:
        if not refused_for_good(exc):
            return await _look_later(handoff, run, spec, chunk, str(exc.status_code))
        # The provider refuses the key or the calls for good (a revoked key, no Batch API):
        # nothing here can go on, so the chunk's items fail with what it said.
        counts = {"written": await _refused(handoff, spec, chunk, exc)}
        log.error("batch %s chunk %d: the provider's Batch API refused it (%d)",
                  spec.id, chunk, exc.status_code)  # fmt: skip
        return counts
    except (openai.APIConnectionError, httpx.TransportError) as exc:
        return await _look_later(handoff, run, spec, chunk, type(exc).__name__)
    if not done:
        return await _look_later(handoff, run, spec, chunk, None)
    counts = {"written": 0}
    if spec.status == "cancelling":
        counts["cancelled"] = await store.cancel_pending(spec, chunk)
    else:  # what is left the provider never answered: its window (or ours) ended first
        counts["expired"] = await store.expire_pending(spec, chunk)
    return counts


async def _look_later(
    handoff: Handoff, run: Run, spec: BatchSpec, chunk: int, trouble: str | None
) -> dict[str, int]:
    """Hand the chunk's job back to look at the provider again (backing off), its place in the
    batch's window given up meanwhile; `trouble` says why the step did not get through (the
    provider away or busy: "later", never the batch's end)."""
    if trouble is not None:
        log.warning("batch %s chunk %d: the provider's Batch API answered %s; looking again "
                    "later", spec.id, chunk, trouble)  # fmt: skip
    run.due_ms = await handoff.next_look_ms()
    run.feeds = False
    now = await handoff.ctx["store"].spec(spec.id)
    if now is not None and (now.status != spec.status or now.overdue() != spec.overdue()):
        run.due_ms = 0  # cancelled, or past its window, while this step ran: see to it at once
    raise _PollLater


async def _refused(
    handoff: Handoff, spec: BatchSpec, chunk: int, exc: openai.APIStatusError
) -> int:
    """The provider refused the chunk's hand-off for good: its parts end, its items fail."""
    await handoff.give_up()
    error = refusal_error(exc.status_code, exc.body if isinstance(exc.body, dict) else {})
    return int(await handoff.ctx["store"].fail_pending(spec, chunk, error))


async def _close_rest(ctx: WorkerContext, spec: BatchSpec) -> None:
    """Cancel the items of the batch's chunks that no worker runs (queued, or never dispatched):
    its token budget is spent, or it was found cancelling. (Should this worker die first, the
    reconciler does it.)"""
    store = ctx["store"]
    chunks = await store.unfinished_chunks(spec.id) or []
    close = partial(store.cancel_pending, spec)
    await close_idle(ctx["redis"], spec.id, chunks, close, ctx["settings"].lease_s)


class _Feed:
    """A run's share of its batch: at most `ceil(max_concurrency / window)` calls in flight
    (`share`), so that the batch's window of runs carries its concurrency between them and a
    run never waits on calls its own batch could not make anyway; a run of one of the batch's
    last chunks (no chunk will follow it) may use all of it. Once no more than a quarter of its
    share of its items is left to send, the run has drained: its batch may take another job
    slot, whose items are then ready as this run's last calls end (a share under four: only
    once every call has been sent)."""

    def __init__(self, run: Run, leases: Leases, spec: BatchSpec) -> None:
        self._run, self._leases = run, leases
        share = -(-spec.max_concurrency // spec.window)
        if run.chunk >= spec.chunks - spec.window:  # among the last: the batch's whole share
            share = spec.max_concurrency
        self.share = asyncio.Semaphore(share)
        self.threshold = -(-spec.max_concurrency // spec.window) // 4
        self.left = 0
        self._sent: set[int] = set()

    def start(self, pending: int) -> None:
        self.left = pending

    async def held(self) -> None:
        """Wait, after a stall past the run's lease, until a renewal says whose its claim is."""
        await self._leases.held(self._run)

    def started(self, item: PendingItem) -> None:
        if item.index in self._sent:  # sent again after a 429: counted once
            return
        self._sent.add(item.index)
        self.left -= 1
        if self.left <= self.threshold:
            self._leases.drained(self._run)


class _Stop:
    """Why a run must start no more provider calls: its claim was lost, its batch stopped, or
    the batch's completion window ended (`BatchSpec.overdue`, by this host's clock)."""

    def __init__(
        self, lost: asyncio.Event, cancelled: asyncio.Event, overdue: Callable[[], bool]
    ) -> None:
        self.lost, self.cancelled, self.overdue = lost, cancelled, overdue

    def __bool__(self) -> bool:
        return self.lost.is_set() or self.cancelled.is_set() or self.overdue()


def _worker_lost(deaths: int) -> ErrorInfo:
    return ErrorInfo(
        type="worker_lost",
        message=(
            f"The worker running this item stopped without finishing it {deaths} times "
            "(killed, out of memory or crashed), so it was not tried again."
        ),
    )


async def _run_items(
    ctx: WorkerContext,
    spec: BatchSpec,
    model: BaseChatModel,
    chunk: int,
    limiter: BatchLimiter,
    stop: _Stop,
    feed: _Feed,
) -> dict[str, int]:
    store = ctx["store"]
    start, end = spec.chunk_bounds(chunk)
    await store.mark_started(spec.id)
    pending = await store.pending_items(spec.id, start, end)
    feed.start(len(pending))
    log.info(
        "batch %s chunk %d: %d of %d items pending, concurrency %d",
        spec.id, chunk, len(pending), end - start, spec.max_concurrency,
    )  # fmt: skip
    began = time.perf_counter()
    counts = {"written": 0, "failed": 0, "stopped": 0}

    async def write(item: PendingItem, outcome: ItemOutcome) -> RecordOutcome:
        return await ctx["writes"].record(spec, item, outcome)

    items = _item_runnable(model, spec, limiter, stop, ctx, write, feed)
    # The batch's max_concurrency is enforced around each provider call by the limiter, across
    # all workers; LangChain's own bound is not used, so an item whose write waits for Redis
    # does not keep the next item from calling the provider.
    for result in await items.abatch(pending, return_exceptions=True):
        if isinstance(result, ChunkStopped):
            counts["stopped"] += 1
        elif isinstance(result, BaseException):
            raise result  # Redis stayed away (the chunk runs again), or a bug
        elif result[0] in ("written", "finished"):
            counts["written"] += 1
            counts["failed"] += result[1] == "failed"
    log.info(
        "batch %s chunk %d: %d written (%d failed, %d left for another run) in %.2fs",
        spec.id, chunk, counts["written"], counts["failed"], counts["stopped"],
        time.perf_counter() - began,
    )  # fmt: skip
    return counts


Write = Callable[[PendingItem, ItemOutcome], Awaitable[RecordOutcome]]


def _item_runnable(
    model: BaseChatModel,
    spec: BatchSpec,
    limiter: BatchLimiter,
    stop: _Stop,
    ctx: WorkerContext,
    write: Write,
    feed: _Feed,
) -> Runnable[PendingItem, tuple[RecordOutcome, str]]:
    """One item through the chat model while holding one of the batch's slots, its result
    written by the same coroutine the moment the reply arrives: a reply never leaves the item
    it answers (so it cannot be stored as another's), and a stop after the reply (SIGTERM)
    cannot lose it. Returns how the write went and the item's status.

    The chat model's call is the item's one LangChain run (the messages are built here, not
    in a runnable of their own): each runnable layer costs a run, about 0.25 ms per item.

    Each call takes its turn from the provider's rate limits first (`worker/pacing.py`); a 429
    is waited out and the call made again until the item's deadline, never its failure while
    the provider only says "later".
    """
    settings, pacer, metrics, store = ctx["settings"], ctx["pacer"], ctx["metrics"], ctx["store"]
    budgeted = spec.max_total_tokens is not None

    batch_format = spec.params.response_format
    batch_output = spec.params.provider_kwargs().get("max_completion_tokens")
    deadline_s = settings.item_deadline_s
    batch_call = batch_kwargs(model, spec.model, spec.params, spec.provider)

    refusals = 0

    async def refused(error: ErrorInfo) -> None:
        """A 401 or 403: the provider refuses the key, and will refuse every item alike. The
        second halts the batch (`BatchStore.halt`), rather than paying a refused call per item."""
        nonlocal refusals
        refusals += 1
        if refusals != HALT_AFTER_REFUSALS:
            return
        await halt_refused(store, spec.id, error)
        stop.cancelled.set()  # this run starts no more calls; the watch tells the others

    async def call(item: PendingItem, config: RunnableConfig) -> tuple[RecordOutcome, str]:
        own = item.params or {}  # the item's params, over the batch's
        kwargs = {**batch_call, **call_kwargs(model, own, spec.provider)} if own else batch_call
        if stop:  # no slot to wait for when no call may start
            raise ChunkStopped
        async with feed.share, limiter.slot():
            if stop:
                raise ChunkStopped
            max_output = own.get("max_completion_tokens", batch_output)
            tokens = estimate_tokens(item_chars(item.prompt, spec.system), max_output)
            run = CallRun()
            CURRENT_CALL.set(run)
            give_up = time.monotonic() + deadline_s
            try:
                while True:
                    if stop or (budgeted and await store.stopped(spec.id)):
                        raise ChunkStopped
                    run.paced_s += await pacer.reserve(spec.model, tokens)
                    await feed.held()
                    if stop:
                        raise ChunkStopped
                    feed.started(item)  # paced and sent: the batch may not wait on this item
                    began = time.perf_counter()
                    try:
                        messages = to_messages(spec.system, item.prompt)
                        reply = await model.ainvoke(messages, config, **kwargs)
                    except Exception as exc:  # the provider's error is this item's result
                        if rate_limited(exc) and time.monotonic() < give_up:
                            continue  # "later": paced again (the 429 slowed every worker)
                        outcome = outcome_of(exc)
                    else:
                        fmt = own.get("response_format", batch_format)
                        outcome = await checked_outcome(reply, fmt)
                        if outcome.usage is not None:
                            # As providers count it: the input, and the output limit if set.
                            out = max_output or outcome.usage.output_tokens
                            pacer.settle(spec.model, tokens, outcome.usage.input_tokens + out)
                    finally:
                        metrics.observe_latency(time.perf_counter() - began)
                        pacer.answered(spec.model)  # a 429 is an answer too: the probe is over
                    break
            finally:
                pacer.answered(spec.model)
            outcome = replace(
                outcome, paced_ms=round(run.paced_s * 1000), rate_limited=run.rate_limited
            )
            if outcome.error is not None and outcome.error.type in REFUSED_KEY:
                await refused(outcome.error)
            if budgeted:  # the slot's next call checks the budget with these tokens counted
                return await write(item, outcome), outcome.status
        return await write(item, outcome), outcome.status

    async def isolated(item: PendingItem, config: RunnableConfig) -> tuple[RecordOutcome, str]:
        """The item's call, whose failure is the item's alone: only a Redis error (the chunk
        runs again) or a stop (another run takes the item) leaves it; anything else that
        escapes the call (a reply or schema the checks did not foresee, a bug) fails this
        item, never its batch."""
        try:
            return await call(item, config)
        except (RedisError, ChunkStopped):
            raise
        except Exception as exc:  # the type only: its text may quote the prompt or the reply
            log.error("batch %s item %d: could not be finished (%s)",
                      spec.id, item.index, type(exc).__name__)  # fmt: skip
            error = ErrorInfo(
                type="internal_error",
                message=f"The worker could not finish this item ({type(exc).__name__}).",
            )
            outcome = ItemOutcome(status="failed", error=error)
            return await write(item, outcome), outcome.status

    return _ItemCall(isolated)


Call = Callable[[PendingItem, RunnableConfig], Awaitable[tuple[RecordOutcome, str]]]


class _ItemCall(Runnable[PendingItem, tuple[RecordOutcome, str]]):
    """An item's call as a runnable, for `Runnable.abatch`, that is no LangChain run itself:
    the chat model's call inside it is the item's only run (its callbacks, its trace), as in
    `ChatOpenAI.abatch`, which is `Runnable.abatch` over the model's own `ainvoke`. A
    `RunnableLambda` here would cost each item a second run (about 0.25 ms of CPU), started
    for all the chunk's items at once, before any of them has a slot."""

    def __init__(self, call: Call) -> None:
        self._call = call

    def invoke(
        self, input: PendingItem, config: RunnableConfig | None = None, **kwargs: Any
    ) -> tuple[RecordOutcome, str]:
        raise NotImplementedError("items run on the worker's event loop: use ainvoke/abatch")

    async def ainvoke(
        self, input: PendingItem, config: RunnableConfig | None = None, **kwargs: Any
    ) -> tuple[RecordOutcome, str]:
        return await self._call(input, ensure_config(config))
