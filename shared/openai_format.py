"""OpenAI Batch files: request lines in (one line -> one item, with its messages and params),
output lines out (one result -> one line), so files made for or read by OpenAI's Batch API work
here unchanged."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from shared.chat import BatchParams, Message
from shared.errors import InvalidRequest
from shared.plain_errors import sentence
from shared.schemas import (
    Batch,
    BatchCreate,
    CustomId,
    ItemResult,
    PromptEntry,
    PromptItem,
    Usage,
)

CHAT_COMPLETIONS = "/v1/chat/completions"


class ChatRequestBody(BatchParams):
    """`body` of a request line: a chat completion request, kept whole (its messages and its
    params). Unknown fields are refused, as everywhere in the API, rather than dropped."""

    model: str | None = Field(default=None, min_length=1, max_length=256)
    messages: list[Message] = Field(min_length=1)

    def params(self) -> BatchParams | None:
        """The line's params (validated already, as fields of this body)."""
        values = self.model_dump(exclude_unset=True, exclude={"model", "messages"})
        return BatchParams.model_construct(**values) if values else None


class RequestLine(BaseModel, extra="forbid"):
    """One line of an OpenAI Batch input file."""

    custom_id: CustomId
    method: Literal["POST"]
    url: Literal["/v1/chat/completions"]
    body: ChatRequestBody


def json_lines(lines: Iterable[str], start: int = 1) -> Iterator[tuple[int, Any]]:
    """`(line number, decoded JSON)` for each non-blank line; numbers count from `start`."""
    for number, line in enumerate(lines, start=start):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(
                f"Line {number} is not valid JSON: {exc.msg}.", param=f"line[{number}]"
            ) from None
        except (ValueError, RecursionError):  # an integer of thousands of digits, deep nesting
            raise InvalidRequest(
                f"Line {number} is JSON too deep or with too long a number to read.",
                param=f"line[{number}]",
            ) from None


def is_request_line(value: Any) -> bool:
    """Whether a decoded JSON line looks like an OpenAI Batch request (not a bare prompt)."""
    return isinstance(value, dict) and ("body" in value or "url" in value or "method" in value)


def batch_from_request_lines(lines: Iterable[str]) -> BatchCreate:
    """An OpenAI Batch input file as one batch: every line keeps its own messages and params.
    One model per batch, as OpenAI requires; InvalidRequest names the first line (counted
    from 1) that is wrong."""
    return numbered_batch(lines)[0]


def numbered_batch(lines: Iterable[str]) -> tuple[BatchCreate, list[int]]:
    """`batch_from_request_lines`, and the line number (from 1) of each item."""
    read = RequestLines()
    prompts: list[PromptEntry] = []
    numbers: list[int] = []
    for number, value in json_lines(lines):
        prompts.append(read.item(number, value))
        numbers.append(number)
    if not prompts:
        raise InvalidRequest(NO_LINES, param="line[1]")
    return BatchCreate(prompts=prompts, model=read.model), numbers


NO_LINES = "The body has no request lines."


class RequestLines:
    """The request lines of one file, read one at a time (a file can be read in pages): each
    becomes an item; the file's one model and each custom_id's uniqueness are checked across
    all of them."""

    def __init__(self) -> None:
        self._model: tuple[int, str] | None = None
        self._seen: set[str] = set()

    @property
    def model(self) -> str | None:
        """The model the lines name (the same on every line that names one), if any."""
        return None if self._model is None else self._model[1]

    def item(self, number: int, value: Any) -> PromptItem:
        """Line `number` (decoded JSON) as an item; InvalidRequest names what is wrong."""
        line = _request_line(number, value)
        body = line.body
        if body.model is not None:
            if self._model is None:
                self._model = (number, body.model)
            elif body.model != self._model[1]:
                raise InvalidRequest(
                    f"Line {number}: model {body.model!r} differs from line "
                    f"{self._model[0]}'s {self._model[1]!r}; a batch runs one model.",
                    param=f"line[{number}].body.model",
                )
        if line.custom_id in self._seen:
            raise InvalidRequest(
                f"Line {number}: custom_id {line.custom_id!r} appears twice in the batch.",
                param=f"line[{number}].custom_id",
            )
        self._seen.add(line.custom_id)
        return PromptItem(custom_id=line.custom_id, messages=body.messages, params=body.params())


_ITEM_PARAM = re.compile(r"^prompts\[(\d+)\](?:\.params(?=\.)|(?=\.messages)|(?=\.custom_id))?")


