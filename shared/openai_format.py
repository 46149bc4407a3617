"""OpenAI Batch input files: request lines in (one line -> one item, with its messages and
params, or its text to embed), so files made for OpenAI's Batch API work here unchanged. The
output lines are `shared/output_lines.py`'s."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from shared.chat import MAX_DIMENSIONS, BatchParams, Message
from shared.errors import InvalidRequest
from shared.plain_errors import sentence
from shared.schemas import (
    CHAT,
    EMBEDDINGS,
    BatchCreate,
    CustomId,
    Endpoint,
    PromptEntry,
    PromptItem,
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


class EmbeddingRequestBody(BaseModel, extra="forbid"):
    """`body` of an `/v1/embeddings` request line: one text to embed."""

    model: str | None = Field(default=None, min_length=1, max_length=256)
    input: str
    dimensions: int | None = Field(default=None, ge=1, le=MAX_DIMENSIONS)
    encoding_format: Literal["float", "base64"] | None = None


class RequestLine(BaseModel, extra="forbid"):
    """One line of an OpenAI Batch input file."""

    custom_id: CustomId
    method: Literal["POST"]
    url: Literal["/v1/chat/completions"]
    body: ChatRequestBody


class EmbeddingLine(BaseModel, extra="forbid"):
    """One line of an OpenAI Batch input file of embeddings."""

    custom_id: CustomId
    method: Literal["POST"]
    url: Literal["/v1/embeddings"]
    body: EmbeddingRequestBody


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
    endpoint = EMBEDDINGS if read.endpoint == EMBEDDINGS else None
    batch = BatchCreate(prompts=prompts, model=read.model, params=read.params, endpoint=endpoint)
    return batch, numbers


NO_LINES = "The body has no request lines."


class RequestLines:
    """The request lines of one file, read one at a time (a file can be read in pages): each
    becomes an item; the file's one model and each custom_id's uniqueness are checked across
    all of them."""

    def __init__(self) -> None:
        self._model: tuple[int, str] | None = None
        self._seen: set[str] = set()
        #: The url of the first line: every line has it (a batch runs one endpoint).
        self.endpoint: Endpoint = CHAT
        #: An embeddings file's `dimensions` and `encoding_format`: the batch's params, so
        #: each line that gives them gives the same.
        self._embedding_params: tuple[int, dict[str, Any]] | None = None

    @property
    def model(self) -> str | None:
        """The model the lines name (the same on every line that names one), if any."""
        return None if self._model is None else self._model[1]

    @property
    def params(self) -> BatchParams:
        """The batch's params the lines set (an embeddings file's; chat lines keep theirs)."""
        given = self._embedding_params[1] if self._embedding_params is not None else {}
        return BatchParams(**given)

    def item(self, number: int, value: Any) -> PromptItem:
        """Line `number` (decoded JSON) as an item; InvalidRequest names what is wrong."""
        url = value.get("url") if isinstance(value, dict) else None
        if self._seen and url in (CHAT_COMPLETIONS, EMBEDDINGS) and url != self.endpoint:
            raise InvalidRequest(
                f"Line {number}: url {url!r} differs from the first line's "
                f"{self.endpoint!r}; a batch runs one endpoint.",
                param=f"line[{number}].url",
            )
        line = _request_line(number, value)
        if not self._seen:
            self.endpoint = line.url
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
        if isinstance(body, EmbeddingRequestBody):
            self._same_params(number, body)
            return PromptItem(custom_id=line.custom_id, input=body.input)
        return PromptItem(custom_id=line.custom_id, messages=body.messages, params=body.params())

    def _same_params(self, number: int, body: EmbeddingRequestBody) -> None:
        given = body.model_dump(include={"dimensions", "encoding_format"}, exclude_none=True)
        if self._embedding_params is None:
            self._embedding_params = (number, given)
        elif given != self._embedding_params[1]:
            first = self._embedding_params[0]
            raise InvalidRequest(
                f"Line {number}: dimensions and encoding_format differ from line {first}'s; "
                "a batch embeds every input alike.",
                param=f"line[{number}].body",
            )


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


def _request_line(number: int, value: Any) -> RequestLine | EmbeddingLine:
    url = value.get("url") if isinstance(value, dict) else None
    if isinstance(url, str) and url not in (CHAT_COMPLETIONS, EMBEDDINGS):
        raise InvalidRequest(
            f"Line {number}: url must be {CHAT_COMPLETIONS} or {EMBEDDINGS}; got {url[:64]!r}.",
            param=f"line[{number}].url",
        )
    try:
        if url == EMBEDDINGS:
            return EmbeddingLine.model_validate(value)
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
