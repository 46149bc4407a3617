"""Items of a large submission, written page by page while the submission is still being read,
before the batch they belong to exists: the batch's inputs list under an id chosen up front,
expiring unless the batch is created (which makes it permanent in the transaction that stores
the batch), and dropped at once when the submission is refused. Each page is one short Redis
command, so neither the API's event loop nor Redis is held by a large submission."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from shared import keys
from shared.errors import ServiceUnavailable
from shared.model import ModelPart

#: How long staged items outlive their last page unless their batch is created.
STAGED_TTL_S = 3600


@dataclass(frozen=True, slots=True)
class EncodedPage:
    """A page of items as stored: each item's JSON (`keys.inputs`), and its custom_id apart
    (`keys.custom_ids`), so that a results page never reads a prompt."""

    items: list[bytes]
    custom_ids: list[str]

    def __len__(self) -> int:
        return len(self.items)


def encode_page(records: Sequence[tuple[Any, ...]]) -> EncodedPage:
    """Items (`ItemRecord`s: custom_id first) as stored."""
    return EncodedPage([orjson.dumps(r) for r in records], [str(r[0]) for r in records])


def push_page(pipe: Pipeline, batch_id: str, page: EncodedPage) -> None:
    """Append a page of items to a batch's (or a batch-to-be's) inputs and custom ids."""
    pipe.rpush(keys.inputs(batch_id), *page.items)
    pipe.rpush(keys.custom_ids(batch_id), *page.custom_ids)


@dataclass(frozen=True, slots=True)
class Staged:
    """Items already in the inputs list of `batch_id`, the id the batch will have."""

    batch_id: str
    count: int


async def watch_staged(pipe: Pipeline, staged: Staged) -> None:
    """Watch the staged items of a batch about to be created, and check that they are all
    still there (they could have expired, or been evicted under memory pressure): a batch is
    never created without its items. The transaction retries if they change meanwhile."""
    await pipe.watch(keys.inputs(staged.batch_id), keys.custom_ids(staged.batch_id))
    inputs = await pipe.llen(keys.inputs(staged.batch_id))  # type: ignore[misc]
    ids = await pipe.llen(keys.custom_ids(staged.batch_id))  # type: ignore[misc]
    if inputs != staged.count or ids != staged.count:
        await pipe.reset()  # type: ignore[no-untyped-call]
        raise ServiceUnavailable("The submission's items were lost before it was stored.")


class Staging(ModelPart):
    """Writes and drops staged items."""

    async def stage_items(self, batch_id: str, page: EncodedPage) -> None:
        """Append a page of encoded items (in input order) to the batch-to-be's inputs."""
        async with self.redis.pipeline(transaction=True) as pipe:
            push_page(pipe, batch_id, page)
            pipe.expire(keys.inputs(batch_id), STAGED_TTL_S)
            pipe.expire(keys.custom_ids(batch_id), STAGED_TTL_S)
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
                pipe.delete(keys.inputs(batch_id), keys.custom_ids(batch_id))
                await pipe.execute()
            except WatchError:  # the batch was created meanwhile: its items are its own
                return
