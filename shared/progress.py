"""The data model of progress: a batch's events stream (an item became final, the status
changed), read by the API's events hub. The writes happen in the batch scripts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from shared import keys
from shared.model import ModelPart, decode


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """One entry of a batch's events stream: an item became final, or the batch's status changed."""

    id: str
    kind: Literal["item", "status"]
    status: str
    index: int | None = None
    custom_id: str | None = None

    @property
    def at_ms(self) -> int:
        """When it happened: the Unix time in ms that Redis gave its stream id."""
        return int(self.id.split("-", 1)[0])

    @classmethod
    def of(cls, entry_id: bytes, fields: Mapping[bytes, bytes]) -> ProgressEvent:
        f = decode(fields)
        index = int(f["i"]) if "i" in f else None
        return cls(entry_id.decode(), cast(Any, f["k"]), f["s"], index, f.get("c"))


class Progress(ModelPart):
    """Batches' events streams in Redis."""

    async def last_event_id(self, batch_id: str) -> str:
        """The id of the batch's newest progress event ("0-0" before any)."""
        newest = await self.redis.xrevrange(keys.events(batch_id), count=1)
        return str(newest[0][0].decode()) if newest else "0-0"

    async def events_between(self, batch_id: str, after: str, upto: str) -> list[ProgressEvent]:
        """Progress events with ids in (after, upto]."""
        entries = await self.redis.xrange(keys.events(batch_id), min=f"({after}", max=upto)
        return [ProgressEvent.of(entry_id, fields) for entry_id, fields in entries]

    async def next_events(self, batch_id: str, after: str, block_ms: int) -> list[ProgressEvent]:
        """Progress events after `after`, waiting up to `block_ms` for the first."""
        found = await self.redis.xread({keys.events(batch_id): after}, count=1000, block=block_ms)
        if not found:
            return []
        return [ProgressEvent.of(entry_id, fields) for entry_id, fields in found[0][1]]
