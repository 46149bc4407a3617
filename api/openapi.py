"""The OpenAPI document, as true as a fuzzer checks it: the submission body in both its forms,
the events stream event by event, and bearer auth only when the API asks for a key."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from shared.openai_format import RequestLine
from shared.schemas import BatchCreate
from shared.settings import Settings, get_settings

_REF = "#/components/schemas/{model}"

#: `POST /v1/batches`: read by `api/bodies.py`, not by FastAPI, so described here.
BATCH_BODY: dict[str, Any] = {
    "required": True,
    "description": (
        "JSON as `BatchCreate`, or an OpenAI Batch input file as `application/x-ndjson`: one "
        "request line a line (`custom_id`, `method`, `url` `/v1/chat/completions`, `body` "
        "with `model`, `messages` and chat-completion params; described here as the array of "
        "its lines). Every line keeps its own messages and params; one model per batch. "
        "Errors name the line counted from 1, as in `line[3].body.model`."
    ),
    "content": {
        "application/json": {"schema": {"$ref": _REF.format(model="BatchCreate")}},
        "application/x-ndjson": {
            "schema": {
                "type": "array",
                "minItems": 1,
                "items": {"$ref": _REF.format(model="RequestLine")},
            },
        },
    },
}

#: `GET /v1/batches/{id}/events`: each event as a client parses it (`data` is JSON text).
SSE_STREAM: dict[str, Any] = {
    "description": "Server-sent events: `batch` (the batch object, first and on every change), "
    '`items` (`{"data": [item results]}`, items that became final), ending with the final '
    "`batch`. Each event's `id` is the `Last-Event-ID` to resume from.",
    "content": {
        "text/event-stream": {
            "schema": {
                "type": "object",
                "required": ["event", "data", "id"],
                "properties": {
                    "event": {"type": "string", "enum": ["batch", "items"]},
                    "data": {"type": "string", "contentMediaType": "application/json"},
                    "id": {"type": "string", "pattern": r"^\d+-\d+$"},
                },
            },
        },
    },
}


def install_openapi(app: FastAPI, settings: Settings | None) -> None:
    """Serve the document below as `/openapi.json`, built once on its first request."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document(app, settings or get_settings())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document(app: FastAPI, settings: Settings) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title, version=app.version, summary=app.summary, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    _, found = models_json_schema(
        [(BatchCreate, "validation"), (RequestLine, "validation")], ref_template=_REF
    )
    for name, model_schema in found.get("$defs", {}).items():
        if components.setdefault(name, model_schema) != model_schema:
            raise RuntimeError(f"two schemas named {name} in the OpenAPI document")
    if not settings.api_key_list:  # no key asked for: the document must not say one is
        schema["components"].pop("securitySchemes", None)
        for path in schema["paths"].values():
            for operation in path.values():
                operation.pop("security", None)
                operation.get("responses", {}).pop("401", None)
    return schema
