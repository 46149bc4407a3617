"""Per-key limits held in Redis, so they hold across every API process: a submission rate and a
ceiling on prompts not yet final.

The ceiling is counted at submit from the owner's own index of active batches (each batch
hash's `total` less its final counts) plus the room reserved by submissions being stored right
now; one Lua script checks and reserves at once, so two API processes cannot both slip past.
Workers write nothing for it: finished batches are pruned from the index as it is read.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from api.lifecycle import idempotency_for, submit
from shared import keys, lua
from shared.batches import BatchPlan, Idempotency
from shared.errors import InvalidRequest, TooManyRequests
from shared.schemas import Batch
from shared.settings import Settings
from shared.store import BatchStore

#: Retry-After when a key's queue is full: prompts finish at the provider's pace, not ours.
QUEUE_FULL_RETRY_S = 5
#: Reads of a key's active batches before a submission gives up counting them (each read is
#: stale only if one of its batches was stored meanwhile).
ADMIT_READS = 3

_ADMIT = lua.load("api", "admit")


@dataclass(frozen=True, slots=True)
class Admission:
    """A submission let in: its entry in the rate window and its reserved room."""

    owner: str
    token: str


class Limits:
    """The per-key submission rate and queued-prompt ceiling; off when both settings are 0."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.rate_per_min = settings.rate_limit_per_min
        self.max_queued = settings.max_queued_prompts
        self.max_uploads = settings.max_uploads_per_key
        self._admit = redis.register_script(_ADMIT)

    async def take_upload(self, owner: str) -> str:
        """One of the owner's upload slots, or 429 when all are in use."""
        token, now = secrets.token_hex(8), time.time_ns() // 1_000_000
        key = keys.uploads(owner)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, "-inf", now - keys.UPLOAD_TTL_MS)
            pipe.zadd(key, {token: now})
            pipe.zcard(key)
            pipe.pexpire(key, keys.UPLOAD_TTL_MS)
            *_, uploading, _ = await pipe.execute()
        if uploading > self.max_uploads:
            await self.give_upload(owner, token)
            raise TooManyRequests(
                f"This key has {self.max_uploads} large submissions in progress; try again "
                "when one has finished.",
                retry_after_s=QUEUE_FULL_RETRY_S,
            )
        return token

    async def give_upload(self, owner: str, token: str) -> None:
        with contextlib.suppress(RedisError):  # it lapses on its own
            await self.redis.zrem(keys.uploads(owner), token)

    async def admit(self, owner: str, prompts: int) -> Admission | None:
        """Count a submission of `prompts` against the owner's limits, or raise 429 (422 for a
        batch that could never fit). None when no limit is set."""
        if not (self.rate_per_min or self.max_queued):
            return None
        if self.max_queued and prompts > self.max_queued:
            raise InvalidRequest(
                f"A batch of {prompts} prompts exceeds this key's ceiling of "
                f"{self.max_queued} prompts queued at once.",
                param="prompts",
            )
        token = secrets.token_hex(8)
        limits: list[str | int] = [self.rate_per_min, self.max_queued, prompts, token]
        own = [keys.submissions(owner), keys.active_batches(owner), keys.reservations(owner)]
        for _ in range(ADMIT_READS):
            # The owner's active batches, each named among the script's keys; one stored
            # meanwhile makes the script ask for them again.
            active = [] if not self.max_queued else await self._active(owner)
            verdict, value = await self._admit(
                keys=[*own, *(keys.batch(batch_id) for batch_id in active)],
                args=[*limits, keys.RATE_WINDOW_MS, keys.RESERVATION_TTL_MS, *active],
            )
            if verdict != 3:
                break
        else:
            raise TooManyRequests(
                "This key's batches changed while its submission was counted; try again.",
                retry_after_s=1,
            )
        if verdict == 1:
            raise TooManyRequests(
                f"This key may submit {self.rate_per_min} batches a minute; try again shortly.",
                retry_after_s=math.ceil(int(value) / 1000),
            )
        if verdict == 2:
            raise TooManyRequests(
                f"This key has {int(value)} prompts queued and a ceiling of {self.max_queued}; "
                "try again when some have finished.",
                retry_after_s=QUEUE_FULL_RETRY_S,
            )
        return Admission(owner=owner, token=token)

    async def _active(self, owner: str) -> list[str]:
        members = await self.redis.smembers(keys.active_batches(owner))  # type: ignore[misc]
        return [member.decode() for member in members]

    def settle(self, admission: Admission | None) -> Callable[[Pipeline, str], None] | None:
        """What the transaction that stores the batch must also do: from then on it counts
        through the owner's active index, and its reservation is given back. In the same
        transaction, so that no stored batch escapes the ceiling."""
        if admission is None or not self.max_queued:
            return None
        owner, token = admission.owner, admission.token
        active, reservations = keys.active_batches(owner), keys.reservations(owner)

        def settle(pipe: Pipeline, batch_id: str) -> None:
            pipe.sadd(active, batch_id)
            pipe.pexpire(active, keys.ACTIVE_TTL_MS)
            pipe.hdel(reservations, token)

        return settle

    async def release(self, admission: Admission | None) -> None:
        """The submission did not happen: give back its reserved room and its rate entry."""
        if admission is None:
            return
        with contextlib.suppress(RedisError):  # both lapse on their own
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hdel(keys.reservations(admission.owner), admission.token)
                pipe.zrem(keys.submissions(admission.owner), admission.token)
                await pipe.execute()


