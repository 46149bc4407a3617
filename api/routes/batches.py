"""Batches: submit, read, list, cancel, retry, delete, and read results (JSON pages or NDJSON)."""

from __future__ import annotations

import hashlib
from functools import partial
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sse_starlette import EventSourceResponse

from api.admission import admit
from api.auth import OwnerDep, require_owner
from api.bodies import BatchBody, SubmittedBody
from api.deps import BatchId, EventsDep, LimitsDep, RedisDep, SettingsDep, StoreDep, StreamsDep
from api.hub import valid_event_id
from api.ingest import STAGE_ITEMS, counted_prompts, create_staged, stage_plan, stage_upload
from api.lifecycle import RETRY_INCLUDE_PATTERN, cancel, delete, retry, retry_include
from api.openapi import BATCH_BODY, SSE_STREAM
from api.planning import plan_batch
from shared.batches import BatchPlan
from shared.errors import InvalidRequest
from shared.openai_format import as_line_error
from shared.results import ItemMatch
from shared.schemas import (
    CHAT,
    Batch,
    BatchCreate,
    BatchList,
    ErrorBody,
    ItemStatus,
    ResultsPage,
)
from shared.settings import Settings

NDJSON = "application/x-ndjson"

#: Longest an events stream waits for a client to take one message.
SSE_SEND_TIMEOUT_S = 60

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 404, 413, 422, 429, 503)
}

# Every route here needs the caller's key when keys are configured, whether it reads the
# owner or not.
router = APIRouter(
    prefix="/v1/batches",
    tags=["batches"],
    responses=_ERRORS,
    dependencies=[Depends(require_owner)],
)


_REPEATED = "A repeat of an earlier submission (same `Idempotency-Key` and body): its batch."


@router.post(
    "",
    status_code=202,
    response_model=Batch,
    responses={
        200: {"model": Batch, "description": _REPEATED},
        409: {"model": ErrorBody},
        415: {"model": ErrorBody, "description": "The body is neither JSON nor NDJSON."},
    },
    openapi_extra={"requestBody": BATCH_BODY},
)
async def create_batch(
    body: BatchBody,
    response: Response,
    owner: OwnerDep,
    store: StoreDep,
    settings: SettingsDep,
    limits: LimitsDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> Batch:
    """Submit prompts (strings, prompt objects or OpenAI messages, each with its own params), or
    a template with rows of `inputs`; the batch is stored and queued at once. A repeat with the
    same `Idempotency-Key` and body returns the first batch (200) instead of a new one."""
    # Decided before anything is staged: an upload by its lines (counted exactly against a
    # queued-prompt ceiling).
    if body.upload is not None:
        plan, request_hash, most = None, body.upload.digest, body.upload.lines
        if limits.max_queued:
            most = await counted_prompts(body.upload)
    else:
        plan, request_hash = await _plan(body, settings, hashed=idempotency_key is not None)
        most = plan.count
    gate = await admit(
        limits, store, settings, owner, most,
        idempotency_key=idempotency_key, request_hash=request_hash,
    )  # fmt: skip
    if isinstance(gate, Batch):  # a repeat of an earlier submission: its batch
        batch, created = gate, False
    else:
        async with gate.staging(large=body.upload is not None or most > STAGE_ITEMS):
            if body.upload is not None:
                plan = await stage_upload(body.upload, store, settings)
            assert plan is not None
            plan = await stage_plan(plan, store)
            batch, created = await create_staged(
                plan, store, partial(gate.store, store, plan, settings)
            )
    response.headers["Location"] = f"/v1/batches/{batch.id}"
    if not created:
        response.status_code = 200
    return batch


#: Items past which planning (checking each item, rendering a template) runs in a thread, off
#: the event loop: 50,000 template rows take about a second of CPU.
_PLAN_INLINE_ITEMS = 1000


async def _plan(body: SubmittedBody, settings: Settings, *, hashed: bool) -> tuple[BatchPlan, str]:
    assert body.request is not None
    try:
        if body.request.template is None and len(body.request.prompts or ()) <= _PLAN_INLINE_ITEMS:
            return _planned(body.request, settings, hashed)
        return await run_in_threadpool(_planned, body.request, settings, hashed)
    except InvalidRequest as exc:
        if body.lines is None:
            raise
        raise as_line_error(exc, body.lines) from None


def _planned(body: BatchCreate, settings: Settings, hashed: bool) -> tuple[BatchPlan, str]:
    """The plan, and (when `hashed`, for an `Idempotency-Key`) the request's hash: the same
    body, whatever the order of the keys inside its objects, hashes the same."""
    plan = plan_batch(body, settings)
    if not hashed:
        return plan, ""
    data = _as_before_embeddings(orjson.loads(body.model_dump_json()))
    canonical = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    return plan, hashlib.sha256(canonical).hexdigest()


#: Fields added with embeddings batches, left out of a request's hash when unset (and the
#: endpoint when it is the default), so that a body hashes as it did before they existed:
#: an `Idempotency-Key` sent again across the upgrade still finds its batch.
_NEWER_PARAMS = ("dimensions", "encoding_format")


def _as_before_embeddings(data: dict[str, Any]) -> dict[str, Any]:
    if data.get("endpoint") in (None, CHAT):
        data.pop("endpoint", None)
    for params in [data.get("params"), *(p.get("params") for p in _objects(data))]:
        if isinstance(params, dict):
            for name in _NEWER_PARAMS:
                if params.get(name, 0) is None:
                    del params[name]
    for entry in _objects(data):
        if entry.get("input", 0) is None:
            del entry["input"]
    return data


def _objects(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in data.get("prompts") or () if isinstance(p, dict)]


@router.get("", response_model=BatchList)
async def list_batches(
    store: StoreDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="A batch id: list those older than it.")] = None,
) -> BatchList:
    """Batches, newest first; pass `next_after` as `after` for the next page."""
    return await store.list_batches(owner, limit=limit, after=after)


