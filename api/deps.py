"""What routes depend on: the clients the lifespan opened, typed for `Depends`."""

from __future__ import annotations

from typing import Annotated, TypedDict, cast

from fastapi import Depends, Path, Request
from redis.asyncio import Redis

from api.admission import Limits
from api.hub import EventHub
from api.streams import StreamSlots
from shared.batches import is_batch_id
from shared.errors import NotFound
from shared.files import Files
from shared.settings import Settings
from shared.store import BatchStore
from shared.webhooks import WebhookEndpoints


class AppState(TypedDict):
    """Yielded by the lifespan; Starlette hands a copy to every request as `request.state`."""

    settings: Settings
    redis: Redis
    store: BatchStore
    events: EventHub
    limits: Limits
    streams: StreamSlots
    webhooks: WebhookEndpoints
    files: Files


# The getters are `async def` although they only read the request's state: FastAPI runs a
# plain `def` dependency in its thread pool, a thread hop per dependency per request.
async def get_settings(request: Request) -> Settings:
    return cast(Settings, request.state.settings)


async def get_redis(request: Request) -> Redis:
    return cast(Redis, request.state.redis)


async def get_store(request: Request) -> BatchStore:
    return cast(BatchStore, request.state.store)


async def get_events(request: Request) -> EventHub:
    return cast(EventHub, request.state.events)


async def get_limits(request: Request) -> Limits:
    return cast(Limits, request.state.limits)


async def get_streams(request: Request) -> StreamSlots:
    return cast(StreamSlots, request.state.streams)


async def get_webhooks(request: Request) -> WebhookEndpoints:
    return cast(WebhookEndpoints, request.state.webhooks)


async def get_files(request: Request) -> Files:
    return cast(Files, request.state.files)


async def get_batch_id(batch_id: Annotated[str, Path(examples=[EXAMPLE_ID])]) -> str:
    """The `{batch_id}` of the path; one that is not of a batch id's form is a 404 at once,
    before any Redis call."""
    if not is_batch_id(batch_id):
        shown = batch_id if len(batch_id) <= 64 else batch_id[:64] + "…"
        raise NotFound(f"No batch {shown}.")  # as for an id that could exist: nothing to learn
    return batch_id


EXAMPLE_ID = "batch_" + "0" * 32

SettingsDep = Annotated[Settings, Depends(get_settings)]
BatchId = Annotated[str, Depends(get_batch_id)]
RedisDep = Annotated[Redis, Depends(get_redis)]
StoreDep = Annotated[BatchStore, Depends(get_store)]
EventsDep = Annotated[EventHub, Depends(get_events)]
LimitsDep = Annotated[Limits, Depends(get_limits)]
StreamsDep = Annotated[StreamSlots, Depends(get_streams)]
WebhooksDep = Annotated[WebhookEndpoints, Depends(get_webhooks)]
FilesDep = Annotated[Files, Depends(get_files)]
