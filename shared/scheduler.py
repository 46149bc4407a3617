"""The scheduler: which chunk jobs wait on arq's queue, who runs them, and when one runs again.

arq stays the job queue: its workers poll the due jobs of `keys.QUEUE` and run them, one arq
job per chunk. What the scheduler decides is what is on that queue, and in what order:

- **Fair share.** Each owner (API key) has a rotation of its batches that can use another job
  slot, and keeps `HEADS_PER_OWNER` jobs waiting on the queue (its *heads*) while it has work
  to give them, dealt round-robin over its batches. A head that a worker takes is replaced by
  the owner's next turn, at the back of the queue: so the queue's waiting part is round-robin
  across owners (each has as many heads, whatever its number of batches), then across an
  owner's batches, and a new batch's first chunk waits behind one round of the other owners'
  heads, never behind another batch's backlog.
- **No slot held idle.** A batch has a *window*: `ceil(max_concurrency /
  PROMPTBATCH_RUN_CONCURRENCY)` chunks may feed it at once (at least four, or its concurrency
  if lower), each run carrying at most its share of the batch's concurrency (a run of
  one of its last chunks, all of it). A chunk *feeds* from its dispatch until its run has sent
  nearly every item's call (it *drains*; the last calls run on in its job slot); only then can
  the batch take another slot. A batch at its concurrency, or paced, holds no more slots than
  its window and the runs draining.
- **Past arq's read window.** A running job's queue score is its lease's end, renewed with the
  lease: only waiting jobs (and those whose worker died) are due, so arq's bounded read
  (`queue_read_limit`) always sees work to start while any waits, however many jobs run.

States and the events that move them (each event one script, run atomically; a refill that
reaches a batch or job whose key it was not given stops there, its steps kept, and the event is
called again with those keys, see `Scheduler`). A chunk:

| from               | event (script)                                             | to           |
|--------------------|------------------------------------------------------------|--------------|
| undispatched       | its batch's turn, with room in its window (`refill`)       | head         |
| head, due again    | a worker takes its job (`sched_begin`)                     | feeding      |
| feeding            | every item's call has started (`sched_release`)            | draining     |
| feeding, draining  | the run ends: done, cancelled, failed (`sched_release`)    | done         |
| feeding, draining  | SIGTERM, or Redis away (`sched_release` with `due_ms`)     | due again    |
| feeding, draining  | the worker dies or freezes: its lease lapses               | due again    |
| dispatched, no job | the reconciler finds it on no queue (`sched_requeue`)      | undispatched |
| done, items failed | retry in place (`sched_requeue`)                           | undispatched |
| undispatched, head | cancel, delete, window ended (API, reconciler)             | done         |

A batch, as the scheduler sees it:

| from            | event                                                        | to              |
|-----------------|--------------------------------------------------------------|-----------------|
| new             | submit: stored with cursor 0 (`stage`), then `sched_join`    | in rotation     |
| in rotation     | its turn, eligible: queued or in progress, work left, fewer  | a chunk         |
|                 | chunks feeding (heads included) than its window              | dispatched; back|
| in rotation     | its turn, not eligible                                       | out of rotation |
| out of rotation | a run of it begins, drains or ends; a requeue; the reconciler| in rotation     |

The batch's own status (`queued`, `in_progress`, `cancelling`, final) is the batch scripts' in
`shared/lua/`; the scheduler only reads it. The worker's side (leases, renewal, takeover, the
reconciler) is `worker/scheduler.py`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import cache
from typing import TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import jobs, keys, lua

_T = TypeVar("_T")

#: Jobs an owner keeps waiting on the queue at once: enough that a burst of free slots fills
#: in one poll, few enough that a new owner waits behind only a turn of each other owner.
HEADS_PER_OWNER = 4

#: What a call names beyond its own keys (`sched.lua`'s `reach`): the keys of the first
#: `REACH_BATCHES` batches of the owner's rotation and of their next `REACH_CHUNKS` chunks'
#: jobs, enough that a refill seldom reaches a key it was not given, even with other workers
#: dispatching the owner's chunks meanwhile.
REACH_BATCHES = 8
REACH_CHUNKS = 8

#: Calls of one event at most: each that comes back short has taken every step it could, so
#: more are needed only for a refill passing over more than REACH_BATCHES batches that cannot
#: take a slot; one that stops short of that leaves the rest to the owner's next event.
_CALLS = 16

#: What the scheduler's answers said, for the process's next calls: each batch's owner (which
#: never changes) and the keys each owner's next refill may reach. Only hints: a wrong or
#: missing one costs a call more, never a wrong step. The latest `_REMEMBERED` of each.
_OWNERS: dict[str, str] = {}
_REACH: dict[str, list[str]] = {}
_REMEMBERED = 4096

_SCRIPTS = ("sched_join", "sched_refill", "sched_requeue", "sched_begin", "sched_release")


@cache
def script(name: str) -> str:
    """`shared/lua/<name>.lua` after the scheduler's prelude (`sched.lua`)."""
    return lua.load(
        "shared",
        "sched",
        name,
        CLAIM_T=keys.template(jobs.arq_in_progress("\0"), "\0"),
        ARQ_CLAIM=jobs.ARQ_CLAIM,
        JOB_T=keys.template(jobs.arq_job("\0"), "\0"),
        RUN_CHUNK=jobs.RUN_CHUNK,
        JOB_EXPIRES_MS=jobs.JOB_EXPIRES_MS,
        HEADS_PER_OWNER=HEADS_PER_OWNER,
        REACH_BATCHES=REACH_BATCHES,
        REACH_CHUNKS=REACH_CHUNKS,
        BATCH_T=keys.template(keys.batch("\0"), "\0"),
        FEEDING_T=keys.template(keys.feeding("\0"), "\0"),
        REDO_T=keys.template(keys.redo("\0"), "\0"),
        ROTATION_T=keys.template(keys.rotation("\0"), "\0"),
        HEADS_T=keys.template(keys.heads("\0"), "\0"),
    )


