"""A batch's life as the API drives it: submitted (stored with its queued work in one
transaction), cancelled, retried, deleted."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Sequence
from functools import partial

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from shared import keys, scheduler
from shared.batches import BatchPlan, BatchSpec, Idempotency
from shared.errors import Conflict, InvalidRequest, NotFound
from shared.retries import RETRIED, RETRYABLE
from shared.schemas import EMBEDDINGS, FINAL_BATCH_STATUSES, Batch
from shared.settings import Settings
from shared.store import BatchStore

log = logging.getLogger("promptbatch.api")


def idempotency_for(
    owner: str, idempotency_key: str | None, request_hash: str, settings: Settings
) -> Idempotency | None:
    """Where an owner's `Idempotency-Key` is remembered, with the request it came with."""
    if idempotency_key is None:
        return None
    key_hash = hashlib.sha256(idempotency_key.encode()).hexdigest()
    return Idempotency(keys.idempotency(owner, key_hash), request_hash, settings.idempotency_ttl_s)


async def submit(
    store: BatchStore,
    plan: BatchPlan,
    settings: Settings,
    *,
    idempotency: Idempotency | None = None,
    owner: str = keys.PUBLIC_OWNER,
    also: Callable[[Pipeline, str], None] | None = None,
) -> tuple[Batch, bool]:
    """Store a batch in one transaction, with whatever `also` adds to it, then give it its first
    turn (`shared/scheduler.py`): its first chunk is on the queue at once unless its owner
    already has a turn of each of its batches waiting. Should that step fail, the reconciler
    takes it. With an `Idempotency-Key`, a repeat of an earlier request returns that
    request's batch; returns (batch, created)."""
    batch_window = scheduler.window(plan.max_concurrency, settings.run_concurrency)

    def stage(pipe: Pipeline, batch_id: str) -> None:
        scheduler.stage(pipe, batch_id, batch_window)
        if also is not None:
            also(pipe, batch_id)

    # A provider batch takes a chunk's items (the provider's own limit on lines is its size);
    # an embeddings chunk holds at least one whole group of inputs (one provider call).
    chunk_size = settings.provider_batch_max_lines if plan.mode == "provider_batch" else None
    if plan.endpoint == EMBEDDINGS:
        chunk_size = max(settings.chunk_size, settings.embed_group)
    batch, created = await store.create(
        plan, chunk_size=chunk_size or settings.chunk_size, owner=owner, stage=stage,
        idempotency=idempotency,
    )  # fmt: skip
    if created:
        try:
            await scheduler.Scheduler(store.redis).join(batch.id)
        except RedisError as exc:  # stored, so accepted: the reconciler gives it its turn
            log.warning("batch %s: first turn not given (%s)", batch.id, type(exc).__name__)
    return batch, created


async def cancel(
    store: BatchStore, redis: Redis, batch_id: str, owner: str | None = None, lease_s: float = 30.0
) -> Batch:
    """Stop a batch: no new provider call starts for it. Chunks no worker runs (queued, or not
    yet dispatched) are ended here, their items cancelled; workers running the others notice
    within `PROMPTBATCH_WORKER_WATCH_S`, let calls in flight finish, and cancel the rest.
    Another owner's batch is NotFound."""
    await store.get(batch_id, owner)
    await store.request_cancel(batch_id)
    spec = await store.spec(batch_id)
    if spec is not None:
        close = partial(store.cancel_pending, spec)
        chunks: Sequence[int] = range(spec.chunks)
        if spec.mode == "provider_batch":
            begun = await scheduler.at_provider(redis, batch_id, chunks)
            await scheduler.due_now(redis, [keys.job_id(batch_id, chunk) for chunk in begun])
            chunks = [chunk for chunk in chunks if chunk not in set(begun)]
        await scheduler.close_idle(redis, batch_id, chunks, close, lease_s)
        await scheduler.Scheduler(redis).join(batch_id)  # its dropped head: the others' turns
    return await store.get(batch_id)


#: What `?include=` of a retry may name, comma-separated: failed items are always retried.
RETRY_INCLUDE = tuple(status for status in RETRYABLE if status != RETRIED)
#: `include` as a pattern, for the OpenAPI document (`retry_include` checks it).
RETRY_INCLUDE_PATTERN = "^({0})(,({0}))*$".format("|".join(RETRY_INCLUDE))


