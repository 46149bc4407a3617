"""Files of the OpenAI surface (`/openai/v1/files`): a JSONL of batch request lines, kept in Redis
in pieces of whole lines (`keys.file_pieces`) beside its fields (`keys.file`) until it is
deleted or its `PROMPTBATCH_FILE_TTL_S` ends, and listed per owner (`keys.files`).

A file is written a piece at a time from a spooled upload (read in a thread), and read back a
piece at a time: never whole in memory. Its fields are written last, in one transaction with
its place in the owner's list, so a file is there whole or not at all; pieces left by an
upload cut off expire with their TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO, Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.errors import NotFound

#: About how many bytes each stored piece holds (it ends at the end of a line).
PIECE_BYTES = 1024 * 1024

#: The prefix of every file id, as OpenAI's.
FILE_PREFIX = "file-"


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: str
    owner: str
    bytes: int
    lines: int
    created_at: int  # epoch seconds
    expires_at: int
    filename: str
    purpose: str


def _piece(source: IO[bytes]) -> bytes:
    """The next piece of `source`: about PIECE_BYTES, to the end of a line (b"" at its end)."""
    piece = source.read(PIECE_BYTES)
    if piece and not piece.endswith(b"\n"):
        piece += source.readline()
    return piece


class Files:
    """The uploaded files in Redis."""

    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_ms = ttl_s * 1000

    async def put(
        self, owner: str, filename: str, purpose: str, source: IO[bytes], size: int, lines: int
    ) -> StoredFile:
        """Store `source` (read from its start, in a thread) as a new file of `owner`."""
        file_id = FILE_PREFIX + secrets.token_hex(12)
        pieces = keys.file_pieces(file_id)
        now_ms = time.time_ns() // 1_000_000
        stored = StoredFile(
            id=file_id, owner=owner, bytes=size, lines=lines, created_at=now_ms // 1000,
            expires_at=(now_ms + self.ttl_ms) // 1000, filename=filename, purpose=purpose,
        )  # fmt: skip
        try:
            await asyncio.to_thread(source.seek, 0)
            while piece := await asyncio.to_thread(_piece, source):
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.rpush(pieces, piece)
                    pipe.pexpire(pieces, self.ttl_ms)
                    await pipe.execute()
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(keys.file(file_id), mapping={
                    "owner": owner, "bytes": size, "lines": lines, "created_at": stored.created_at,
                    "expires_at": stored.expires_at, "filename": filename, "purpose": purpose,
                })  # fmt: skip
                pipe.pexpire(keys.file(file_id), self.ttl_ms)
                pipe.pexpire(pieces, self.ttl_ms)
                pipe.zadd(keys.files(owner), {file_id: now_ms})
                pipe.pexpire(keys.files(owner), self.ttl_ms)  # gone with the newest file
                await pipe.execute()
        except BaseException:
            with contextlib.suppress(RedisError):  # else they expire with their TTL
                await asyncio.shield(self.redis.delete(pieces))
            raise
        return stored

    async def get(self, file_id: str, owner: str | None) -> StoredFile:
        """The file, if it is there and `owner`'s (None: anyone's); else NotFound."""
        fields = await self.redis.hgetall(keys.file(file_id)) if _plausible(file_id) else {}  # type: ignore[misc]
        found = _stored(file_id, fields)
        if found is None or (owner is not None and found.owner != owner):
            raise NotFound(f"No such File object: {file_id}", param="file_id")
        return found

    async def pieces(self, file_id: str) -> AsyncIterator[bytes]:
        """The file's bytes, a piece at a time (stops early if it is deleted meanwhile)."""
        index = 0
        while found := await self.redis.lrange(keys.file_pieces(file_id), index, index):  # type: ignore[misc]
            yield found[0]
            index += 1

    async def delete(self, file_id: str, owner: str | None) -> None:
        found = await self.get(file_id, owner)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.file(file_id), keys.file_pieces(file_id))
            pipe.zrem(keys.files(found.owner), file_id)
            await pipe.execute()

    async def list(
        self,
        owner: str,
        *,
        limit: int,
        after: str | None = None,
        order: Literal["asc", "desc"] = "desc",
        purpose: str | None = None,
    ) -> tuple[list[StoredFile], bool]:
        """A page of the owner's files by creation (`after` a file id), and whether more
        follow. Entries whose file has expired are dropped as they are met."""
        index = keys.files(owner)
        rank = -1
        if after is not None:
            found = await (self.redis.zrank if order == "asc" else self.redis.zrevrank)(
                index, after
            )
            if found is None:
                return [], False
            rank = int(found)
        page: list[StoredFile] = []
        start = rank + 1
        while len(page) <= limit:
            span = (
                await self.redis.zrange(index, start, start + limit, desc=order == "desc")
            )  # fmt: skip
            if not span:
                break
            start += len(span)
            async with self.redis.pipeline(transaction=False) as pipe:
                for raw in span:
                    pipe.hgetall(keys.file(raw.decode()))
                found_fields = await pipe.execute()
            gone = []
            for raw, fields in zip(span, found_fields, strict=True):
                stored = _stored(raw.decode(), fields)
                if stored is None:
                    gone.append(raw)
                elif purpose is None or stored.purpose == purpose:
                    page.append(stored)
            if gone:
                await self.redis.zrem(index, *gone)
                start -= len(gone)
        return page[:limit], len(page) > limit


def _plausible(file_id: str) -> bool:
    return file_id.startswith(FILE_PREFIX) and len(file_id) <= 64


def _stored(file_id: str, fields: dict[bytes, bytes]) -> StoredFile | None:
    if not fields:
        return None
    text = {name.decode(): value.decode() for name, value in fields.items()}
    return StoredFile(
        id=file_id, owner=text["owner"], bytes=int(text["bytes"]), lines=int(text["lines"]),
        created_at=int(text["created_at"]), expires_at=int(text["expires_at"]),
        filename=text["filename"], purpose=text["purpose"],
    )  # fmt: skip
