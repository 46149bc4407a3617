"""The data model of retrying a final batch's items in place: the items to run again are found
page by page (`shared/lua/retry_scan.lua`), then reset page by page under a generation guard
(`retry_begin.lua`, `retry_page.lua`, `retry_end.lua`): their results dropped, their counts
taken back, the batch running again. No call holds Redis for long, however many items are
retried. Queueing the chunks it names is the caller's (`shared/jobs.py`); should that never
happen, the reconciler queues them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from shared import keys
from shared.batches import owned_by
from shared.errors import Conflict, NotFound
from shared.model import PAGE, ModelPart, batch_script
from shared.schemas import FINAL_BATCH_STATUSES, FinalItemStatus

#: What an item that is retried may have ended as; `failed` ones are always retried, the
#: others when asked for.
RETRIED: FinalItemStatus = "failed"
RETRYABLE: tuple[FinalItemStatus, ...] = (RETRIED, "cancelled", "expired")

#: Scans of a batch before giving up on it while other requests keep retrying it meanwhile.
SCANS = 3

# Read at import, so that registering a script never reads a file on the event loop.
for _name in ("retry_scan", "retry_begin", "retry_page", "retry_end"):
    batch_script(_name)

#: How long a retry may take to reset its pages before another retry of the batch may begin.
RESET_LEASE_MS = 60_000


def retried_statuses(include: Iterable[str] = ()) -> tuple[FinalItemStatus, ...]:
    """The item statuses a retry resets: `failed`, and those of `include` (of `RETRYABLE`), in
    `RETRYABLE`'s order. ValueError for any other status."""
    asked = set(include)
    unknown = asked.difference(RETRYABLE)
    if unknown:
        raise ValueError(f"not a status a retry resets: {', '.join(sorted(unknown))}")
    return tuple(s for s in RETRYABLE if s == RETRIED or s in asked)


class Retries(ModelPart):
    """Final batches' items run again in place."""

    async def retry(
        self, batch_id: str, include: Iterable[str] = (), owner: str | None = None
    ) -> list[int]:
        """Put the batch's failed items (and those of `include`: `cancelled`, `expired`) back
        to pending, and the batch back to running. Returns the chunks to queue again.
        NotFound when there is no such batch (or, with `owner`, it is another owner's);
        Conflict when it is not final, or has no such item (nor any a failed batch never ran).
        """
        statuses = retried_statuses(include)
        for _ in range(SCANS):
            status, found_owner, total, retries = await self.redis.hmget(  # type: ignore[misc]
                keys.batch(batch_id), ["status", "owner", "total", "retries"]
            )
            if status is None or not owned_by(found_owner, owner):
                raise NotFound(f"No batch {batch_id}.")
            if status.decode() not in FINAL_BATCH_STATUSES:
                raise _not_final(batch_id, status.decode())
            found = await self._scan(batch_id, int(total), statuses)
            generation = retries.decode() if retries is not None else "0"
            code = await self.run_script("retry_begin", batch_id, [generation, RESET_LEASE_MS])
            if code == 1:
                reset = await self._reset_pages(batch_id, generation, statuses, found)
                args = [generation, keys.ACTIVE_TTL_MS, reset]
                code, *chunks = await self._end(batch_id, found_owner.decode(), args)
                if code == 1:
                    return [int(chunk) for chunk in chunks]
                if code == 0:
                    raise Conflict(f"Batch {batch_id} has no {_named(statuses)} items to retry.")
            if code == -2:
                raise NotFound(f"No batch {batch_id}.")
            if code == -1:
                now = await self.redis.hget(keys.batch(batch_id), "status")  # type: ignore[misc]
                raise _not_final(batch_id, now.decode() if now is not None else "gone")
            if code == -4:
                raise Conflict(
                    f"Batch {batch_id} has spent its token budget (max_total_tokens); "
                    "submit its items again as a new batch."
                )
            # -3: retried by another request since the scan; scan again.
        raise Conflict(f"Batch {batch_id} is being retried by another request; try again.")

    async def _reset_pages(
        self, batch_id: str, generation: str, statuses: tuple[str, ...], found: list[int]
    ) -> int:
        """Reset the items found, a page per call; -3 stops it (the batch is another's now)."""
        reset = 0
        for start in range(0, len(found), PAGE):
            args: list[str | int] = [generation, len(statuses), *statuses]
            args += found[start : start + PAGE]
            done = cast(int, await self.run_script("retry_page", batch_id, args))
            if done < 0:
                raise Conflict(f"Batch {batch_id} is being retried by another request.")
            reset += done
        return reset

    async def _end(self, batch_id: str, owner: str, args: list[str | int]) -> list[int]:
        """Run `retry_end.lua`: a batch script with two keys more, the active sets it joins."""
        script = self._scripts.get("retry_end")
        if script is None:
            script = self._scripts["retry_end"] = self.redis.register_script(
                batch_script("retry_end")
            )
        every_key = [*keys.batch_script_keys(batch_id), keys.ACTIVE, keys.active_batches(owner)]
        return cast(list[int], await script(keys=every_key, args=args))

    async def _scan(
        self, batch_id: str, total: int, statuses: Iterable[FinalItemStatus]
    ) -> list[int]:
        """Indices of the items whose result has one of `statuses`, a page per script call."""
        found: list[int] = []
        for start in range(0, total, PAGE):
            args = [start, min(start + PAGE, total), *statuses]
            page = cast(list[int], await self.run_script("retry_scan", batch_id, args))
            found += [int(index) for index in page]
        return found


def _not_final(batch_id: str, status: str) -> Conflict:
    return Conflict(f"Batch {batch_id} is {status}; only a final batch can be retried.")


def _named(statuses: tuple[FinalItemStatus, ...]) -> str:
    """`failed`, `failed or cancelled`, `failed, cancelled or expired`."""
    if len(statuses) == 1:
        return statuses[0]
    return f"{', '.join(statuses[:-1])} or {statuses[-1]}"
