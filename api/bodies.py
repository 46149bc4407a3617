"""The body of a submission, read and validated off the event loop: JSON as `BatchCreate`, or an
OpenAI Batch input file as NDJSON, which becomes the same `BatchCreate` (a large one is spooled
and validated later, a page at a time: `api/ingest.py`).

A body is counted before anything in it is validated (a batch over `PROMPTBATCH_MAX_PROMPTS`
is refused without looking at one prompt), and a large one is parsed and validated in a thread:
no submission holds the loop that answers every other request.
"""

from __future__ import annotations

import email.message
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from api.deps import SettingsDep
from api.ingest import INLINE_BYTES, Upload, read_body
from shared.errors import InvalidRequest
from shared.openai_format import numbered_batch
from shared.schemas import BatchCreate
from shared.settings import Settings

NDJSON_TYPES = frozenset({"application/x-ndjson", "application/jsonl"})

Model = TypeVar("Model", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class SubmittedBody:
    """A submission's validated body; `lines` is the line number (from 1) of each item when it
    came as OpenAI Batch NDJSON, so that later errors can name the line. A large NDJSON body
    is an `upload` instead, validated as its items are staged."""

    request: BatchCreate | None
    lines: list[int] | None = None
    upload: Upload | None = None


async def read_batch_body(request: Request, settings: SettingsDep) -> AsyncIterator[SubmittedBody]:
    """The submission's body, counted, parsed and validated (in a thread when it is large)."""
    ndjson = _media_type(request) in NDJSON_TYPES
    raw = await read_body(request) if ndjson else await request.body()
    if isinstance(raw, Upload):
        try:
            yield SubmittedBody(None, upload=raw)
        finally:
            await raw.close()
        return
    read = _from_ndjson if ndjson else _from_json
    if len(raw) <= INLINE_BYTES:
        yield read(raw, settings)
    else:
        yield await run_in_threadpool(read, raw, settings)


BatchBody = Annotated[SubmittedBody, Depends(read_batch_body)]


def json_value(raw: bytes) -> Any:
    """A JSON body decoded; an empty or malformed one is refused as FastAPI refuses a body."""
    if not raw.strip():
        raise RequestValidationError([_error("missing", (), "Field required")])
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        error = _error("json_invalid", (exc.pos,), "JSON decode error")
        raise RequestValidationError([error]) from None


def validated(model: type[Model], data: Any) -> Model:
    """`data` as `model`; its errors reported as FastAPI reports a body's."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


def _from_json(raw: bytes, settings: Settings) -> SubmittedBody:
    data = json_value(raw)
    if isinstance(data, dict):
        for field in ("prompts", "inputs"):
            entries = data.get(field)
            if isinstance(entries, list) and len(entries) > settings.max_prompts:
                raise _too_many(len(entries), settings, field)
    return SubmittedBody(validated(BatchCreate, data))


def _from_ndjson(raw: bytes, settings: Settings) -> SubmittedBody:
    lines = raw.count(b"\n") + 1
    if lines > settings.max_prompts:  # blank lines are rare: count them only when it matters
        lines = sum(1 for line in raw.split(b"\n") if line.strip())
        if lines > settings.max_prompts:
            raise _too_many(lines, settings, f"line[{settings.max_prompts + 1}]")
    try:
        # utf-8-sig: a byte-order mark, as some editors write, is not part of the first line.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidRequest("The body is not UTF-8 text.") from None
    # Lines end at "\n" only: str.splitlines() also splits at U+2028, U+2029 and U+0085,
    # which JSON allows raw inside strings (json.dumps(..., ensure_ascii=False) writes them).
    request, numbers = numbered_batch(text.split("\n"))
    return SubmittedBody(request, numbers)


def _too_many(count: int, settings: Settings, param: str) -> InvalidRequest:
    return InvalidRequest(
        f"A batch holds at most {settings.max_prompts} prompts; got {count}.", param=param
    )


def _error(type_: str, loc: tuple[Any, ...], msg: str) -> dict[str, Any]:
    """A validation error as FastAPI reports one about the body."""
    return {"type": type_, "loc": ("body", *loc), "msg": msg, "input": None}


def _media_type(request: Request) -> str:
    message = email.message.Message()
    message["content-type"] = request.headers.get("content-type", "")
    return message.get_content_type()
