"""The body of a submission, read and validated off the event loop: JSON as `BatchCreate`, or an
OpenAI Batch input file as NDJSON, which becomes the same `BatchCreate` (a large one is spooled
and validated later, a page at a time: `api/ingest.py`).

A body is counted before anything in it is validated (a batch over `PROMPTBATCH_MAX_PROMPTS`
is refused without looking at one prompt), and a large one is parsed and validated in a thread:
no submission holds the loop that answers every other request.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import gc
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import Annotated, Any, TypeVar

import ijson
import orjson
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, TypeAdapter, ValidationError

from api.deps import SettingsDep
from api.ingest import INLINE_BYTES, Upload, read_body, read_whole, release
from shared.errors import InvalidRequest, UnsupportedMediaType
from shared.openai_format import numbered_batch
from shared.schemas import BatchCreate, PromptEntry, RowValue
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
    ndjson = accepted_media_type(request, ndjson=True) in NDJSON_TYPES
    raw = await read_body(request) if ndjson else await read_whole(request)
    if isinstance(raw, Upload):  # validated and staged a page at a time
        try:
            with gc_paused():  # each page's objects would still set off full collections
                yield SubmittedBody(None, upload=raw)
        finally:
            await raw.close()
        return
    read = _from_ndjson if ndjson else _from_json
    if len(raw) <= INLINE_BYTES:
        yield read(raw, settings)
        return
    with gc_paused():
        body = await run_in_threadpool(read, raw, settings)
        try:
            yield body
        finally:  # freeing a large body's million objects takes a while too: not on the loop
            await asyncio.to_thread(_release, body)


def _release(body: SubmittedBody) -> None:
    if body.request is not None:
        for entries in (body.request.prompts, body.request.inputs):
            if entries is not None:
                release(entries)


_gc_pauses = 0


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused while a large submission is handled (until its
    answer is sent). Parsing one makes millions of objects, and each full collection meanwhile
    walks them all at once with every thread stopped: 0.2 s of the event loop at a time for
    a 60 MB body, and 1.1 s of its 1.6 s of parsing. What a body makes holds no reference
    cycles (JSON values, pydantic models): it is freed as it always is, by reference counts."""
    global _gc_pauses
    if _gc_pauses == 0 and not gc.isenabled():  # turned off by someone else: theirs to keep
        yield
        return
    _gc_pauses += 1
    gc.disable()
    try:
        yield
    finally:
        _gc_pauses -= 1
        if _gc_pauses == 0:
            gc.enable()


BatchBody = Annotated[SubmittedBody, Depends(read_batch_body)]


#: A JSON body larger than this is parsed a piece of `PARSE_PIECE` bytes at a time (in a
#: thread): orjson parses in one call that holds the GIL throughout, 0.3 s for 60 MB, and the
#: event loop waits that long for it.
PIECEWISE_BYTES = 1024 * 1024
PARSE_PIECE = 64 * 1024
#: Deepest nesting a body may have, as orjson's (past it, ijson's own paths grow with the
#: square of the depth: 2 GB for 30,000 levels).
MAX_DEPTH = 1024
_NESTING = {"start_map": 1, "start_array": 1, "end_map": -1, "end_array": -1}
#: A `\uD800`-`\uDFFF` escape: half of a surrogate pair (ijson makes a lone one "?").
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def json_value(raw: bytes) -> Any:
    """A JSON body decoded; an empty or malformed one is refused as FastAPI refuses a body."""
    if not raw.strip():
        raise RequestValidationError([_error("missing", (), "Field required")])
    if len(raw) > PIECEWISE_BYTES:
        return _json_in_pieces(raw)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        error = _error("json_invalid", (exc.pos,), "JSON decode error")
        raise RequestValidationError([error]) from None


def _json_in_pieces(raw: bytes) -> Any:
    """A large JSON body decoded by ijson's push parser, fed a piece at a time: between two
    pieces the GIL is free for the event loop. Each piece is read for its nesting first (no
    deeper than `MAX_DEPTH`) and its escapes (no lone surrogate), so the body is refused as
    orjson refuses it. A malformed body is refused naming the offset of the piece the parser
    stopped in (or the body's end, when it stopped short)."""
    found = ijson.sendable_list()
    parser = ijson.items_coro(found, "", use_float=True)
    events = ijson.sendable_list()
    shape = ijson.basic_parse_coro(events, use_float=True)
    view = memoryview(raw)
    depth, at = 0, 0
    try:
        for at in range(0, len(raw), PARSE_PIECE):
            piece = view[at : at + PARSE_PIECE]
            shape.send(piece)
            depths = list(accumulate((_NESTING.get(e, 0) for e, _ in events), initial=depth))
            events.clear()
            if max(depths) > MAX_DEPTH:
                raise ValueError("nested too deep")
            depth = depths[-1]
            if _lone_surrogate(raw, at):
                raise ValueError("a lone surrogate")
            parser.send(piece)
        at = len(raw)
        shape.close()
        parser.close()
    except (ijson.JSONError, ValueError):  # UnicodeDecodeError: bytes that are not UTF-8
        raise RequestValidationError([_error("json_invalid", (at,), "JSON decode error")]) from None
    return found[0]


