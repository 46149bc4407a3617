"""OpenAI Batch files: request lines in (one line -> one prompt), output lines out (one result ->
one line), so files made for or read by OpenAI's Batch API work here unchanged."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from shared.errors import InvalidRequest
from shared.schemas import Batch, BatchCreate, BatchParams, CustomId, ItemResult, PromptItem

CHAT_COMPLETIONS = "/v1/chat/completions"
#: Roles whose message becomes the batch's system prompt (`developer` is OpenAI's newer name).
_SYSTEM_ROLES = frozenset({"system", "developer"})


class _TextPart(BaseModel, extra="forbid"):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel, extra="forbid"):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_TextPart]
    name: str | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatRequestBody(BatchParams):
    """`body` of a request line: a chat completion request with one prompt. Unknown fields are
    refused, as everywhere in the API, rather than silently dropped."""

    model: str | None = Field(default=None, min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _stop_as_list(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("stop"), str):
            return {**data, "stop": [data["stop"]]}
        return data

    def params(self) -> BatchParams:
        values = self.model_dump(include=set(BatchParams.model_fields))
        if values["max_tokens"] is None:
            values["max_tokens"] = self.max_completion_tokens
        return BatchParams(**values)


class RequestLine(BaseModel, extra="forbid"):
    """One line of an OpenAI Batch input file."""

    custom_id: CustomId
    method: Literal["POST"]
    url: Literal["/v1/chat/completions"]
    body: ChatRequestBody


def json_lines(lines: Iterable[str]) -> Iterator[tuple[int, Any]]:
    """`(line number, decoded JSON)` for each non-blank line; numbers count from 1."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(
                f"Line {number} is not valid JSON: {exc.msg}.", param=f"line[{number}]"
            ) from None


def is_request_line(value: Any) -> bool:
    """Whether a decoded JSON line looks like an OpenAI Batch request (not a bare prompt)."""
    return isinstance(value, dict) and ("body" in value or "url" in value or "method" in value)


def batch_from_request_lines(lines: Iterable[str]) -> BatchCreate:
    """An OpenAI Batch input file as one batch. Every line must share model, system prompt and
    sampling parameters; InvalidRequest names the first line (counted from 1) that is wrong."""
    prompts: list[PromptItem] = []
    seen: set[str] = set()
    shared: tuple[int, _Shared] | None = None
    for number, value in json_lines(lines):
        item, settings = _split(number, _request_line(number, value))
        if shared is None:
            shared = (number, settings)
        _check_same(number, settings, *shared)
        if item.custom_id in seen:
            raise InvalidRequest(
                f"Line {number}: custom_id {item.custom_id!r} appears twice in the batch.",
                param=f"line[{number}].custom_id",
            )
        seen.add(item.custom_id or "")
        prompts.append(item)
    if shared is None:
        raise InvalidRequest("The body has no request lines.", param="line[1]")
    model, system, params = shared[1]
    return BatchCreate(prompts=prompts, model=model, system=system, params=params)


_Shared = tuple[str | None, str | None, BatchParams]


def _request_line(number: int, value: Any) -> RequestLine:
    url = value.get("url") if isinstance(value, dict) else None
    if isinstance(url, str) and url != CHAT_COMPLETIONS:
        raise InvalidRequest(
            f"Line {number}: url must be {CHAT_COMPLETIONS}; got {url!r}.",
            param=f"line[{number}].url",
        )
    try:
        return RequestLine.model_validate(value)
    except ValidationError as exc:
        raise line_error(number, exc) from None


def _split(number: int, line: RequestLine) -> tuple[PromptItem, _Shared]:
    """The line's prompt, and what it must share with every other line."""
    param = f"line[{number}].body.messages"
    *earlier, last = line.body.messages
    system = [m for m in earlier if m.role in _SYSTEM_ROLES]
    if last.role != "user" or len(system) != len(earlier) or len(system) > 1:
        raise InvalidRequest(
            f"Line {number}: messages must be one user message, optionally after one system "
            "message; conversations with earlier turns are not supported.",
            param=param,
        )
    if not last.text.strip():
        raise InvalidRequest(f"Line {number}: the user message is empty.", param=param)
    item = PromptItem(prompt=last.text, custom_id=line.custom_id)
    return item, (line.body.model, system[0].text if system else None, line.body.params())


def _check_same(number: int, settings: _Shared, first: int, expected: _Shared) -> None:
    """Refuse a line whose model, system message or a sampling parameter differs from the
    first line's, naming the field."""
    (model, system, params), (want_model, want_system, want_params) = settings, expected
    got = {"model": model, "messages": system, **params.model_dump()}
    want = {"model": want_model, "messages": want_system, **want_params.model_dump()}
    field = next((name for name in got if got[name] != want[name]), None)
    if field is not None:
        what = "the system message" if field == "messages" else field
        raise InvalidRequest(
            f"Line {number}: {what} differs from line {first}'s; every line of a batch shares "
            "model, system message and sampling parameters.",
            param=f"line[{number}].body.{field}",
        )


def line_error(number: int, exc: ValidationError) -> InvalidRequest:
    """A line's validation error as InvalidRequest, naming the line and the field."""
    first = exc.errors()[0]
    param = f"line[{number}]" + _path(first["loc"])
    if first["type"] == "extra_forbidden":
        message = f"Line {number}: unknown field {param!r}."
    else:
        message = f"Line {number}: {first['msg']} ({param})."
    return InvalidRequest(message, param=param)


def _path(loc: Sequence[int | str]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


# -- output lines --------------------------------------------------------------------------------


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str = "stop"


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage


class OutputResponse(BaseModel):
    status_code: int
    request_id: str
    body: ChatCompletion


class OutputError(BaseModel):
    code: str
    message: str


class OutputLine(BaseModel):
    """One line of an OpenAI Batch output file: a response, or an error, never both."""

    id: str
    custom_id: str
    response: OutputResponse | None
    error: OutputError | None


def output_line(item: ItemResult, batch: Batch) -> OutputLine | None:
    """The item as OpenAI writes it in a batch output file; None while it is still pending
    (an OpenAI output file holds finished requests only)."""
    if item.status == "pending":
        return None
    line_id = f"batch_req_{batch.id.removeprefix('batch_')}_{item.index}"
    if item.status != "succeeded" or item.output is None:
        code = item.error.type if item.error else f"batch_{item.status}"
        message = item.error.message if item.error else f"The request was {item.status}."
        return OutputLine(
            id=line_id, custom_id=item.custom_id, response=None,
            error=OutputError(code=code, message=message),
        )  # fmt: skip
    usage = item.usage
    completion = ChatCompletion(
        id=f"chatcmpl-{batch.id.removeprefix('batch_')}-{item.index}",
        created=int((batch.finished_at or batch.created_at).timestamp()),
        model=batch.model,
        choices=[Choice(message=AssistantMessage(content=item.output))],
        usage=CompletionUsage(
            prompt_tokens=usage.input_tokens if usage else 0,
            completion_tokens=usage.output_tokens if usage else 0,
            total_tokens=usage.total_tokens if usage else 0,
        ),
    )
    response = OutputResponse(
        status_code=200, request_id=f"req_{batch.id.removeprefix('batch_')}_{item.index}",
        body=completion,
    )  # fmt: skip
    return OutputLine(id=line_id, custom_id=item.custom_id, response=response, error=None)