for _name in _SCRIPTS:  # read at import, never on the event loop
    script(_name)

_RENEW_CLAIMS = lua.load("shared", "renew_claims")


def window(max_concurrency: int, run_concurrency: int) -> int:
    """How many chunks may feed a batch at once: one per `run_concurrency` of its calls, and
    up to four for any batch that can make that many calls at once, so that even a batch at a
    small concurrency spreads over several workers when its calls cost the worker more than
    the provider (measured in `make bench`'s million-prompt run on the offline model)."""
    return max(min(4, max_concurrency), math.ceil(max_concurrency / run_concurrency))


def stage(pipe: Pipeline, batch_id: str, batch_window: int) -> None:
    """In the transaction that stores a new batch: its cursor and window. It joins its owner's
    rotation right after (`Scheduler.join`), or at the reconciler's next pass."""
    pipe.hset(keys.batch(batch_id), mapping={"sched_next": 0, "window": batch_window})


def _remember(found: dict[str, _T], name: str, value: _T) -> None:
    """Keep `value` under `name`, forgetting the oldest entry past `_REMEMBERED`."""
    found.pop(name, None)
    found[name] = value
    if len(found) > _REMEMBERED:
        del found[next(iter(found))]


class Scheduler:
    """The scheduler's events, each one script (`shared/lua/sched_*.lua`).

    A script is given every key it touches: the event's own, its owner's, and the batches and
    jobs the owner's refill may reach, which the last answer for that owner named. An answer
    that says the refill reached a key it was not given (another process moved the owner's
    rotation on meanwhile) is followed by a call with the keys it names: the first event of
    an owner this process sees takes three calls, later ones one as a rule."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._scripts = {name: redis.register_script(script(name)) for name in _SCRIPTS}
        self._renew = redis.register_script(_RENEW_CLAIMS)

    async def _run(
        self, name: str, own: list[str], *args: str | int, batch_id: str = "", owner: str = ""
    ) -> tuple[int, int]:
        """Call a scheduler script (of the batch's event, or the owner's) until it is not
        short; its outcome and the chunks it dispatched over all calls."""
        dispatched = 0
        for _ in range(_CALLS):
            owner = owner or _OWNERS.get(batch_id, "")
            reach = [keys.rotation(owner), keys.heads(owner), *_REACH.get(owner, [])]
            reach = reach if owner else []
            outcome, more, seen, short, named = await self._scripts[name](
                keys=[keys.QUEUE, keys.SCHED_CLOCK, *own, *reach], args=list(args)
            )
            dispatched += int(more)
            if seen:
                owner = seen.decode()
                if batch_id:
                    _remember(_OWNERS, batch_id, owner)
                _remember(_REACH, owner, [key.decode() for key in named])
            if not short:
                break
        return int(outcome), dispatched

    @staticmethod
    def _batch_keys(batch_id: str) -> list[str]:
        return [keys.batch(batch_id), keys.redo(batch_id), keys.feeding(batch_id)]

    async def join(self, batch_id: str) -> int:
        """The batch can use job slots: it joins its owner's rotation, whose heads are refilled.
        Returns how many chunks were dispatched."""
        return (
            await self._run("sched_join", self._batch_keys(batch_id), batch_id, batch_id=batch_id)
        )[1]

    async def refill(self, owner: str) -> int:
        """Give the owner's batches their turns (after some of its jobs were dropped)."""
        return (await self._run("sched_refill", [], owner, owner=owner))[1]

    async def requeue(self, batch_id: str, chunks: Sequence[int]) -> int:
        """Chunks that ran before must run again (retry in place, lost jobs): dispatched again
        in their batch's turns. Returns how many chunks were dispatched now."""
        own = self._batch_keys(batch_id)
        return (await self._run("sched_requeue", own, batch_id, *chunks, batch_id=batch_id))[1]

    async def begin(self, batch_id: str, chunk: int, worker: str, lease_ms: int) -> bool:
        """A worker has started a chunk's job: its claim and lease, the job out of the due
        window, the owner's heads refilled. False if another worker holds the job (this run
        must not run)."""
        job_id = keys.job_id(batch_id, chunk)
        own = [jobs.arq_in_progress(job_id), *self._batch_keys(batch_id)]
        args = (job_id, batch_id, chunk, worker, lease_ms)
        outcome, _ = await self._run("sched_begin", own, *args, batch_id=batch_id)
        return outcome >= 0

    async def release(
        self,
        batch_id: str,
        chunk: int,
        worker: str,
        due_ms: int | None = None,
        *,
        feeds: bool = True,
    ) -> bool:
        """A run drained or ended (`due_ms` None), or hands its job back, due in `due_ms`, its
        chunk still feeding its batch unless not `feeds` (a chunk waiting at the provider's
        Batch API). False if the run no longer holds the job's claim (nothing changed then)."""
        job_id = keys.job_id(batch_id, chunk)
        own = [jobs.arq_in_progress(job_id), *self._batch_keys(batch_id)]
        due = -1 if due_ms is None else due_ms
        args = (job_id, batch_id, chunk, worker, due, int(feeds))
        outcome, _ = await self._run("sched_release", own, *args, batch_id=batch_id)
        return bool(outcome)

    async def renew(self, worker: str, lease_ms: int, job_ids: Sequence[str]) -> list[bool]:
        """Renew a worker's claims and their jobs' queue scores (`renew_claims.lua`); False
        for each job this worker has lost."""
        renewed = await self._renew(
            keys=[keys.QUEUE, *(jobs.arq_in_progress(job_id) for job_id in job_ids)],
            args=[worker, lease_ms, *job_ids],
        )
        return [bool(ok) for ok in renewed]


