"""The OpenAI Files and Batch API's work, for `api/routes/openai_surface.py`: a file upload read
and checked a page at a time, a batch made from a stored file as an upload is made, and a
batch's output and error files made from its results as they are read."""

from __future__ import annotations

import asyncio
import hashlib
import io
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from functools import partial
from typing import IO

from fastapi.concurrency import run_in_threadpool
from redis.asyncio.client import Pipeline
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from api.admission import Limits, admit
from api.bodies import gc_paused
from api.ingest import (
    SPOOL_MEMORY_BYTES,
    LinePages,
    Upload,
    create_staged,
    drop_staged,
    numbered_lines,
    stage_plan,
    stage_upload,
)
from api.planning import batch_mode, completion_window
from shared import keys
from shared.errors import InvalidRequest, NotFound, PayloadTooLarge
from shared.files import Files, StoredFile
from shared.openai_objects import (
    CHAT_COMPLETIONS,
    OUTPUT,
    BatchCreateRequest,
    OpenAIBatch,
    openai_batch,
)
from shared.output_lines import output_line
from shared.schemas import EMBEDDINGS, Batch
from shared.settings import Settings
from shared.store import BatchStore

#: Batch hash fields of a batch made through `/openai/v1`: its input file and endpoint.
INPUT_FILE_FIELD, ENDPOINT_FIELD = "openai_input_file_id", "openai_endpoint"
#: When a cancel was asked for (epoch ms; `shared/lua/cancel.lua` sets it).
CANCELLED_FIELD = "cancel_requested_at"


@dataclass
class FileUpload:
    """A `POST /files` form: the file's bytes (spooled), its name and purpose."""

    file: IO[bytes]
    filename: str
    purpose: str
    #: How long to keep it (`expires_after[seconds]`), when the form says.
    ttl_s: int | None = None

    async def close(self) -> None:
        await asyncio.to_thread(self.file.close)


async def read_file_form(request: Request) -> FileUpload:
    """The multipart form of `POST /files`, its file spooled (to disk past a few MB) as it
    arrives; its size is bounded by the body limit (`PROMPTBATCH_MAX_FILE_BYTES`)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest(
            "Send the file as a multipart form (Content-Type: multipart/form-data), with the "
            "fields `file` and `purpose`."
        )
    parser = MultiPartParser(request.headers, request.stream(), max_files=1, max_fields=8)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidRequest(f"The body is not a multipart form: {exc.message}") from None
    upload, purpose = form.get("file"), form.get("purpose")
    try:
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("The form has no file: send it as the field `file`.", param="file")
        if purpose != "batch":
            raise InvalidRequest(
                f"purpose must be 'batch' (files here are batch input); got {str(purpose)[:32]!r}.",
                param="purpose",
            )
        ttl_s = _expires_after(
            form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
        )
    except BaseException:
        await form.close()
        raise
    return FileUpload(upload.file, (upload.filename or "upload.jsonl")[:256], purpose, ttl_s)


#: The bounds OpenAI puts on a file's `expires_after.seconds` (an hour to 30 days).
_EXPIRES_AFTER_S = (3600, 30 * 24 * 3600)


def _expires_after(anchor: object, seconds: object) -> int | None:
    """A file's `expires_after` (`anchor` `created_at`, `seconds` within OpenAI's bounds)."""
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest(
            "expires_after.anchor must be 'created_at'.", param="expires_after.anchor"
        )
    low, high = _EXPIRES_AFTER_S
    if not (isinstance(seconds, str) and seconds.isdigit() and low <= int(seconds) <= high):
        raise InvalidRequest(
            f"expires_after.seconds must be a whole number from {low} to {high}.",
            param="expires_after.seconds",
        )
    return int(seconds)


async def check_lines(upload: FileUpload, settings: Settings) -> tuple[int, int]:
    """Every request line of the upload checked, a page at a time in a thread, as a batch
    would take it (InvalidRequest names the first wrong line); its size and line count.
    Bytes and lines are counted first: a file past `PROMPTBATCH_MAX_FILE_BYTES` (413) or
    `PROMPTBATCH_MAX_FILE_LINES` (400) is refused without reading a line."""
    size, lines = await asyncio.to_thread(_measure, upload.file)
    if size > settings.max_file_bytes:  # the body's limit leaves room for the form around it
        raise PayloadTooLarge(
            f"A file is at most {settings.max_file_bytes} bytes; got {size}.", param="file"
        )
    if lines > settings.max_file_lines:
        raise InvalidRequest(
            f"A file holds at most {settings.max_file_lines} request lines; got {lines}.",
            param="file",
        )
    pages = LinePages(upload.file, settings)
    with gc_paused():  # each page's objects would set off full collections, loop and all
        while await run_in_threadpool(pages.next_page):
            pass
    if pages.count == 0:
        raise InvalidRequest("The file has no request lines.", param="file")
    await asyncio.to_thread(upload.file.seek, 0)
    return size, pages.count


def _measure(file: IO[bytes]) -> tuple[int, int]:
    """Bytes and non-blank lines of `file`, which is left at its start; a line over the
    longest is refused unread (`numbered_lines`)."""
    size = file.seek(0, io.SEEK_END)
    file.seek(0)
    lines = sum(1 for _, line in numbered_lines(file) if line.strip())
    file.seek(0)
    return size, lines


async def _spooled(files: Files, stored: StoredFile) -> Upload:
    """A stored file as an upload, its pieces spooled from Redis (to disk past a few MB)."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115
    digest = hashlib.sha256()
    size = 0
    try:
        async for piece in files.pieces(stored.id):
            await asyncio.to_thread(spool.write, piece)
            digest.update(piece)
            size += len(piece)
        if size != stored.bytes:  # deleted, or expired, while it was read
            raise NotFound(f"No such File object: {stored.id}", param="input_file_id")
        await asyncio.to_thread(spool.seek, 0)
    except BaseException:
        await asyncio.to_thread(spool.close)
        raise
    return Upload(spool, stored.lines, digest.hexdigest())


