"""OpenAI's Files and Batch API under `/openai/v1`: the official `openai` SDK's batch workflow
(upload a JSONL, create a batch of it, poll, read the output file) runs here unchanged. A batch
made here is an ordinary batch, the same one at `/v1/batches/{id}`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse

from api.auth import OwnerDep, require_owner
from api.deps import FilesDep, LimitsDep, RedisDep, SettingsDep, StoreDep
from api.errors import OPENAI_PREFIX
from api.lifecycle import cancel
from api.openai_surface import batch_view, check_lines, create_batch, read_file_form, result_lines
from shared.batches import is_batch_id
from shared.errors import InvalidRequest, NotFound
from shared.openai_objects import (
    BatchCreateRequest,
    FileDeleted,
    FileList,
    FileObject,
    OpenAIBatch,
    OpenAIBatchList,
    OpenAIErrorBody,
    result_file,
)

JSONL = "application/jsonl"

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIErrorBody} for code in (400, 401, 404, 413, 429, 503)
}

router = APIRouter(
    prefix=OPENAI_PREFIX,
    tags=["openai"],
    responses=_ERRORS,
    dependencies=[Depends(require_owner)],
)

FileId = Annotated[str, Path(max_length=128)]
OpenAIBatchId = Annotated[str, Path(max_length=128)]

_UPLOAD = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "purpose"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "purpose": {"type": "string", "enum": ["batch"]},
                },
            }
        }
    },
}


@router.post("/files", response_model=FileObject, openapi_extra={"requestBody": _UPLOAD})
async def create_file(
    request: Request, owner: OwnerDep, files: FilesDep, limits: LimitsDep, settings: SettingsDep
) -> FileObject:
    """Upload a JSONL of batch request lines (`purpose=batch`): each line is checked as a
    batch would take it, a page at a time; a wrong one is a 400 naming its line. An upload
    holds one of its key's upload slots (429 beyond `PROMPTBATCH_MAX_UPLOADS_PER_KEY`)."""
    token = await limits.take_upload(owner)
    try:
        upload = await read_file_form(request)
        try:
            size, lines = await check_lines(upload, settings)
            await files.make_room(
                owner, size, settings.max_file_storage_bytes, settings.max_files_per_key
            )
            stored = await files.put(
                owner, upload.filename, upload.purpose, upload.file, size, lines, upload.ttl_s
            )
        finally:
            await upload.close()
    finally:
        await limits.give_upload(owner, token)
    return FileObject.of(stored)


@router.get("/files", response_model=FileList)
async def list_files(
    owner: OwnerDep,
    files: FilesDep,
    purpose: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    after: Annotated[str | None, Query(max_length=128)] = None,
    order: Literal["asc", "desc"] = "desc",
) -> FileList:
    """Your uploaded files, newest first (`order=asc`: oldest first)."""
    page, has_more = await files.list(owner, limit=limit, after=after, order=order, purpose=purpose)
    data = [FileObject.of(stored) for stored in page]
    return FileList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=has_more,
    )


async def _result_file(file_id: str, owner: str, store: StoreDep) -> tuple[Any, str] | None:
    """A batch's output or error file: (its batch, which), or None for any other id."""
    found = result_file(file_id)
    if found is None:
        return None
    batch_id, kind = found
    if not is_batch_id(batch_id):
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    try:
        batch = await store.get(batch_id, owner)
    except NotFound:
        raise NotFound(f"No such File object: {file_id}", param="file_id") from None
    return batch, kind


@router.get("/files/{file_id}", response_model=FileObject)
async def get_file(
    file_id: FileId, owner: OwnerDep, files: FilesDep, store: StoreDep
) -> FileObject:
    """A file: uploaded, or a batch's output or error file."""
    made = await _result_file(file_id, owner, store)
    if made is None:
        return FileObject.of(await files.get(file_id, owner))
    batch, kind = made
    size = 0
    async for piece in result_lines(store, batch, kind):
        size += len(piece)
    finished = batch.finished_at or batch.created_at
    return FileObject(
        id=file_id, bytes=size, created_at=int(finished.timestamp()),
        filename=f"{batch.id}_{kind}.jsonl", purpose="batch_output",
    )  # fmt: skip


@router.get(
    "/files/{file_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {JSONL: {"schema": {"type": "string"}}}}},
)
async def get_file_content(
    file_id: FileId, owner: OwnerDep, files: FilesDep, store: StoreDep
) -> StreamingResponse:
    """A file's bytes, streamed: an upload as it came; a batch's output or error file made
    from its results, in input order."""
    made = await _result_file(file_id, owner, store)
    if made is None:
        await files.get(file_id, owner)
        return StreamingResponse(files.pieces(file_id), media_type=JSONL)
    batch, kind = made
    return StreamingResponse(result_lines(store, batch, kind), media_type=JSONL)


@router.delete("/files/{file_id}", response_model=FileDeleted)
async def delete_file(
    file_id: FileId, owner: OwnerDep, files: FilesDep, store: StoreDep
) -> FileDeleted:
    """Delete an uploaded file (batches made from it keep their items)."""
    made = await _result_file(file_id, owner, store)
    if made is not None:
        batch, _ = made
        raise InvalidRequest(
            f"{file_id} is made from batch {batch.id}'s results when read, never stored: "
            f"delete the batch (DELETE /v1/batches/{batch.id}) to delete them.",
            param="file_id",
        )
    await files.delete(file_id, owner)
    return FileDeleted(id=file_id)


@router.post("/batches", response_model=OpenAIBatch)
async def create_openai_batch(
    body: BatchCreateRequest,
    owner: OwnerDep,
    files: FilesDep,
    store: StoreDep,
    limits: LimitsDep,
    settings: SettingsDep,
) -> OpenAIBatch:
    """A batch of an uploaded file's request lines; it is queued at once, and is the same batch
    at `/v1/batches/{id}`."""
    batch = await create_batch(body, owner, files, store, limits, settings)
    return await batch_view(store, batch)


@router.get("/batches", response_model=OpenAIBatchList)
async def list_openai_batches(
    owner: OwnerDep,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=128)] = None,
) -> OpenAIBatchList:
    """Your batches, newest first (those made at `/v1` too)."""
    page = await store.list_batches(owner, limit=limit, after=after)
    data = [await batch_view(store, batch) for batch in page.data]
    return OpenAIBatchList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=page.has_more,
    )


def _batch_id(batch_id: str) -> str:
    if not is_batch_id(batch_id):
        raise NotFound(f"No such Batch object: {batch_id[:64]}", param="batch_id")
    return batch_id


@router.get("/batches/{batch_id}", response_model=OpenAIBatch)
async def get_openai_batch(
    batch_id: OpenAIBatchId, owner: OwnerDep, store: StoreDep
) -> OpenAIBatch:
    """A batch as OpenAI's Batch object."""
    return await batch_view(store, await store.get(_batch_id(batch_id), owner))


@router.post(
    "/batches/{batch_id}/cancel",
    response_model=OpenAIBatch,
    responses={409: {"model": OpenAIErrorBody, "description": "The batch has ended."}},
)
async def cancel_openai_batch(
    batch_id: OpenAIBatchId,
    owner: OwnerDep,
    store: StoreDep,
    redis: RedisDep,
    settings: SettingsDep,
) -> OpenAIBatch:
    """Cancel a batch: no new request starts; those running finish and are kept."""
    batch = await cancel(store, redis, _batch_id(batch_id), owner, settings.lease_s)
    return await batch_view(store, batch)
