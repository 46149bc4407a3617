"""Pure ASGI middleware: a request body limit, and unexpected errors kept out of the logs."""

from __future__ import annotations

import logging
import traceback

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import app_error_response, error_response
from shared.errors import PayloadTooLarge
from shared.settings import Settings

log = logging.getLogger("promptbatch.api")


#: The route that takes file uploads (`PROMPTBATCH_MAX_FILE_BYTES`), and the room a multipart
#: form may take around its file.
FILES_PATH = "/openai/v1/files"
FORM_BYTES = 64 * 1024


class BodyLimit:
    """Refuse a request body over `PROMPTBATCH_MAX_BODY_BYTES` with 413, for any route but a file
    upload (`PROMPTBATCH_MAX_FILE_BYTES`).

    A declared Content-Length over the limit is refused before anything is read; otherwise
    bytes are counted as they arrive (chunked bodies too), and reading stops at the first
    chunk past the limit. Whatever the app then answers is replaced by the 413.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings: Settings = scope["state"]["settings"]
        limit = settings.max_body_bytes
        if scope["path"] == FILES_PATH and scope["method"] == "POST":
            # An upload of a file up to its own limit, with room for the form around it.
            limit = settings.max_file_bytes + FORM_BYTES

        async def refuse() -> None:  # built only when needed: a response costs ~0.1 ms
            refusal = PayloadTooLarge(
                f"The request body is larger than the limit of {limit} bytes."
            )
            await app_error_response(refusal, Request(scope))(scope, receive, send)

        if _declared_length(scope) > limit:
            await refuse()
            return

        read = 0
        over = started = False

        async def counted() -> Message:
            nonlocal read, over
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > limit:
                    over = True
                    raise PayloadTooLarge("request body over the limit")
            return message

        async def send_unless_refused(message: Message) -> None:
            nonlocal started
            if over:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, send_unless_refused)
        except Exception:
            if not over:
                raise
        if over and not started:
            await refuse()


def _declared_length(scope: Scope) -> int:
    try:
        return int(Headers(scope=scope).get("content-length", "0"))
    except ValueError:
        return 0


class QuietErrors:
    """Answer an unexpected error with a 500 in the error shape and log only where it
    happened: its type and stack frames, never its message (which may quote a prompt).

    Outside this, Starlette would log the whole exception and re-raise it for the server to
    log again, message and all.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # the lifespan's own failures must still stop the server
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            frames = "".join(traceback.format_tb(exc.__traceback__))
            log.error("unhandled %s at\n%s", type(exc).__name__, frames.rstrip())
            if not started:
                response = error_response(500, "internal_error", "Internal server error.")
                await response(scope, receive, send)
