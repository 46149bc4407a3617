"""What routes depend on: the clients the lifespan opened, typed for `Depends`."""

from __future__ import annotations

from typing import Annotated, TypedDict, cast

from arq.connections import ArqRedis
from fastapi import Depends, Request

from shared.settings import Settings
from shared.store import BatchStore


class AppState(TypedDict):
    """Yielded by the lifespan; Starlette hands a copy to every request as `request.state`."""

    settings: Settings
    redis: ArqRedis
    store: BatchStore


def get_settings(request: Request) -> Settings:
    return cast(Settings, request.state.settings)


def get_redis(request: Request) -> ArqRedis:
    return cast(ArqRedis, request.state.redis)


def get_store(request: Request) -> BatchStore:
    return cast(BatchStore, request.state.store)


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[ArqRedis, Depends(get_redis)]
StoreDep = Annotated[BatchStore, Depends(get_store)]
