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
from shared.errors import InvalidRequest, NotFound

#: About how many bytes each stored piece holds (it ends at the end of a line).
PIECE_BYTES = 1024 * 1024

#: The longest a file may ask to be kept (`expires_after`, OpenAI's bound: 30 days).
_LONGEST_MS = 30 * 24 * 3600 * 1000

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
        self,
        owner: str,
        filename: str,
        purpose: str,
        source: IO[bytes],
        size: int,
        lines: int,
        ttl_s: int | None = None,
    ) -> StoredFile:
        """Store `source` (read from its start, in a thread) as a new file of `owner`, kept
        `ttl_s` (else the configured TTL)."""
        ttl_ms = self.ttl_ms if ttl_s is None else ttl_s * 1000
        now_ms = time.time_ns() // 1_000_000
        # Ids sort as they were made (a listing's cursor stays good after its file is gone).
        file_id = f"{FILE_PREFIX}{now_ms:012x}{secrets.token_hex(8)}"
        pieces = keys.file_pieces(file_id)
        stored = StoredFile(
            id=file_id, owner=owner, bytes=size, lines=lines, created_at=now_ms // 1000,
            expires_at=(now_ms + ttl_ms) // 1000, filename=filename, purpose=purpose,
        )  # fmt: skip
        try:
            await asyncio.to_thread(source.seek, 0)
            while piece := await asyncio.to_thread(_piece, source):
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.rpush(pieces, piece)
                    pipe.pexpire(pieces, ttl_ms)
                    await pipe.execute()
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(keys.file(file_id), mapping={
                    "owner": owner, "bytes": size, "lines": lines, "created_at": stored.created_at,
                    "expires_at": stored.expires_at, "filename": filename, "purpose": purpose,
                })  # fmt: skip
                pipe.pexpire(keys.file(file_id), ttl_ms)
                pipe.pexpire(pieces, ttl_ms)
                pipe.zadd(keys.files(owner), {file_id: 0})
                # Gone after the owner's longest-lived file (none outlives 30 days or the TTL).
                pipe.pexpire(keys.files(owner), max(self.ttl_ms, _LONGEST_MS))
                await pipe.execute()
        except BaseException:
            with contextlib.suppress(RedisError):  # else they expire with their TTL
                await asyncio.shield(self.redis.delete(pieces))
            raise
        return stored

    async def make_room(self, owner: str, size: int, most_bytes: int, most_files: int) -> None:
        """Refuse a file of `size` bytes that would take the owner past `most_bytes` or
        `most_files` stored (InvalidRequest); expired files' entries are dropped meanwhile."""
        index = keys.files(owner)
        ids = await self.redis.zrange(index, 0, -1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for raw in ids:
                pipe.hget(keys.file(raw.decode()), "bytes")
            sizes = await pipe.execute()
        gone = [raw for raw, held in zip(ids, sizes, strict=True) if held is None]
        if gone:
            await self.redis.zrem(index, *gone)
        held = sum(int(found) for found in sizes if found is not None)
        if len(ids) - len(gone) >= most_files or held + size > most_bytes:
            raise InvalidRequest(
                f"This key's files hold {held} bytes in {len(ids) - len(gone)} files; it may "
                f"hold {most_bytes} bytes in {most_files} files. Delete some first "
                "(DELETE /openai/v1/files/{id}).",
                param="file",
            )

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
        """A page of the owner's files by creation (`after` a file id, which need not be there
        any more), and whether more follow. Entries whose file has expired are dropped as they
        are met."""
        index, desc = keys.files(owner), order == "desc"
        cursor = ("+" if desc else "-") if after is None else f"({after}"
        page: list[StoredFile] = []
        while len(page) <= limit:
            if desc:
                span = await self.redis.zrevrangebylex(index, cursor, "-", 0, limit + 1)
            else:
                span = await self.redis.zrangebylex(index, cursor, "+", 0, limit + 1)
            if not span:
                break
            cursor = f"({span[-1].decode()}"
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
