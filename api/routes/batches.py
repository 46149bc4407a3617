"""Batches: submit, read, list, and read results (JSON pages or streamed NDJSON)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import StreamingResponse

from api.bodies import BatchBodyRoute
from api.deps import SettingsDep, StoreDep
from shared.queue import submit
from shared.schemas import Batch, BatchCreate, BatchList, ErrorBody, ResultsPage, plan_batch

NDJSON = "application/x-ndjson"

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (404, 422, 503)}

router = APIRouter(
    prefix="/v1/batches", tags=["batches"], responses=_ERRORS, route_class=BatchBodyRoute
)


@router.post("", status_code=202, response_model=Batch)
async def create_batch(
    body: BatchCreate, response: Response, store: StoreDep, settings: SettingsDep
) -> Batch:
    """Submit a list of prompts; the batch is stored and queued at once."""
    batch = await submit(store, plan_batch(body, settings), settings)
    response.headers["Location"] = f"/v1/batches/{batch.id}"
    return batch


@router.get("", response_model=BatchList)
async def list_batches(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="A batch id: list those older than it.")] = None,
) -> BatchList:
    """Batches, newest first; pass `next_after` as `after` for the next page."""
    return await store.list_batches(limit=limit, after=after)


@router.get("/{batch_id}", response_model=Batch)
async def get_batch(batch_id: str, store: StoreDep) -> Batch:
    """The batch: status, counts and summed usage."""
    return await store.get(batch_id)


@router.get(
    "/{batch_id}/results",
    response_model=ResultsPage,
    responses={200: {"content": {NDJSON: {"schema": {"type": "string"}}}}},
)
async def get_results(
    batch_id: str,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[int | None, Query(ge=0, description="An item index.")] = None,
    accept: Annotated[str | None, Header()] = None,
) -> ResultsPage | StreamingResponse:
    """Items in input order, readable while the batch runs. `Accept: application/x-ndjson`
    streams every item, one JSON object a line."""
    if accept is not None and NDJSON in accept:
        pages = await store.result_pages(batch_id)
        chunks = ("".join(item.model_dump_json() + "\n" for item in page) async for page in pages)
        return StreamingResponse(chunks, media_type=NDJSON)
    return await store.results_page(batch_id, after=after, limit=limit)
