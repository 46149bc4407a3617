"""What the client raises: every message is one line a person can act on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from pydantic import ValidationError

from shared.schemas import ErrorBody


class PromptbatchError(Exception):
    """Anything the client could not do."""


class APIConnectionError(PromptbatchError):
    """The API could not be reached, or the connection broke."""


class APIError(PromptbatchError):
    """The API answered with an error: `{"error": {"type", "message", "param"}}`."""

    def __init__(self, status_code: int, type_: str, message: str, param: str | None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.type = type_
        self.message = message
        self.param = param

    def __str__(self) -> str:
        where = f" (param: {self.param})" if self.param else ""
        return f"{self.status_code} {self.type}: {self.message}{where}"


def check(response: httpx.Response) -> httpx.Response:
    """The response if it succeeded, else its APIError. The body must have been read."""
    if not response.is_error:
        return response
    try:
        error = ErrorBody.model_validate_json(response.content).error
    except ValidationError:
        raise APIError(
            response.status_code, "http_error", f"HTTP {response.status_code}", None
        ) from None
    raise APIError(response.status_code, error.type, error.message, error.param)


@contextmanager
def reaching(url: httpx.URL) -> Iterator[None]:
    """Turn transport failures (refused, timed out, dropped) into one APIConnectionError."""
    try:
        yield
    except httpx.TransportError as exc:
        reason = str(exc) or type(exc).__name__
        raise APIConnectionError(f"cannot reach the promptbatch API at {url}: {reason}") from exc
