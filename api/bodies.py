"""Request bodies beyond JSON: an OpenAI Batch input file posted as NDJSON becomes the same
`BatchCreate` JSON body, so the route, its validation and its OpenAPI schema stay as they are."""

from __future__ import annotations

import email.message
from collections.abc import Callable, Coroutine
from typing import Any, get_type_hints

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Message

from shared.errors import InvalidRequest
from shared.openai_format import as_line_error, numbered_batch
from shared.schemas import BatchCreate

NDJSON_TYPES = frozenset({"application/x-ndjson", "application/jsonl"})

_NDJSON_DOC = {
    "schema": {"type": "string"},
    "example": (
        '{"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": '
        '"gpt-4o-mini", "messages": [{"role": "user", "content": "Where is Seoul?"}]}}\n'
    ),
}
_NDJSON_DESCRIPTION = (
    "JSON as `BatchCreate`, or an OpenAI Batch input file as `application/x-ndjson`: one "
    "request line a line (`custom_id`, `method`, `url` `/v1/chat/completions`, `body` with "
    "`model`, `messages` and chat-completion params). Every line keeps its own messages and "
    "params; one model per batch. Errors name the line counted from 1, as in "
    "`line[3].body.model`."
)


class BatchBodyRoute(APIRoute):
    """A route that takes a `BatchCreate` body also takes it as OpenAI Batch NDJSON."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if _takes_batch(endpoint):
            extra = kwargs.get("openapi_extra") or {}
            body = extra.setdefault("requestBody", {})
            body.setdefault("description", _NDJSON_DESCRIPTION)
            body.setdefault("content", {})["application/x-ndjson"] = _NDJSON_DOC
            kwargs["openapi_extra"] = extra
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if not _takes_batch(self.endpoint):
            return handler

        async def handle(request: Request) -> Response:
            if _media_type(request) not in NDJSON_TYPES:
                return await handler(request)
            request, numbers = await _as_json(request)
            try:
                return await handler(request)
            except InvalidRequest as exc:  # found planning the batch: name the line
                raise as_line_error(exc, numbers) from None

        return handle


def _takes_batch(endpoint: Callable[..., Any]) -> bool:
    return BatchCreate in get_type_hints(endpoint).values()


def _media_type(request: Request) -> str:
    message = email.message.Message()
    message["content-type"] = request.headers.get("content-type", "")
    return message.get_content_type()


async def _as_json(request: Request) -> tuple[Request, list[int]]:
    """The same request with its NDJSON body converted to a `BatchCreate` JSON body, and the
    line number of each item."""
    try:
        # utf-8-sig: a byte-order mark, as some editors write, is not part of the first line.
        text = (await request.body()).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidRequest("The body is not UTF-8 text.") from None
    # Lines end at "\n" only: str.splitlines() also splits at U+2028, U+2029 and U+0085,
    # which JSON allows raw inside strings (json.dumps(..., ensure_ascii=False) writes them).
    batch, numbers = numbered_batch(text.split("\n"))
    payload = batch.model_dump_json(exclude_none=True)
    headers = [
        (k, v) for k, v in request.scope["headers"] if k not in (b"content-type", b"content-length")
    ]
    headers += [(b"content-type", b"application/json")]
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return await request.receive()
        sent = True
        return {"type": "http.request", "body": payload.encode(), "more_body": False}

    return Request({**request.scope, "headers": headers}, receive), numbers