def _lone_surrogate(raw: bytes, at: int) -> bool:
    """Whether the piece of `raw` from `at` has a `\\u` escape of half a surrogate pair that
    is not paired (valid JSON text, but no character: orjson refuses it)."""
    for match in _SURROGATE.finditer(raw, at, at + PARSE_PIECE + 5):
        start = match.start()
        if start >= at + PARSE_PIECE:
            break  # the next piece's
        if not _escaped(raw, start):
            continue  # `\\\\uD800`: an escaped backslash, then text
        high = match[0][3:4].lower() in b"89ab"
        partner = start + 6 if high else start - 6
        pair = raw[partner : partner + 6] if partner >= 0 else b""
        wanted = b"cdef" if high else b"89ab"
        if not (
            len(pair) == 6 and pair[:3].lower() == b"\\ud" and pair[3:4].lower() in wanted
            and _escaped(raw, partner)
        ):  # fmt: skip
            return True
    return False


def _escaped(raw: bytes, start: int) -> bool:
    """Whether the backslash at `start` begins an escape (an even run of backslashes ends
    just before it)."""
    run = 0
    while start - run - 1 >= 0 and raw[start - run - 1] == 0x5C:
        run += 1
    return run % 2 == 0


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
    lists = {
        field: data[field] for field in _LISTS
        if isinstance(data, dict) and isinstance(data.get(field), list)
    }  # fmt: skip
    try:
        for field, entries in lists.items():
            if len(entries) > settings.max_prompts:
                raise _too_many(len(entries), settings, field)
        return SubmittedBody(_validated_create(data))
    finally:  # the parsed JSON's own million objects: freed a slice at a time too
        for entries in lists.values():
            release(entries)


#: Items of `prompts` (or rows of `inputs`) validated per pydantic call: one call holds the
#: GIL throughout, and 50,000 items in one would keep the event loop waiting for most of a
#: second; a thousand chat items take 5-7 ms, 250 take 1.5 ms.
VALIDATE_SLICE = 250

_LISTS: dict[str, TypeAdapter[list[Any]]] = {
    "prompts": TypeAdapter(list[PromptEntry]),
    "inputs": TypeAdapter(list[dict[str, RowValue]]),
}


def _validated_create(data: Any) -> BatchCreate:
    """`data` as `BatchCreate`, a long `prompts` or `inputs` list a slice at a time."""
    field = next(
        (name for name in _LISTS if isinstance(data, dict)
         and isinstance(data.get(name), list) and len(data[name]) > VALIDATE_SLICE),
        None,
    )  # fmt: skip
    if field is None:
        return validated(BatchCreate, data)
    entries = data[field]
    head = validated(BatchCreate, {**data, field: entries[:VALIDATE_SLICE]})
    values = list(getattr(head, field))
    for start in range(VALIDATE_SLICE, len(entries), VALIDATE_SLICE):
        try:
            values += _LISTS[field].validate_python(entries[start : start + VALIDATE_SLICE])
        except ValidationError as exc:
            raise RequestValidationError([
                {**e, "loc": ("body", field, int(e["loc"][0]) + start, *e["loc"][1:])}
                for e in exc.errors(include_url=False)
            ]) from None  # fmt: skip
    return head.model_copy(update={field: values})


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


def accepted_media_type(request: Request, *, ndjson: bool = False) -> str:
    """The body's media type: JSON (`application/json`, or any `+json` type; a body without
    a `Content-Type` is read as JSON), or NDJSON when `ndjson`; an UnsupportedMediaType (415)
    naming the accepted types otherwise, before a byte of the body is read."""
    given = request.headers.get("content-type", "").strip()
    if not given:
        return "application/json"
    message = email.message.Message()
    message["content-type"] = given
    media_type = message.get_content_type()
    if media_type == "application/json" or media_type.endswith("+json"):
        return media_type
    if ndjson and media_type in NDJSON_TYPES:
        return media_type
    accepted = "application/json"
    if ndjson:
        accepted += " or application/x-ndjson (an OpenAI Batch file)"
    raise UnsupportedMediaType(
        f"A body of type {media_type} is not accepted here: send {accepted}."
    )
