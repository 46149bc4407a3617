"""The scheduler, worker side: a worker's leases on the chunks it runs, their renewal, what a
run does as it drains and ends, takeover, and the reconciler's safety net.

The states and events are in `shared/scheduler.py`. arq claims a started job for
job_timeout + 10 s (a day, here), so a killed worker's chunk would wait that long: a run
instead puts its worker's name and a short lease on the claim at once (`sched_begin`), renews it
every heartbeat, and lets it lapse only by dying. While it runs, the job's queue score is the
lease's end, so it is due again exactly when a dead worker's lease lapses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.scheduler import Scheduler, at_provider, close_idle, live_jobs
from shared.store import BatchStore

log = logging.getLogger("promptbatch.worker")


@dataclass
class Run:
    """One run of a chunk on this worker, as its lease sees it."""

    batch_id: str
    chunk: int
    #: Until when, by this host's monotonic clock, the claim is surely this run's: the lease
    #: counted from when its last renewal was sent. Past it, a call waits for a renewal.
    held_until: float
    #: Set when another worker has taken the claim: this run must start no more calls.
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    #: When the run ends: None to let go of the job (arq finishes it), else hand it back, due
    #: in this many ms (arq keeps it queued).
    due_ms: int | None = None
    #: Whether a job handed back still takes a place in its batch's window (not while its
    #: chunk waits at the provider's Batch API).
    feeds: bool = True
    _drained: bool = False


class Leases:
    """The claims of one worker process: begun, renewed and released through the scheduler."""

    def __init__(self, redis: Redis, owner: str, lease_s: float) -> None:
        self.scheduler = Scheduler(redis)
        self.owner = owner
        self.lease_ms = int(lease_s * 1000)
        self._held: dict[str, Run] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # A renewal may take a lapsed claim again, so a run lets go of its claim only between
        # renewals: once it has, arq deletes the claim and no renewal brings it back.
        self._renewing = asyncio.Lock()
        self._renewed = asyncio.Event()  # set, and replaced, as each renewal ends

    @property
    def busy(self) -> int:
        """Runs holding a claim now: this worker's job slots in use."""
        return len(self._held)

    @contextlib.asynccontextmanager
    async def hold(self, batch_id: str, chunk: int) -> AsyncIterator[Run]:
        """Claim a chunk's job this worker has just started and keep it claimed until the
        block ends; then release it as `Run.due_ms` says (cancelled: due again at once)."""
        job_id = keys.job_id(batch_id, chunk)
        sent = time.monotonic()
        ours = await self.scheduler.begin(batch_id, chunk, self.owner, self.lease_ms)
        # Renewed only from here: a renewal that reached Redis before this claim did would find
        # arq's claim under another name and stop the run as lost.
        run = self._held[job_id] = Run(batch_id, chunk, sent + self.lease_ms / 1000)
        if not ours:  # another worker took the job over before this run began: it must not run
            run.lost.set()
        try:
            yield run
        except asyncio.CancelledError:  # SIGTERM: another worker takes it at once
            run.due_ms = 0
            raise
        finally:
            async with self._renewing:
                del self._held[job_id]
            if not run.lost.is_set():
                try:
                    await self.scheduler.release(
                        batch_id, chunk, self.owner, run.due_ms, feeds=run.feeds
                    )
                except RedisError as exc:  # its job comes due when the lease ends anyway
                    log.warning("job %s: not released (%s)", job_id, type(exc).__name__)

    def drained(self, run: Run) -> None:
        """Every item of the run has its call started: the batch may take another slot now,
        while this run's last calls finish (in the background: no call waits for it)."""
        if run._drained or run.lost.is_set():
            return
        run._drained = True
        task = asyncio.create_task(self._release(run), name="drained")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release(self, run: Run) -> None:
        try:
            await self.scheduler.release(run.batch_id, run.chunk, self.owner)
        except RedisError as exc:  # the run's end releases it again
            log.warning("batch %s chunk %d: drain not said (%s)", run.batch_id, run.chunk,
                        type(exc).__name__)  # fmt: skip

    async def taken_over(self, job_id: str) -> bool:
        """Whether a job whose claim this worker lost is another worker's now (still queued),
        rather than gone with its batch or finished by that worker."""
        return await self.scheduler.redis.zscore(keys.QUEUE, job_id) is not None

    async def held(self, run: Run) -> None:
        """Return once the run's claim is surely still its own, or lost. A worker that stalled
        past its lease (a stopped process, a blocked event loop) may have had its chunk taken
        over meanwhile: its runs start no call until a renewal has said whose the claim is."""
        while not run.lost.is_set() and time.monotonic() >= run.held_until:
            await self._renewed.wait()

    async def renew(self) -> list[str]:
        """Renew every claim this worker holds; returns the jobs now claimed by another."""
        try:
            async with self._renewing:
                job_ids = list(self._held)
                if not job_ids:
                    return []
                sent = time.monotonic()
                renewed = await self.scheduler.renew(self.owner, self.lease_ms, job_ids)
                lost = []
                for job_id, ok in zip(job_ids, renewed, strict=True):
                    run = self._held[job_id]
                    if ok:
                        run.held_until = sent + self.lease_ms / 1000
                    else:
                        run.lost.set()
                        lost.append(job_id)
                return lost
        finally:  # answered, failed or timed out: runs waiting on it look again
            ended, self._renewed = self._renewed, asyncio.Event()
            ended.set()

    async def drain(self) -> None:
        """Wait for drain releases on their way to Redis (the worker is stopping)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


# -- the reconciler --------------------------------------------------------------------------
# Accepted means queued: a batch is stored before it joins its owner's rotation, and a killed
# worker's chunk comes back when its lease lapses; this is the safety net under both, for a
# join the API could not make, work arq dropped (a job record that expired in the queue) or
# that Redis lost (the last second of writes before a crash). It also ends the idle chunks of
# batches that will run no more (cancelled, or past their completion window), so such a batch
# ends within a period even if the worker that stopped it died.


async def reconcile(
    redis: Redis, store: BatchStore, lease_s: float, scheduler: Scheduler | None = None
) -> int:
    """One pass over the active batches; returns how many chunks were queued again."""
    scheduler = scheduler or Scheduler(redis)
    requeued = 0
    for batch_id in await store.active_batches():
        chunks = await store.unfinished_chunks(batch_id)
        if not chunks:
            continue
        if await close_stopped(redis, store, batch_id, chunks, lease_s):
            continue
        sent = sorted(set(chunks) & set(await store.dispatched(batch_id)))
        live = await live_jobs(redis, [keys.job_id(batch_id, c) for c in sent], lease_s)
        stranded = [chunk for chunk, alive in zip(sent, live, strict=True) if not alive]
        if stranded:
            await scheduler.requeue(batch_id, stranded)
            log.warning("batch %s: chunks %s were on no queue; queued again", batch_id, stranded)
            requeued += len(stranded)
        else:
            await scheduler.join(batch_id)
    return requeued


async def close_stopped(
    redis: Redis, store: BatchStore, batch_id: str, chunks: list[int], lease_s: float = 30.0
) -> bool:
    """If the batch will run no more (cancelling, or its completion window has ended), end its
    unfinished chunks that no worker runs: their items cancelled, or expired. Returns whether
    it was so."""
    spec = await store.spec(batch_id)
    if spec is None:
        return False
    if spec.status == "cancelling":
        close, how = partial(store.cancel_pending, spec), "cancelled"
    elif spec.overdue():
        close, how = partial(store.expire_pending, spec), "expired"
    else:
        return False
    if spec.mode == "provider_batch":  # those at the provider end in their own runs
        begun = set(await at_provider(redis, batch_id, chunks))
        chunks = [chunk for chunk in chunks if chunk not in begun]
    idle = await close_idle(redis, batch_id, chunks, close, lease_s)
    if idle:
        log.info("batch %s: the items of chunks %s %s", batch_id, idle, how)
    return True


async def take_turn(redis: Redis, worker_id: str, period_s: float) -> bool:
    """Whether this worker reconciles now: one worker per period, whichever asks first."""
    return bool(await redis.set(keys.RECONCILE_LOCK, worker_id, px=int(period_s * 1000), nx=True))
