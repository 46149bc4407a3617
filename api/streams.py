"""Open event streams per key, counted in Redis so the ceiling holds across API processes: one
client cannot hold the connections that every other client and the workers need."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys, lua
from shared.errors import TooManyRequests

#: How long an open stream counts without being renewed, and how often it is renewed.
LEASE_MS = 60_000
RENEW_S = 20.0
#: Retry-After when a key holds all its streams: they end when their clients go.
FULL_RETRY_S = 5

_OPEN = lua.load("api", "open_stream")

T = TypeVar("T")


class StreamSlots:
    """The open-stream ceiling (`PROMPTBATCH_MAX_STREAMS_PER_KEY`)."""

    def __init__(self, redis: Redis, ceiling: int) -> None:
        self.redis = redis
        self.ceiling = ceiling
        self._open = redis.register_script(_OPEN)

    async def open(self, owner: str) -> str:
        """Count one more open stream for `owner` (its token), or raise 429."""
        token = secrets.token_hex(8)
        opened = await self._open(keys=[keys.streams(owner)], args=[token, self.ceiling, LEASE_MS])
        if not opened:
            raise TooManyRequests(
                f"This key has {self.ceiling} event streams open; close one or try again shortly.",
                retry_after_s=FULL_RETRY_S,
            )
        return token

    async def held(self, owner: str, token: str, events: AsyncIterator[T]) -> AsyncIterator[T]:
        """`events`, with the stream counted (and its entry renewed) until it ends."""
        renewing = asyncio.create_task(self._renew(owner, token))
        try:
            async for event in events:
                yield event
        finally:
            renewing.cancel()
            with contextlib.suppress(RedisError):  # else it lapses within a lease
                await asyncio.shield(self.redis.zrem(keys.streams(owner), token))

    async def _renew(self, owner: str, token: str) -> None:
        while True:
            await asyncio.sleep(RENEW_S)
            with contextlib.suppress(RedisError):
                now_ms = int((await self.redis.time())[0]) * 1000
                await self.redis.zadd(keys.streams(owner), {token: now_ms + LEASE_MS}, xx=True)
                await self.redis.pexpire(keys.streams(owner), LEASE_MS)
