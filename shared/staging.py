"""Items of a large submission, written page by page while the submission is still being read,
before the batch they belong to exists: the batch's inputs list under an id chosen up front,
expiring unless the batch is created (which makes it permanent in the transaction that stores
the batch), and dropped at once when the submission is refused. Each page is one short Redis
command, so neither the API's event loop nor Redis is held by a large submission."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from shared import keys
from shared.errors import ServiceUnavailable
from shared.model import ModelPart

#: How long staged items outlive their last page unless their batch is created.
STAGED_TTL_S = 3600


@dataclass(frozen=True, slots=True)
class Staged:
    """Items already in the inputs list of `batch_id`, the id the batch will have."""

    batch_id: str
    count: int


async def watch_staged(pipe: Pipeline, staged: Staged) -> None:
    """Watch the staged items of a batch about to be created, and check that they are all
    still there (they could have expired, or been evicted under memory pressure): a batch is
    never created without its items. The transaction retries if they change meanwhile."""
    await pipe.watch(keys.inputs(staged.batch_id))
    if await pipe.llen(keys.inputs(staged.batch_id)) != staged.count:  # type: ignore[misc]
        await pipe.reset()  # type: ignore[no-untyped-call]
        raise ServiceUnavailable("The submission's items were lost before it was stored.")


class Staging(ModelPart):
    """Writes and drops staged items."""

    async def stage_items(self, batch_id: str, encoded: Sequence[bytes]) -> None:
        """Append a page of encoded items (in input order) to the batch-to-be's inputs."""
        name = keys.inputs(batch_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.rpush(name, *encoded)
            pipe.expire(name, STAGED_TTL_S)
            await pipe.execute()

    async def drop_staged(self, batch_id: str) -> None:
        """Drop the staged items of a submission that made no batch (refused, a repeat of an
        earlier one, or cut off); never those of a batch that was created."""
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(keys.batch(batch_id))
                if await pipe.exists(keys.batch(batch_id)):
                    return
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.delete(keys.inputs(batch_id))
                await pipe.execute()
            except WatchError:  # the batch was created meanwhile: its items are its own
                return
