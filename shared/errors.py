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

    @property
    def headers(self) -> dict[str, str] | None:
        """Response headers the status calls for (`WWW-Authenticate`, `Retry-After`)."""
        return None


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


class Unauthorized(AppError):
    status_code = 401
    type = "authentication_error"

    @property
    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": "Bearer"}


class PayloadTooLarge(AppError):
    status_code = 413
    type = "request_too_large"


class UnsupportedMediaType(AppError):
    status_code = 415
    type = "unsupported_media_type"


class TooManyRequests(AppError):
    status_code = 429
    type = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = max(1, retry_after_s)

    @property
    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after_s)}
