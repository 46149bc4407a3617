"""OpenAI's Files and Batch API, as the mock provider (`tests/mock_openai.py`) serves it, so that
a batch handed to a provider's Batch API can be tested end to end.

- `POST /v1/files` (multipart `file`, `purpose`), `GET /v1/files/{id}`, `GET …/{id}/content`,
  `DELETE …/{id}`.
- `POST /v1/batches` (`input_file_id`, `endpoint`, `completion_window`, `metadata`), `GET
  /v1/batches/{id}`, `GET /v1/batches?limit=&after=` (newest first), `POST …/{id}/cancel`.
- A batch moves one phase each time it is read, once `phase_s` has passed since its last move:
  `validating` -> `in_progress` -> `finalizing` -> `completed`. At validation a file of more
  than `max_lines` lines fails (`errors.data[0].code` `max_requests_exceeded`), and so does one
  whose tokens, with those of the batches in progress, pass `enqueued_token_limit`
  (`token_limit_exceeded`). Each line is answered as the chat endpoint answers it (its prompt's
  directives included: `[[status=400]]` is that answer in the error file); the output file's
  lines are shuffled, as OpenAI's are.
- With `expire`, a batch in progress ends `expired` with half its lines answered; a cancel
  while in progress ends `cancelled` (through `cancelling`) with half of them answered. The
  others are in the error file with `batch_expired` / `batch_cancelled`.
- With `hold` `upload`, `create` or `poll` (a look at a batch), that step's answer is held back
  after its work is done;
  with `content`, a result file is sent halfway and held: until `hold` is set again (a test
  kills the worker meanwhile). `GET /v1/files` lists the files.
- With `fail_polls` N, the next N looks at a batch are answered `poll_status` (500).
- `POST /_batch_api` sets `max_lines`, `phase_s`, `enqueued_token_limit`, `expire`, `hold`,
  `fail_polls`, `poll_status`;
  `GET /_batch_api` says them, with how many batches were created and how many times each
  line (by its `custom_id`) was answered; `POST /_reset` clears those and sets the settings
  back to their defaults.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

#: Answers a chat request body: (HTTP status, response body).
Answer = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]

FINAL = ("completed", "failed", "expired", "cancelled")
_NEXT = {"validating": "in_progress", "in_progress": "finalizing", "finalizing": "completed"}


@dataclass
class StoredFile:
    id: str
    content: bytes
    filename: str
    purpose: str
    created_at: int

    def object(self) -> dict[str, Any]:
        return {
            "id": self.id, "object": "file", "bytes": len(self.content),
            "created_at": self.created_at, "filename": self.filename, "purpose": self.purpose,
            "status": "processed", "expires_at": None, "status_details": None,
        }  # fmt: skip


@dataclass
class MockBatch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    lines: list[dict[str, Any]]
    status: str = "validating"
    moved_at: float = field(default_factory=time.monotonic)
    times: dict[str, int] = field(default_factory=dict)
    errors: list[dict[str, Any]] | None = None
    answered: dict[str, dict[str, Any]] = field(default_factory=dict)  # custom_id -> out line
    output_file_id: str | None = None
    error_file_id: str | None = None

    def object(self) -> dict[str, Any]:
        failed = sum(1 for line in self.answered.values() if line["error"] is not None
                     or line["response"]["status_code"] != 200)  # fmt: skip
        completed = len(self.answered) - failed
        if self.status in ("expired", "cancelled"):
            failed = len(self.lines) - completed
        return {
            "id": self.id, "object": "batch", "endpoint": self.endpoint,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id, "completion_window": self.completion_window,
            "status": self.status, "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id, "created_at": self.times["created"],
            **{f"{name}_at": self.times.get(name) for name in (
                "in_progress", "expires", "finalizing", "completed", "failed", "expired",
                "cancelling", "cancelled")},
            "request_counts": {"total": len(self.lines), "completed": completed, "failed": failed},
            "metadata": self.metadata,
        }  # fmt: skip


@dataclass
class BatchApi:
    answer: Answer
    max_lines: int = 50_000
    phase_s: float = 0.0
    enqueued_token_limit: int = 0
    expire: bool = False
    #: A step whose answer is held back after its work is done (`upload`, `create`, `poll`),
    #: or held halfway (`content`: half of a file's lines sent), until `hold` is set again.
    hold: str | None = None
    held: int = 0
    #: Looks at a batch answered `poll_status` (a provider busy: 500) before the next ones are
    #: answered.
    fail_polls: int = 0
    poll_status: int = 500
    released: asyncio.Event = field(default_factory=asyncio.Event)
    files: dict[str, StoredFile] = field(default_factory=dict)
    batches: dict[str, MockBatch] = field(default_factory=dict)
    created: int = 0
    runs: Counter[str] = field(default_factory=Counter)

    def settings(self) -> dict[str, Any]:
        return {
            "max_lines": self.max_lines, "phase_s": self.phase_s,
            "enqueued_token_limit": self.enqueued_token_limit, "expire": self.expire,
            "hold": self.hold, "fail_polls": self.fail_polls, "poll_status": self.poll_status,
        }  # fmt: skip

    def set(self, name: str, value: Any) -> None:
        setattr(self, name, value)
        if name == "hold":  # what was held goes on; what comes next is held if it says so
            self.released.set()
            self.released = asyncio.Event()

    def reset(self) -> None:
        self.created = self.held = 0
        self.runs.clear()
        self.max_lines, self.phase_s, self.enqueued_token_limit, self.expire = 50_000, 0.0, 0, False
        self.fail_polls, self.poll_status = 0, 500
        self.set("hold", None)

    async def holding(self, step: str) -> None:
        """Wait here while `step` is held (a kill of the client is what the test waits for)."""
        if self.hold == step:
            self.held += 1
            await self.released.wait()

    def store(self, content: bytes, filename: str, purpose: str) -> StoredFile:
        stored = StoredFile(f"file-{secrets.token_hex(12)}", content, filename, purpose,
                            int(time.time()))  # fmt: skip
        self.files[stored.id] = stored
        return stored

    def advance(self, batch: MockBatch) -> None:
        """One phase on, if `phase_s` has passed since the last."""
        if batch.status in FINAL or time.monotonic() - batch.moved_at < self.phase_s:
            return
        if batch.status == "validating":
            refusal = self._refusal(batch)
            if refusal is not None:
                batch.errors = [{"code": refusal[0], "message": refusal[1], "param": None,
                                 "line": None}]  # fmt: skip
                self._move(batch, "failed")
                return
        elif batch.status == "in_progress":
            if self.expire:
                self._answer(batch, len(batch.lines) // 2)
                self._end(batch, "expired")
                return
            self._answer(batch, len(batch.lines))
        elif batch.status == "cancelling":
            self._end(batch, "cancelled")
            return
        elif batch.status == "finalizing":
            self._end(batch, "completed")
            return
        self._move(batch, _NEXT[batch.status])

    def cancel(self, batch: MockBatch) -> None:
        if batch.status in ("validating", "in_progress"):
            if batch.status == "in_progress":
                self._answer(batch, len(batch.lines) // 2)
            self._move(batch, "cancelling")

    def _refusal(self, batch: MockBatch) -> tuple[str, str] | None:
        if len(batch.lines) > self.max_lines:
            return "max_requests_exceeded", (
                f"The batch has {len(batch.lines)} requests; at most {self.max_lines} are allowed."
            )
        if self.enqueued_token_limit:
            busy = [b for b in self.batches.values() if b.status in ("in_progress", "finalizing")]
            tokens = sum(_tokens(b) for b in [*busy, batch])
            if tokens > self.enqueued_token_limit:
                return "token_limit_exceeded", (
                    f"Enqueued token limit reached: {tokens} tokens with the batches in "
                    f"progress; the limit is {self.enqueued_token_limit}."
                )
        return None

    def _answer(self, batch: MockBatch, count: int) -> None:
        for line in batch.lines[:count]:
            custom_id = line["custom_id"]
            if custom_id in batch.answered:
                continue
            status, body = self.answer(line["body"])
            self.runs[custom_id] += 1
            batch.answered[custom_id] = {
                "id": f"batch_req_{secrets.token_hex(8)}", "custom_id": custom_id,
                "response": {"status_code": status, "request_id": f"req_{secrets.token_hex(8)}",
                             "body": body},
                "error": None,
            }  # fmt: skip

    def _move(self, batch: MockBatch, status: str) -> None:
        batch.status, batch.moved_at = status, time.monotonic()
        batch.times[status] = int(time.time())

    def _end(self, batch: MockBatch, status: str) -> None:
        """The batch's output and error files (its answers shuffled), then its final status."""
        answers = list(batch.answered.values())
        random.shuffle(answers)
        output = [a for a in answers if a["response"]["status_code"] == 200]
        errors = [a for a in answers if a["response"]["status_code"] != 200]
        code = {"expired": "batch_expired", "cancelled": "batch_cancelled"}.get(status)
        if code is not None:
            errors += [
                {"id": f"batch_req_{secrets.token_hex(8)}", "custom_id": line["custom_id"],
                 "response": None, "error": {"code": code, "message": f"The batch was {status}."}}
                for line in batch.lines if line["custom_id"] not in batch.answered
            ]  # fmt: skip
        for lines, attribute in ((output, "output_file_id"), (errors, "error_file_id")):
            if lines:
                content = "".join(json.dumps(line) + "\n" for line in lines).encode()
                stored = self.store(content, f"{batch.id}_{attribute}.jsonl", "batch_output")
                setattr(batch, attribute, stored.id)
        self._move(batch, status)


