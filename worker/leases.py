"""A worker's leases on the chunks it runs: short, renewed while it lives, lapsing when it dies.

arq claims a started job for job_timeout + 10 s (a day, here), so a killed worker's chunk would
wait that long. The worker instead puts its name and a short lease on the claim at once and
renews it every heartbeat (`shared/jobs.py` holds the claims themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from redis.asyncio import Redis

from shared.jobs import Claims


class Leases:
    """The claims of one worker process, and which of its runs lost theirs."""

    def __init__(self, redis: Redis, owner: str, lease_s: float) -> None:
        self._claims = Claims(redis, owner, int(lease_s * 1000))
        self.owner = owner
        self.lease_ms = self._claims.lease_ms
        self._held: dict[str, asyncio.Event] = {}
        # A renewal may take a lapsed claim again, so a run lets go of its claim only between
        # renewals: once it has, arq deletes the claim and no renewal brings it back.
        self._renewing = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def hold(self, job_id: str) -> AsyncIterator[asyncio.Event]:
        """Claim a job this worker has just started and keep it claimed until the block ends.
        The event is set if another worker has taken the claim (this run must then stop)."""
        await self._claims.take(job_id)
        # Renewed only from here: a renewal that reached Redis before this claim did would find
        # arq's claim under another name and stop the run as lost.
        lost = self._held[job_id] = asyncio.Event()
        try:
            yield lost
        finally:
            async with self._renewing:
                del self._held[job_id]

    async def taken_over(self, job_id: str) -> bool:
        """Whether a job whose claim this worker lost is another worker's now (still queued),
        rather than gone with its batch or finished by that worker."""
        return await self._claims.queued(job_id)

    async def renew(self) -> list[str]:
        """Renew every claim this worker holds; returns the jobs now claimed by another."""
        async with self._renewing:
            job_ids = list(self._held)
            if not job_ids:
                return []
            renewed = await self._claims.renew(job_ids)
            lost = [job_id for job_id, ok in zip(job_ids, renewed, strict=True) if not ok]
            for job_id in lost:
                self._held[job_id].set()
            return lost