def retry_include(value: str | None) -> list[str]:
    """The statuses `?include=` names; InvalidRequest for anything but `RETRY_INCLUDE`."""
    if value is None:
        return []
    named = value.split(",")
    if not all(status in RETRY_INCLUDE for status in named):
        raise InvalidRequest(
            f"include is a comma-separated list of {' and '.join(RETRY_INCLUDE)} (failed "
            f"items are always retried); got {value[:64]!r}.",
            param="include",
        )
    return named


async def retry(
    store: BatchStore,
    redis: Redis,
    batch_id: str,
    include: list[str] | None = None,
    owner: str | None = None,
) -> Batch:
    """Run a final batch's failed items again in place (and its cancelled or expired ones when
    `include` names them); its succeeded items are kept and never sent again. The batch is
    running again at once (`Retries.retry`); its chunks with pending items are queued here,
    and should this process die first the reconciler queues them. The retried items count
    against the owner's queued-prompt ceiling from then on, but a retry is never refused for
    it (no 429): they were admitted once. Conflict for a batch that is not final or has
    nothing to retry; another owner's batch is NotFound. Returns the batch as the retry left
    it, its retried items pending."""
    await store.get(batch_id, owner)  # another owner's batch is NotFound, before anything else
    spec = await store.spec(batch_id)
    if spec is not None and spec.mode == "provider_batch":
        await _none_at_provider(redis, spec, "retry")
    if spec is not None and spec.status in FINAL_BATCH_STATUSES:
        job_ids = [keys.job_id(batch_id, chunk) for chunk in range(spec.chunks)]
        if any(await scheduler.claimed(redis, job_ids)):
            # arq ends such a run by deleting its job: it would take the retry's with it.
            raise Conflict(f"Batch {batch_id} is still stopping its runs; retry it shortly.")
    chunks = await store.retry(batch_id, include or (), owner)
    if spec is not None and spec.mode == "provider_batch" and chunks:
        # Their items go to the provider again: as new provider batches, planned anew.
        await redis.delete(*(keys.handoff(batch_id, chunk) for chunk in chunks))
    retried = await store.get(batch_id)  # as the retry left it, before its chunks are queued
    await scheduler.Scheduler(redis).requeue(batch_id, chunks)
    return retried


async def delete(store: BatchStore, redis: Redis, batch_id: str, owner: str | None = None) -> None:
    """Delete a batch, its results and its queued work. A running batch is cancelled first;
    its workers notice the batch is gone and stop, and their writes find nothing to write to.
    Another owner's batch is NotFound."""
    await store.get(batch_id, owner)
    spec = await store.spec(batch_id)
    if spec is None:
        raise NotFound(f"No batch {batch_id}.")
    if spec.mode == "provider_batch" and spec.status not in FINAL_BATCH_STATUSES:
        await _none_at_provider(redis, spec, "delete")
    if spec.status not in FINAL_BATCH_STATUSES:
        with contextlib.suppress(Conflict, NotFound):  # it may have finished meanwhile
            await store.request_cancel(batch_id)
    await store.remove(batch_id)
    if spec.mode == "provider_batch":
        await redis.delete(*(keys.handoff(batch_id, chunk) for chunk in range(spec.chunks)))
    job_ids = [keys.job_id(batch_id, chunk) for chunk in range(spec.chunks)]
    await scheduler.drop_jobs(redis, job_ids)
    # A head of its own may have been dropped: its owner's other batches take the turn.
    await scheduler.Scheduler(redis).refill(spec.owner)


async def _none_at_provider(redis: Redis, spec: BatchSpec, action: str) -> None:
    """Conflict while a provider batch of this batch may still run at the provider: deleting
    or retrying then would lose the only record of it, and it would run on, paid for."""
    for chunk in await scheduler.at_provider(redis, spec.id, range(spec.chunks)):
        state = await redis.hgetall(keys.handoff(spec.id, chunk))  # type: ignore[misc]
        fields = {name.decode() for name in state}
        parts = {name.split(":")[0] for name in fields if ":" in name}
        if any(f"{part}:done" not in fields for part in parts if f"{part}:nonce" in fields):
            raise Conflict(
                f"Batch {spec.id} is still at the provider's Batch API; cancel it first "
                f"(POST /v1/batches/{spec.id}/cancel) and {action} it once it has ended."
            )
