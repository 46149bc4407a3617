"""Large submissions, taken in without holding the event loop or the whole batch in memory.

An OpenAI Batch upload (NDJSON) larger than `INLINE_BYTES` is spooled as it arrives (to a
temporary file past `SPOOL_MEMORY_BYTES`), its lines counted and its bytes hashed meanwhile.
Then its lines are validated a page at a time in a thread, and each page's items are written
to Redis at once (`shared/staging.py`) and let go: a million-line file costs the API a page of
items, not a million. A JSON submission with many items (parsed whole: JSON has no lines) has
its items encoded and written the same way, a page at a time, in a thread. Either way the batch
itself is then created in one transaction, or the staged items are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import IO, Any

from fastapi.concurrency import run_in_threadpool
from redis.exceptions import RedisError
from starlette.requests import Request

from api.items import resolve_input, resolve_item
from api.planning import batch_mode, model_and_provider, named_provider, portable_params
from shared.batches import BatchPlan, ItemRecord, new_batch_id
from shared.errors import InvalidRequest
from shared.model import PAGE
from shared.openai_format import NO_LINES, RequestLines, as_line_error, json_lines
from shared.schemas import EMBEDDINGS, Batch
from shared.settings import Settings
from shared.staging import EncodedPage, Staged, encode_page
from shared.store import BatchStore

#: Bodies up to this size are read whole, on the loop (parsing them costs under a millisecond).
INLINE_BYTES = 64 * 1024
#: How much of an upload is kept in memory before the rest goes to a temporary file.
SPOOL_MEMORY_BYTES = 8 * 1024 * 1024
#: Bytes gathered before each write to the spool (one thread hop each).
_SPOOL_WRITE_BYTES = 1024 * 1024
#: Items of a JSON submission past which they are staged rather than written in the create.
STAGE_ITEMS = 1000


@dataclass
class Upload:
    """An NDJSON body larger than `INLINE_BYTES`, spooled: its lines (counting the last one
    without a newline) and the SHA-256 of its bytes."""

    file: IO[bytes]
    lines: int
    digest: str

    async def close(self) -> None:
        await asyncio.to_thread(self.file.close)


async def read_whole(request: Request) -> bytes:
    """The body whole. A large one is joined in a thread: copying tens of MB into one new
    buffer (and faulting its pages in) holds the event loop 50-120 ms, as Starlette's
    `Request.body()` does."""
    pieces = [piece async for piece in request.stream()]
    if sum(map(len, pieces)) <= INLINE_BYTES:
        return b"".join(pieces)
    return await asyncio.to_thread(b"".join, pieces)


async def read_body(request: Request) -> bytes | Upload:
    """The body whole when it is small, else spooled as an `Upload`."""
    head: list[bytes] = []
    size = 0
    stream = request.stream()
    async for piece in stream:
        head.append(piece)
        size += len(piece)
        if size > INLINE_BYTES:
            break
    else:
        return b"".join(head)
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115
    digest = hashlib.sha256()
    lines = 1
    try:
        pending, pending_size = head, size
        async for piece in stream:
            pending.append(piece)
            pending_size += len(piece)
            if pending_size >= _SPOOL_WRITE_BYTES:
                lines += await asyncio.to_thread(_spool, spool, digest, pending)
                pending, pending_size = [], 0
        lines += await asyncio.to_thread(_spool, spool, digest, pending)
        await asyncio.to_thread(spool.seek, 0)
    except BaseException:
        await asyncio.to_thread(spool.close)
        raise
    return Upload(spool, lines, digest.hexdigest())


def _spool(spool: IO[bytes], digest: hashlib._Hash, pieces: list[bytes]) -> int:
    data = b"".join(pieces)
    spool.write(data)
    digest.update(data)
    return data.count(b"\n")


async def stage_upload(upload: Upload, store: BatchStore, settings: Settings) -> BatchPlan:
    """An OpenAI Batch upload's items validated and staged a page at a time: the plan of its
    batch (`staged`). Lines are counted before any is validated; the first wrong line is an
    InvalidRequest naming it, and nothing is left behind."""
    if upload.lines > settings.max_prompts:  # blank lines are rare: count them only now
        count = await asyncio.to_thread(_nonblank_lines, upload.file)
        if count > settings.max_prompts:
            raise InvalidRequest(
                f"A batch holds at most {settings.max_prompts} prompts; got {count}.",
                param=f"line[{settings.max_prompts + 1}]",
            )
    batch_id = new_batch_id()
    pages = LinePages(upload.file, settings)
    try:
        while page := await run_in_threadpool(pages.next_page):
            await store.stage_items(batch_id, page)
    except BaseException:
        await drop_staged(store, batch_id)
        raise
    if pages.count == 0:
        raise InvalidRequest(NO_LINES, param="line[1]")
    embeddings = pages.read.endpoint == EMBEDDINGS
    try:
        provider, model = model_and_provider(pages.read.model, embeddings, settings)
    except InvalidRequest as exc:
        await drop_staged(store, batch_id)
        raise InvalidRequest(exc.message, param="line[1].body.model") from None
    return BatchPlan(
        items=[],
        endpoint=pages.read.endpoint,
        model=model,
        system=None,
        params=pages.read.params,
        max_concurrency=settings.default_concurrency,
        metadata=None,
        provider=provider,
        mode=batch_mode(None, None, provider, settings, pages.read.endpoint),
        staged=Staged(batch_id, pages.count),
    )


async def stage_plan(plan: BatchPlan, store: BatchStore) -> BatchPlan:
    """A plan with many items as one whose items are staged: encoded a page at a time in a
    thread, each page written at once (the transaction that creates the batch stays small)."""
    if plan.staged is not None or len(plan.items) <= STAGE_ITEMS:
        return plan
    batch_id = new_batch_id()
    try:
        for start in range(0, len(plan.items), PAGE):
            page = await run_in_threadpool(encode_page, plan.items[start : start + PAGE])
            await store.stage_items(batch_id, page)
        staged = replace(plan, items=[], staged=Staged(batch_id, len(plan.items)))
        await asyncio.to_thread(release, plan.items)  # freed off the loop (a while for 50,000)
    except BaseException:
        await drop_staged(store, batch_id)
        raise
    return staged


async def create_staged(
    plan: BatchPlan, store: BatchStore, create: Callable[[], Awaitable[tuple[Batch, bool]]]
) -> tuple[Batch, bool]:
    """`create()` the batch of `plan`; its staged items are dropped unless a batch was made
    from them (refused, a repeat of an earlier submission, or cut off)."""
    try:
        batch, created = await create()
    except BaseException:
        if plan.staged is not None:
            await drop_staged(store, plan.staged.batch_id)
        raise
    if not created and plan.staged is not None:
        await drop_staged(store, plan.staged.batch_id)
    return batch, created


async def drop_staged(store: BatchStore, batch_id: str) -> None:
    """Drop staged items, come what may: with Redis away they expire on their own, and the
    answer stays the one the submission earned."""
    with contextlib.suppress(RedisError):
        await asyncio.shield(store.drop_staged(batch_id))


def release(entries: list[Any]) -> None:
    """Empty a long list a slice at a time (in a thread): freeing what it holds in one call
    would hold the GIL, and so the event loop, until all of it is freed."""
    while entries:
        del entries[-PAGE:]


class LinePages:
    """An upload's request lines, a page of encoded items at a time (`next_page`, run in a
    thread; an empty page at the end)."""

    def __init__(self, file: IO[bytes], settings: Settings) -> None:
        self._lines = numbered_lines(file)
        self._settings = settings
        self.read = RequestLines()
        self.count = 0

    def next_page(self) -> EncodedPage:
        page: list[ItemRecord] = []
        for number, raw in self._lines:
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest("The body is not UTF-8 text.") from None
            for _, value in json_lines([text], start=number):
                item = self.read.item(number, value)
                resolve = resolve_input if self.read.endpoint == EMBEDDINGS else resolve_item
                try:
                    record = resolve(item, item.custom_id or "", "prompts[0]", self._settings)
                    provider = named_provider(self.read.model)
                    if provider not in (None, "openai") and len(record) == 3:
                        portable_params(record[2], provider, "prompts[0].params")
                except InvalidRequest as exc:
                    raise as_line_error(exc, [number]) from None
                page.append(record)
                self.count += 1
            if len(page) >= PAGE:
                break
        return encode_page(page)


#: Longest request line read (a line is read whole before it is parsed, so bounded first).
MAX_LINE_BYTES = 8 * 1024 * 1024


def numbered_lines(file: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, its bytes) of every line; lines end at b"\\n" only (JSON allows
    U+2028 and U+2029 raw inside strings). A line over `MAX_LINE_BYTES` is refused unread."""
    number = 0
    while line := file.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(line) - line.endswith(b"\n") > MAX_LINE_BYTES:
            raise too_long_line(number)
        yield number, line.rstrip(b"\n")


def too_long_line(number: int) -> InvalidRequest:
    return InvalidRequest(
        f"Line {number} is longer than {MAX_LINE_BYTES} bytes.", param=f"line[{number}]"
    )


async def counted_prompts(upload: Upload) -> int:
    """An upload's prompts (its lines but blank ones), read in a thread."""
    return await asyncio.to_thread(_nonblank_lines, upload.file)


def _nonblank_lines(file: IO[bytes]) -> int:
    count = sum(1 for line in file if line.strip())
    file.seek(0)
    return count