def _tokens(batch: MockBatch) -> int:
    """A batch's enqueued tokens, counted as words of its messages' text."""
    return sum(len(json.dumps(line["body"].get("messages", [])).split()) for line in batch.lines)


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": None}}  # fmt: skip
    return JSONResponse(body, status_code=status)


def routes(api: BatchApi) -> list[Route]:
    async def create_file(request: Request) -> JSONResponse:
        async with request.form() as form:
            upload, purpose = form.get("file"), form.get("purpose")
            if not isinstance(upload, UploadFile) or purpose != "batch":
                return _error(400, "send a file with purpose 'batch'", "file")
            content = await upload.read()
            stored = api.store(content, upload.filename or "upload.jsonl", purpose)
        await api.holding("upload")
        return JSONResponse(stored.object())

    async def list_files(request: Request) -> JSONResponse:
        purpose = request.query_params.get("purpose")
        found = [f.object() for f in reversed(api.files.values()) if purpose in (None, f.purpose)]
        return JSONResponse({"object": "list", "data": found, "has_more": False,
                             "first_id": None, "last_id": None})  # fmt: skip

    def _file(request: Request) -> StoredFile | None:
        return api.files.get(request.path_params["file_id"])

    async def get_file(request: Request) -> JSONResponse:
        found = _file(request)
        return _error(404, "no such file") if found is None else JSONResponse(found.object())

    async def file_content(request: Request) -> Response:
        found = _file(request)
        if found is None:
            return _error(404, "no such file")
        if api.hold != "content" or found.purpose != "batch_output":
            return Response(found.content, media_type="application/jsonl")
        lines = found.content.splitlines(keepends=True)

        async def halfway() -> AsyncIterator[bytes]:
            yield b"".join(lines[: len(lines) // 2])
            await api.holding("content")
            yield b"".join(lines[len(lines) // 2 :])

        return StreamingResponse(halfway(), media_type="application/jsonl")

    async def delete_file(request: Request) -> JSONResponse:
        found = api.files.pop(request.path_params["file_id"], None)
        if found is None:
            return _error(404, "no such file")
        return JSONResponse({"id": found.id, "object": "file", "deleted": True})

    async def create_batch(request: Request) -> JSONResponse:
        fields = await request.json()
        stored = api.files.get(fields.get("input_file_id", ""))
        if stored is None:
            return _error(404, "no such file", "input_file_id")
        lines = [json.loads(line) for line in stored.content.decode().splitlines() if line.strip()]
        batch = MockBatch(
            id=f"batch_{secrets.token_hex(12)}", input_file_id=stored.id,
            endpoint=fields.get("endpoint", ""), metadata=fields.get("metadata"),
            completion_window=fields.get("completion_window", "24h"), lines=lines,
        )  # fmt: skip
        now = int(time.time())
        batch.times.update(created=now, expires=now + 24 * 3600)
        api.batches[batch.id] = batch
        api.created += 1
        await api.holding("create")
        return JSONResponse(batch.object())

    def _acting(step: Callable[[MockBatch], None]) -> Callable[[Request], Any]:
        """A route that takes `step` on the batch of its path, then answers the batch."""

        async def route(request: Request) -> JSONResponse:
            found = api.batches.get(request.path_params["batch_id"])
            if found is None:
                return _error(404, "no such batch")
            if api.fail_polls > 0 and request.method == "GET":
                api.fail_polls -= 1
                return _error(api.poll_status, f"the provider answers {api.poll_status}")
            if request.method == "GET":
                await api.holding("poll")
            step(found)
            return JSONResponse(found.object())

        return route

    async def list_batches(request: Request) -> JSONResponse:
        newest = list(reversed(api.batches.values()))
        after = request.query_params.get("after")
        if after is not None:
            ids = [batch.id for batch in newest]
            newest = newest[ids.index(after) + 1 :] if after in ids else []
        limit = int(request.query_params.get("limit", "20"))
        page = newest[:limit]
        data = [batch.object() for batch in page]
        return JSONResponse({
            "object": "list", "data": data, "has_more": len(newest) > limit,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        })  # fmt: skip

    async def settings(request: Request) -> JSONResponse:
        if request.method == "POST":
            for name, value in (await request.json()).items():
                if name not in api.settings():
                    return _error(400, f"unknown setting {name!r}")
                api.set(name, value)
        counts = {"created": api.created, "held": api.held, "runs": dict(api.runs)}
        return JSONResponse({**api.settings(), **counts})

    return [
        Route("/v1/files", create_file, methods=["POST"]),
        Route("/v1/files", list_files, methods=["GET"]),
        Route("/v1/files/{file_id}", get_file, methods=["GET"]),
        Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", file_content),
        Route("/v1/batches", create_batch, methods=["POST"]),
        Route("/v1/batches", list_batches, methods=["GET"]),
        Route("/v1/batches/{batch_id}", _acting(api.advance)),
        Route("/v1/batches/{batch_id}/cancel", _acting(api.cancel), methods=["POST"]),
        Route("/_batch_api", settings, methods=["GET", "POST"]),
    ]
