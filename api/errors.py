"""One error shape for every failure: `{"error": {"type", "message", "param"}}`; under
`/openai/v1` OpenAI's (`code` too) with OpenAI's status codes (400 for a request it cannot
take, where `/v1` answers 422), so that the OpenAI SDK raises its own exceptions."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match

from shared.errors import AppError
from shared.plain_errors import is_kind_error, sentence
from shared.schemas import ErrorBody, ErrorDetail

log = logging.getLogger("promptbatch.api")

_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


#: Where OpenAI's Files and Batch API is served (`api/routes/openai.py`).
OPENAI_PREFIX = "/openai/v1"


def error_response(
    status: int,
    type_: str,
    message: str,
    param: str | None = None,
    headers: Any = None,
    request: Request | None = None,
) -> JSONResponse:
    if request is not None and request.scope["path"].startswith(OPENAI_PREFIX + "/"):
        status = 400 if status == 422 else status
        error = {"message": message, "type": type_, "param": param, "code": None}
        return JSONResponse({"error": error}, status_code=status, headers=headers)
    body = ErrorBody(error=ErrorDetail(type=type_, message=message, param=param))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def app_error_response(exc: AppError, request: Request | None = None) -> JSONResponse:
    return error_response(exc.status_code, exc.type, exc.message, exc.param, exc.headers, request)


def _param(loc: Sequence[int | str]) -> str | None:
    """`("body", "prompts", 3, "custom_id")` -> `prompts[3].custom_id`."""
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return app_error_response(exc, request)


#: How pydantic names the branches of a union in an error's loc: a type (`str`,
#: `constrained-str`, `list[...]`, `literal[...]`) or a model's class name (`PromptItem`).
_BRANCH = re.compile(r"^(str|int|float|bool|none|[a-z]+-[a-z]+|[a-z-]+\[.*\]|[A-Z][A-Za-z]*)$")


def _first_error(errors: Sequence[Any]) -> dict[str, Any]:
    """The error to report, its loc without union branch names. A value that fails every
    branch of a union (a prompt that is neither a string nor a valid object, say) is reported
    with the branch it got furthest into: an object's error names its field
    (`prompts[1].extra`), anything else gets the first branch's (`prompts[1]`)."""
    if not errors:
        return {"loc": (), "msg": "Invalid request.", "type": ""}
    locs = [tuple(error.get("loc", ())) for error in errors]
    first = locs[0]
    branch = next((i for i in range(len(first)) if _is_branch(first, i, locs)), None)
    if branch is None:
        return dict(errors[0])
    rivals = [n for n, loc in enumerate(locs) if loc[:branch] == first[:branch]]
    chosen = max(rivals, key=lambda n: (len(_without_branches(locs[n], locs)), -n))
    return {**errors[chosen], "loc": _without_branches(locs[chosen], locs)}


def _is_branch(loc: tuple[Any, ...], i: int, locs: Sequence[tuple[Any, ...]]) -> bool:
    """Whether `loc[i]` names a union branch: it looks like one, and another error took
    another branch at the same place (a dict key such as `metadata.str` has no rival)."""
    part = loc[i]
    if not isinstance(part, str) or not _BRANCH.match(part):
        return False
    return any(len(o) > i and o[:i] == loc[:i] and o[i] != part for o in locs)


def _without_branches(loc: tuple[Any, ...], locs: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    return tuple(part for i, part in enumerate(loc) if not _is_branch(loc, i, locs))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = _first_error(errors)
    param = _param(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        message, param = "The body is not valid JSON.", None
    elif first.get("type") == "extra_forbidden":
        message = f"Unknown field {param!r}."
    else:
        message = sentence(first, param, _rivals(errors, tuple(first.get("loc", ()))))
    return error_response(422, "invalid_request_error", message, param, request=request)


def _rivals(errors: Sequence[Any], loc: tuple[Any, ...]) -> list[dict[str, Any]]:
    """The errors of a union's other branches at `loc` (a loc without branch names) that say
    only what type the value should have been."""
    locs = [tuple(error.get("loc", ())) for error in errors]
    return [
        error
        for error, at in zip(errors, locs, strict=True)
        if is_kind_error(error) and _without_branches(at, locs) == loc
    ]


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    type_ = _HTTP_TYPES.get(exc.status_code, "http_error")
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": ", ".join(_allowed(request))}
    return error_response(exc.status_code, type_, str(exc.detail), headers=headers, request=request)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed(request: Request) -> list[str]:
    """Every method some route takes at this path (Starlette names only the first route's)."""
    routes = [r for r in request.app.router.routes if isinstance(r, BaseRoute)]
    return [
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] == Match.FULL for r in routes)
    ]


async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("Redis unreachable: %s", type(exc).__name__)
    return error_response(
        503, "service_unavailable", "Redis is unreachable; try again shortly.",
        headers={"Retry-After": "5"}, request=request,
    )  # fmt: skip


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RedisConnectionError, _redis_down)
    app.add_exception_handler(RedisTimeoutError, _redis_down)