def as_line_error(error: InvalidRequest, numbers: Sequence[int]) -> InvalidRequest:
    """An error about `prompts[i]` of a batch made from request lines, as one about its line:
    `prompts[2].params.max_tokens` -> `line[4].body.max_tokens`."""
    found = _ITEM_PARAM.match(error.param or "")
    if found is None or int(found[1]) >= len(numbers):
        return error
    number = numbers[int(found[1])]
    rest = (error.param or "")[found.end() :]
    where = "" if rest.startswith(".custom_id") or not rest else ".body"
    param = f"line[{number}]{where}{rest}"
    return type(error)(f"Line {number}: {error.message}", param=param)


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


def line_error(number: int, exc: ValidationError) -> InvalidRequest:
    """A line's validation error as InvalidRequest, naming the line and the field."""
    first = exc.errors()[0]
    param = f"line[{number}]" + _path(first["loc"])
    if first["type"] == "extra_forbidden":
        message = f"Line {number}: unknown field {param!r}."
    else:
        message = f"Line {number}: {sentence(first, param)}"
    return InvalidRequest(message, param=param)


def _path(loc: Sequence[int | str]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


# -- output lines --------------------------------------------------------------------------------


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str = "stop"


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails

    @classmethod
    def of(cls, usage: Usage | None) -> CompletionUsage:
        usage = usage or Usage()
        return cls(
            prompt_tokens=usage.input_tokens,
            completion_tokens=usage.output_tokens,
            total_tokens=usage.total_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
            completion_tokens_details=CompletionTokensDetails(
                reasoning_tokens=usage.reasoning_tokens
            ),
        )


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage


class ProviderError(BaseModel):
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None


class ErrorAnswer(BaseModel):
    """The body of a provider's 4xx answer."""

    error: ProviderError


class OutputResponse(BaseModel):
    status_code: int
    request_id: str
    body: ChatCompletion | ErrorAnswer


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
    (an OpenAI output file holds finished requests only). A failed item is an error line,
    except where the provider answered: its 4xx refusal is the response, with its status, and
    a reply that is not the JSON asked for is written as it came (promptbatch's own results
    mark it `invalid_output`), as OpenAI writes both."""
    if item.status == "pending":
        return None
    line_id = f"batch_req_{batch.id.removeprefix('batch_')}_{item.index}"
    request_id = f"req_{batch.id.removeprefix('batch_')}_{item.index}"
    status = _PROVIDER_STATUS.get(item.error.type) if item.error is not None else None
    if item.status == "failed" and item.error is not None and status is not None:
        refused = ErrorAnswer(error=ProviderError(message=item.error.message, code=item.error.type))
        response = OutputResponse(status_code=status, request_id=request_id, body=refused)
        return OutputLine(id=line_id, custom_id=item.custom_id, response=response, error=None)
    if item.status != "succeeded" and not _answered(item):
        code = item.error.type if item.error else f"batch_{item.status}"
        message = item.error.message if item.error else f"The request was {item.status}."
        return OutputLine(
            id=line_id, custom_id=item.custom_id, response=None,
            error=OutputError(code=code, message=message),
        )  # fmt: skip
    reply = AssistantMessage(content=item.output, refusal=item.refusal, tool_calls=item.tool_calls)
    completion = ChatCompletion(
        id=f"chatcmpl-{batch.id.removeprefix('batch_')}-{item.index}",
        created=int((batch.finished_at or batch.created_at).timestamp()),
        model=batch.model,
        choices=[Choice(message=reply, finish_reason=item.finish_reason or "stop")],
        usage=CompletionUsage.of(item.usage),
    )
    response = OutputResponse(status_code=200, request_id=request_id, body=completion)
    return OutputLine(id=line_id, custom_id=item.custom_id, response=response, error=None)


#: A failed item's error type when the provider refused the request with a 4xx: its status
#: (`worker/llm.py` names them). The line carries the provider's answer, as OpenAI's do.
_PROVIDER_STATUS = {
    "invalid_request": 400,
    "context_length_exceeded": 400,
    "authentication_error": 401,
    "permission_denied": 403,
    "model_not_found": 404,
    "rate_limited": 429,
}


def _answered(item: ItemResult) -> bool:
    """Whether the provider answered the item (a reply promptbatch refused as invalid_output)."""
    return item.error is not None and item.error.type == "invalid_output"
