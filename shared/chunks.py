"""The data model of chunks: which of a batch's chunks still have work, and the runs of each
that began and did not end (for the reconciler, and a worker resuming a dead one's chunk)."""

from __future__ import annotations

import contextlib
from typing import cast

from redis.exceptions import WatchError

from shared import keys
from shared.model import ModelPart
from shared.schemas import FINAL_BATCH_STATUSES


class Chunks(ModelPart):
    """Chunks and their runs in Redis."""

    async def begin_attempt(self, batch_id: str, chunk: int, run: str) -> int:
        """Record run `run` of a chunk as started; returns the chunk's runs that started and
        have not ended (this one included): the others' workers died."""
        return cast(int, await self.run_script("attempt", batch_id, [chunk, run]))

    async def end_attempt(self, batch_id: str, chunk: int, run: str) -> None:
        """A run that ends (finished, stopped or released) does not count against the chunk.
        Idempotent: safe to repeat when Redis did not answer."""
        await self.redis.hdel(keys.attempts(batch_id), f"{chunk}:{run}")  # type: ignore[misc]

    async def active_batches(self) -> list[str]:
        """Ids of batches that are not known to be final, oldest first."""
        return [raw.decode() for raw in await self.redis.zrange(keys.ACTIVE, 0, -1)]

    async def _drop_if_final(self, batch_id: str) -> None:
        """Out of the active set, unless a retry made it run again since it was read."""
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(keys.batch(batch_id))
            status = await pipe.hget(keys.batch(batch_id), "status")  # type: ignore[misc]
            if status is not None and status.decode() not in FINAL_BATCH_STATUSES:
                await pipe.reset()  # type: ignore[no-untyped-call]
                return
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.zrem(keys.ACTIVE, batch_id)
            with contextlib.suppress(WatchError):  # it changed meanwhile: read it next pass
                await pipe.execute()

    async def dispatched(self, batch_id: str) -> list[int]:
        """The batch's chunks the scheduler has dispatched (`shared/scheduler.py`): those
        before its cursor but the ones waiting to run again. A batch stored before the
        scheduler kept a cursor had every chunk queued at once."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.batch(batch_id), ["sched_next", "total", "chunk_size"])
            pipe.zrange(keys.redo(batch_id), 0, -1)
            (cursor, total, chunk_size), redo = await pipe.execute()
        if total is None:
            return []
        end = int(cursor) if cursor is not None else -(-int(total) // int(chunk_size))
        again = {int(chunk) for chunk in redo}
        return [chunk for chunk in range(end) if chunk not in again]

    async def unfinished_chunks(self, batch_id: str) -> list[int] | None:
        """Chunks with items not yet final, or None when the batch is gone or final (and is
        then dropped from the active set)."""
        status, total, chunk_size = await self.redis.hmget(  # type: ignore[misc]
            keys.batch(batch_id), ["status", "total", "chunk_size"]
        )
        if status is None or status.decode() in FINAL_BATCH_STATUSES:
            await self._drop_if_final(batch_id)
            return None
        total, chunk_size = int(total), int(chunk_size)
        final = await self.redis.hgetall(keys.chunks(batch_id))  # type: ignore[misc]
        done = {int(chunk): int(count) for chunk, count in final.items()}
        return [
            chunk
            for chunk in range(-(-total // chunk_size))
            if done.get(chunk, 0) < min(chunk_size, total - chunk * chunk_size)
        ]