async def live_jobs(redis: Redis, job_ids: Sequence[str], lease_s: float) -> list[bool]:
    """Whether each job is queued or running. A running claim longer than the lease (arq's own,
    set before the worker could shorten it, and the worker then died) is cut to the lease."""
    lease_ms = int(lease_s * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.zscore(keys.QUEUE, job_id)
            pipe.pttl(jobs.arq_in_progress(job_id))
        replies = await pipe.execute()
    found, ttls = replies[0::2], replies[1::2]
    overlong = [job_id for job_id, ttl in zip(job_ids, ttls, strict=True) if ttl > lease_ms]
    if overlong:
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in overlong:
                pipe.pexpire(jobs.arq_in_progress(job_id), lease_ms)
            await pipe.execute()
    return [score is not None or ttl != -2 for score, ttl in zip(found, ttls, strict=True)]


async def claimed(redis: Redis, job_ids: Sequence[str]) -> list[bool]:
    """Whether a worker has started each job (and holds its claim)."""
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.exists(jobs.arq_in_progress(job_id))
        return [bool(found) for found in await pipe.execute()]


async def drop_jobs(redis: Redis, job_ids: Sequence[str]) -> None:
    """Take jobs off the queue with arq's records of them."""
    if not job_ids:
        return
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(keys.QUEUE, *job_ids)
        for job_id in job_ids:
            pipe.delete(jobs.arq_job(job_id), jobs.arq_retry(job_id), jobs.arq_in_progress(job_id))
        await pipe.execute()


async def close_idle(
    redis: Redis,
    batch_id: str,
    chunks: Sequence[int],
    close: Callable[[int], Awaitable[int]],
    lease_s: float,
) -> list[int]:
    """End the chunks of a batch that will run no more (cancelled, or its window ended) which
    no worker runs: their jobs (if dispatched) leave the queue and `close` ends each one's
    pending items. A running chunk is left to its run, whose calls in flight finish and are
    kept. Returns the chunks closed."""
    job_ids = [keys.job_id(batch_id, chunk) for chunk in chunks]
    # A claim arq set for a day whose worker died before shortening it is cut to the lease
    # first: else it would count as running, and keep the batch from ending, for a day.
    await live_jobs(redis, job_ids, lease_s)
    running = await claimed(redis, job_ids)
    idle = [chunk for chunk, taken in zip(chunks, running, strict=True) if not taken]
    await drop_jobs(redis, [keys.job_id(batch_id, chunk) for chunk in idle])
    for chunk in idle:
        await close(chunk)
    return idle


async def at_provider(redis: Redis, batch_id: str, chunks: Sequence[int]) -> list[int]:
    """The chunks of a `provider_batch` batch whose hand-off has begun (`worker/handoff.py`): a
    close must leave them to their runs, which cancel their provider batches and keep what
    those finished (within `PROMPTBATCH_PROVIDER_POLL_S`)."""
    async with redis.pipeline(transaction=False) as pipe:
        for chunk in chunks:
            pipe.exists(keys.handoff(batch_id, chunk))
        found = await pipe.execute()
    return [chunk for chunk, begun in zip(chunks, found, strict=True) if begun]


async def due_now(redis: Redis, job_ids: Sequence[str]) -> None:
    """Make queued jobs that no worker runs due at once (a run that waits to look at the
    provider again, when its batch was cancelled). A running one is left as it is."""
    running = await claimed(redis, job_ids)
    now_ms = time.time_ns() // 1_000_000
    waiting = {job: now_ms for job, taken in zip(job_ids, running, strict=True) if not taken}
    if waiting:
        await redis.zadd(keys.QUEUE, waiting, xx=True)


async def due_jobs(redis: Redis, now_ms: int) -> int:
    """Jobs waiting for a slot: due on the queue (running ones are scored at their lease's end)."""
    return int(await redis.zcount(keys.QUEUE, "-inf", now_ms))