@dataclass(frozen=True, slots=True)
class Admitted:
    """A submission let in before any of it was staged: its admission, counted with the most
    prompts it can hold (its lines), and its idempotency record."""

    limits: Limits
    owner: str
    admission: Admission | None
    idempotency: Idempotency | None

    @contextlib.asynccontextmanager
    async def staging(self, *, large: bool) -> AsyncIterator[None]:
        """While the submission is staged and stored: a large one holds one of its key's
        upload slots (429 beyond); one that fails gives its admission back."""
        token = None
        try:
            token = await self.limits.take_upload(self.owner) if large else None
            yield
        except BaseException:
            await self.limits.release(self.admission)
            raise
        finally:
            if token is not None:
                await self.limits.give_upload(self.owner, token)

    async def store(
        self,
        store: BatchStore,
        plan: BatchPlan,
        settings: Settings,
        also: Callable[[Pipeline, str], None] | None = None,
    ) -> tuple[Batch, bool]:
        """Store and queue the batch (with what `also` adds to its transaction); returns it and
        whether it is new."""
        settle = self.limits.settle(self.admission)

        def both(pipe: Pipeline, batch_id: str) -> None:
            for step in (settle, also):
                if step is not None:
                    step(pipe, batch_id)

        batch, created = await submit(
            store, plan, settings, owner=self.owner, idempotency=self.idempotency, also=both
        )
        if not created:  # the same request, concurrently: the other one's batch
            await self.limits.release(self.admission)
        return batch, created


async def admit(
    limits: Limits,
    store: BatchStore,
    settings: Settings,
    owner: str,
    prompts: int,
    *,
    idempotency_key: str | None = None,
    request_hash: str = "",
) -> Batch | Admitted:
    """Decide a submission before any of it is staged: a repeat of an earlier one
    (`Idempotency-Key`) gets that batch, without counting against the limits (a client retrying
    a request that did succeed must get its batch, not a 429); else it is admitted for at most
    `prompts` prompts, or refused (429, 422)."""
    idempotency = idempotency_for(owner, idempotency_key, request_hash, settings)
    if idempotency is not None and (earlier := await store.repeat_of(idempotency)) is not None:
        return earlier
    return Admitted(limits, owner, await limits.admit(owner, prompts), idempotency)
