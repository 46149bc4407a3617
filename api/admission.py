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
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from api.lifecycle import idempotency_for, submit
from shared import keys, lua
from shared.batches import BatchPlan
from shared.errors import InvalidRequest, TooManyRequests
from shared.schemas import Batch
from shared.settings import Settings
from shared.store import BatchStore

#: Retry-After when a key's queue is full: prompts finish at the provider's pace, not ours.
QUEUE_FULL_RETRY_S = 5

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
        self._admit = redis.register_script(_ADMIT)

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
        before, after = keys.batch_key_parts()
        verdict, value = await self._admit(
            keys=[keys.submissions(owner), keys.active_batches(owner), keys.reservations(owner)],
            args=[self.rate_per_min, self.max_queued, prompts, token, before, after,
                  keys.RATE_WINDOW_MS, keys.RESERVATION_TTL_MS],
        )  # fmt: skip
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


async def submit_within_limits(
    limits: Limits,
    store: BatchStore,
    plan: BatchPlan,
    settings: Settings,
    owner: str,
    *,
    idempotency_key: str | None = None,
    request_hash: str = "",
) -> tuple[Batch, bool]:
    """Admit, store and queue a batch; returns it and whether it is new. A repeat of an earlier
    submission (`Idempotency-Key`) returns that batch without counting against the limits: a
    client retrying a request that did succeed must get its batch, not a 429."""
    idempotency = idempotency_for(owner, idempotency_key, request_hash, settings)
    if idempotency is not None and (earlier := await store.repeat_of(idempotency)) is not None:
        return earlier, False
    admission = await limits.admit(owner, plan.count)
    try:
        batch, created = await submit(
            store, plan, settings, owner=owner, idempotency=idempotency,
            also=limits.settle(admission),
        )  # fmt: skip
    except BaseException:
        await limits.release(admission)
        raise
    if not created:  # the same request, concurrently: the other one's batch
        await limits.release(admission)
    return batch, created
