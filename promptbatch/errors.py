"""What the client raises: every message is one line a person can act on."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from pydantic import ValidationError

from shared.schemas import ErrorBody


class PromptbatchError(Exception):
    """Anything the client could not do."""


class APIConnectionError(PromptbatchError):
    """The API could not be reached, or the connection broke."""


class APIError(PromptbatchError):
    """The API answered with an error: `{"error": {"type", "message", "param"}}`."""

    def __init__(
        self,
        status_code: int,
        type_: str,
        message: str,
        param: str | None,
        *,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.type = type_
        self.message = message
        self.param = param
        #: The answer's `Retry-After`, in seconds, when it had one (429, 503).
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        where = f" (param: {self.param})" if self.param else ""
        return f"{self.status_code} {self.type}: {self.message}{where}"


def check(response: httpx.Response) -> httpx.Response:
    """The response if it succeeded, else its APIError. The body must have been read."""
    if not response.is_error:
        return response
    retry_after_s = retry_after(response.headers.get("Retry-After"))
    try:
        error = ErrorBody.model_validate_json(response.content).error
    except ValidationError:
        raise APIError(
            response.status_code,
            "http_error",
            f"HTTP {response.status_code}",
            None,
            retry_after_s=retry_after_s,
        ) from None
    raise APIError(
        response.status_code, error.type, error.message, error.param, retry_after_s=retry_after_s
    )


def retry_after(value: str | None) -> float | None:
    """A `Retry-After` header in seconds (delay-seconds or an HTTP date); None when absent or
    unreadable."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


@contextmanager
def reaching(url: httpx.URL) -> Iterator[None]:
    """Turn transport failures (refused, timed out, dropped) into one APIConnectionError."""
    try:
        yield
    except httpx.TransportError as exc:
        reason = str(exc) or type(exc).__name__
        raise APIConnectionError(f"cannot reach the promptbatch API at {url}: {reason}") from exc