@router.get("/{batch_id}", response_model=Batch)
async def get_batch(batch_id: BatchId, store: StoreDep, owner: OwnerDep) -> Batch:
    """The batch: status, counts and summed usage."""
    return await store.get(batch_id, owner)


@router.post(
    "/{batch_id}/cancel",
    status_code=202,
    response_model=Batch,
    responses={409: {"model": ErrorBody}},
)
async def cancel_batch(
    batch_id: BatchId, store: StoreDep, redis: RedisDep, owner: OwnerDep, settings: SettingsDep
) -> Batch:
    """Stop a batch: no new item starts; items running may finish and are kept; the rest
    become `cancelled`. A finished batch cannot be cancelled (409)."""
    return await cancel(store, redis, batch_id, owner, settings.lease_s)


@router.post(
    "/{batch_id}/retry",
    status_code=202,
    response_model=Batch,
    responses={409: {"model": ErrorBody}},
)
async def retry_batch(
    batch_id: BatchId,
    store: StoreDep,
    redis: RedisDep,
    owner: OwnerDep,
    include: Annotated[
        str | None,
        Query(
            description="Also retry these items, comma-separated: `cancelled`, `expired`.",
            json_schema_extra={"pattern": RETRY_INCLUDE_PATTERN},
            examples=["cancelled,expired"],
        ),
    ] = None,
) -> Batch:
    """Run a final batch's failed items again in place (and its cancelled or expired ones
    with `include`): they are pending again and the batch is running again, ending anew with
    its counts exact; succeeded items are never sent again. 409 if the batch is not final or
    has nothing to retry."""
    return await retry(store, redis, batch_id, retry_include(include), owner)


@router.delete("/{batch_id}", status_code=204)
async def delete_batch(
    batch_id: BatchId, store: StoreDep, redis: RedisDep, owner: OwnerDep
) -> None:
    """Delete a batch and its results (a running batch is cancelled first)."""
    await delete(store, redis, batch_id, owner)


@router.get("/{batch_id}/events", response_class=EventSourceResponse, responses={200: SSE_STREAM})
async def watch_batch(
    batch_id: BatchId,
    hub: EventsDep,
    streams: StreamsDep,
    owner: OwnerDep,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    """Live progress as server-sent events: `batch` (the batch object) first and on every
    change, `items` (items that became final, batched), ending with the final `batch`.
    Send `Last-Event-ID` to resume."""
    updates = await hub.stream(batch_id, valid_event_id(last_event_id), owner)
    held = streams.held(owner, await streams.open(owner), updates)
    # A client that stops reading is dropped after a while rather than held open for good.
    return EventSourceResponse(held, ping=15, send_timeout=SSE_SEND_TIMEOUT_S)


@router.get(
    "/{batch_id}/results",
    response_model=ResultsPage,
    responses={200: {"content": {NDJSON: {"schema": {"type": "string"}}}}},
)
async def get_results(
    batch_id: BatchId,
    store: StoreDep,
    owner: OwnerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[int | None, Query(ge=0, description="An item index.")] = None,
    status: Annotated[ItemStatus | None, Query(description="Only items of this status.")] = None,
    custom_id: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=256,
            description="Only items whose custom id holds this (any case).",
        ),
    ] = None,
    accept: Annotated[str | None, Header()] = None,
) -> ResultsPage | StreamingResponse:
    """Items in input order, readable while the batch runs. `Accept: application/x-ndjson`
    streams every item, one JSON object a line.

    With `status` or `custom_id`, a page holds the matching items among the next 5,000:
    it may hold fewer than `limit` (even none) while `has_more` is true; follow `next_after`."""
    if accept is not None and NDJSON in accept:
        pages = await store.result_pages(batch_id, owner)
        chunks = ("".join(item.model_dump_json() + "\n" for item in page) async for page in pages)
        return StreamingResponse(chunks, media_type=NDJSON)
    match = None if status is None and custom_id is None else ItemMatch(status, custom_id)
    return await store.results_page(batch_id, after=after, limit=limit, owner=owner, match=match)
