"""What routes depend on: the clients the lifespan opened, typed for `Depends`."""

from __future__ import annotations

from typing import Annotated, TypedDict, cast

from fastapi import Depends, Request
from redis.asyncio import Redis

from api.admission import Limits
from api.hub import EventHub
from shared.settings import Settings
from shared.store import BatchStore


class AppState(TypedDict):
    """Yielded by the lifespan; Starlette hands a copy to every request as `request.state`."""

    settings: Settings
    redis: Redis
    store: BatchStore
    events: EventHub
    limits: Limits


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


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[Redis, Depends(get_redis)]
StoreDep = Annotated[BatchStore, Depends(get_store)]
EventsDep = Annotated[EventHub, Depends(get_events)]
LimitsDep = Annotated[Limits, Depends(get_limits)]
