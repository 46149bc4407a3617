"""Webhook endpoints: add one (its signing secret shown once), list, read, delete. An endpoint
hears of its own key's batches only; deliveries are the workers' (`worker/webhooks.py`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response

from api.auth import OwnerDep, require_owner
from api.bodies import accepted_media_type, json_value, validated
from api.deps import SettingsDep, WebhooksDep
from shared.errors import PayloadTooLarge
from shared.schemas import ErrorBody
from shared.webhooks import (
    EXAMPLE_ENDPOINT_ID,
    WebhookCreate,
    WebhookEndpoint,
    WebhookEndpointCreated,
    WebhookList,
    checked_url,
)

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (401, 503)}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody}}

router = APIRouter(
    prefix="/v1/webhooks",
    tags=["webhooks"],
    responses=_ERRORS,
    dependencies=[Depends(require_owner)],
)

WebhookId = Annotated[str, Path(examples=[EXAMPLE_ENDPOINT_ID])]

#: Largest body an endpoint's creation may have: a URL and a few event names take far less.
MAX_BODY_BYTES = 64 * 1024


async def read_webhook_body(request: Request) -> WebhookCreate:
    """The body as JSON, whatever its bytes (malformed JSON is a 422, as for batches), read no
    further than `MAX_BODY_BYTES` (413 beyond)."""
    accepted_media_type(request)
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"A webhook endpoint's body is at most {MAX_BODY_BYTES} bytes.")
    return validated(WebhookCreate, json_value(bytes(raw)))


#: The body `read_webhook_body` reads, for the OpenAPI document.
_BODY = {
    "required": True,
    "content": {"application/json": {"schema": WebhookCreate.model_json_schema()}},
}


@router.post(
    "",
    status_code=201,
    response_model=WebhookEndpointCreated,
    responses={
        409: {"model": ErrorBody, "description": "The key has the most endpoints it may have."},
        413: {"model": ErrorBody},
        415: {"model": ErrorBody, "description": "The body is not JSON."},
        422: {"model": ErrorBody},
    },
    openapi_extra={"requestBody": _BODY},
)
async def create_webhook(
    body: Annotated[WebhookCreate, Depends(read_webhook_body)],
    response: Response,
    owner: OwnerDep,
    webhooks: WebhooksDep,
    settings: SettingsDep,
) -> WebhookEndpointCreated:
    """Add an endpoint for this key's batches: it is sent the events it asks for (all four
    unless `events` says), signed with the `secret` shown in this answer only. A URL that is
    not http(s), or whose host resolves to a loopback, private or link-local address, is a
    422. A key has at most 16 endpoints (409 beyond)."""
    await checked_url(body.url, allow_private=settings.webhook_allow_private)
    endpoint = await webhooks.create(owner, body.url, body.events)
    response.headers["Location"] = f"/v1/webhooks/{endpoint.id}"
    return WebhookEndpointCreated(**endpoint.public().model_dump(), secret=endpoint.secret)


@router.get("", response_model=WebhookList)
async def list_webhooks(owner: OwnerDep, webhooks: WebhooksDep) -> WebhookList:
    """This key's endpoints, oldest first (without their secrets)."""
    return await webhooks.listing(owner)


@router.get("/{webhook_id}", response_model=WebhookEndpoint, responses=_NOT_FOUND)
async def get_webhook(
    webhook_id: WebhookId, owner: OwnerDep, webhooks: WebhooksDep
) -> WebhookEndpoint:
    """One of this key's endpoints (without its secret)."""
    return await webhooks.read(owner, webhook_id)


@router.delete("/{webhook_id}", status_code=204, responses=_NOT_FOUND)
async def delete_webhook(webhook_id: WebhookId, owner: OwnerDep, webhooks: WebhooksDep) -> None:
    """Delete an endpoint: it is sent nothing more, not even attempts already scheduled."""
    await webhooks.delete(owner, webhook_id)
