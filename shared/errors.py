"""One error family: each carries the HTTP status and the `type` of the one error body."""

from __future__ import annotations


class AppError(Exception):
    """An error a client can act on. Rendered as `{"error": {"type", "message", "param"}}`."""

    status_code = 500
    type = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(AppError):
    status_code = 422
    type = "invalid_request_error"


class NotFound(AppError):
    status_code = 404
    type = "not_found"


class ServiceUnavailable(AppError):
    status_code = 503
    type = "service_unavailable"


class Conflict(AppError):
    status_code = 409
    type = "conflict"