async def create_batch(
    request: BatchCreateRequest,
    owner: str,
    files: Files,
    store: BatchStore,
    limits: Limits,
    settings: Settings,
) -> Batch:
    """An ordinary batch of the input file's request lines, admitted, staged a page at a time
    and stored as a large upload is."""
    if request.endpoint not in (CHAT_COMPLETIONS, EMBEDDINGS):
        raise InvalidRequest(
            f"endpoint must be {CHAT_COMPLETIONS!r} or {EMBEDDINGS!r}; got "
            f"{request.endpoint[:64]!r}.",
            param="endpoint",
        )
    window = completion_window(request.completion_window)
    try:
        stored = await files.get(request.input_file_id, owner)
    except NotFound as exc:
        raise NotFound(exc.message, param="input_file_id") from None
    gate = await admit(limits, store, settings, owner, stored.lines)
    assert not isinstance(gate, Batch)  # no Idempotency-Key here: never a repeat

    def record(pipe: Pipeline, batch_id: str) -> None:
        fields = {INPUT_FILE_FIELD: stored.id, ENDPOINT_FIELD: request.endpoint}
        pipe.hset(keys.batch(batch_id), mapping=fields)

    async with gate.staging(large=True):
        upload = await _spooled(files, stored)
        try:
            with gc_paused():  # as `check_lines`
                plan = await stage_upload(upload, store, settings)
        finally:
            await upload.close()
        assert plan.staged is not None
        try:
            if plan.endpoint != request.endpoint:
                raise InvalidRequest(
                    f"The file's request lines are for {plan.endpoint}; endpoint is "
                    f"{request.endpoint}.",
                    param="endpoint",
                )
            mode = batch_mode(request.mode, None, plan.provider, settings, plan.endpoint)
        except InvalidRequest:
            await drop_staged(store, plan.staged.batch_id)
            raise
        plan = replace(
            plan, metadata=request.metadata, mode=mode,
            completion_window=None if window is None else window[0],
            completion_window_s=None if window is None else window[1],
        )  # fmt: skip
        plan = await stage_plan(plan, store)
        batch, _ = await create_staged(
            plan, store, partial(gate.store, store, plan, settings, record)
        )
    return batch


async def batch_view(store: BatchStore, batch: Batch) -> OpenAIBatch:
    """The batch as OpenAI's Batch object."""
    fields = [INPUT_FILE_FIELD, ENDPOINT_FIELD, CANCELLED_FIELD]
    found = await store.redis.hmget(keys.batch(batch.id), fields)  # type: ignore[misc]
    input_file_id, endpoint, cancelled_ms = (None if raw is None else raw.decode() for raw in found)
    cancelling_at = None if cancelled_ms is None else int(cancelled_ms) // 1000
    return openai_batch(batch, input_file_id, endpoint, cancelling_at)


async def result_lines(store: BatchStore, batch: Batch, kind: str) -> AsyncIterator[bytes]:
    """A batch's output file (`OUTPUT`: the requests answered 200) or error file (the rest:
    the provider's 4xx answers, and the requests that failed, were cancelled or expired), in
    input order, a page of results at a time."""
    spec = await store.spec(batch.id)
    encoding = spec.params.encoding_format if spec is not None else None
    async for page in await store.result_pages(batch.id):
        lines = []
        for item in page:
            line = output_line(item, batch, encoding)
            if line is None:
                continue
            answered = line.response is not None and line.response.status_code == 200
            if answered == (kind == OUTPUT):
                lines.append(line.model_dump_json() + "\n")
        if lines:
            yield "".join(lines).encode()
