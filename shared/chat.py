"""Chat requests as an item carries them: OpenAI's messages, content parts and chat-completion
params. Models round-trip exactly (`dump_*` leaves out what the client did not send), so what a
provider receives is what the client wrote."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from shared.json_schemas import schema_problem

Role = Literal["system", "developer", "user", "assistant", "tool"]
#: Roles whose message leads a conversation; an item with one does not get the batch's `system`.
SYSTEM_ROLES = frozenset({"system", "developer"})
#: `response_format` types whose reply is parsed into `output_json`.
JSON_FORMATS = frozenset({"json_object", "json_schema"})


PartType = Literal["text", "image_url", "input_audio", "file"]


class ContentPart(BaseModel):
    """A content part: `{"type": T, T: ...}`. Its type is checked here and its payload in
    `payload_error`; anything else it carries passes to the provider untouched."""

    model_config = ConfigDict(extra="allow")

    type: PartType

    def payload_error(self) -> str | None:
        """What is wrong with the part's payload (`text` a string, the others an object)."""
        payload = (self.model_extra or {}).get(self.type)
        wanted = str if self.type == "text" else dict
        if isinstance(payload, wanted):
            return None
        kind = "a string" if wanted is str else "an object"
        return f"A {self.type} part needs {self.type!r}: {kind}."


def _json_object(arguments: str) -> str:
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise ValueError("a tool call's arguments are a JSON object, as text")
    return arguments


class CalledFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: Annotated[str, AfterValidator(_json_object)]


class ToolCall(BaseModel):
    """A function call an assistant turn made, in OpenAI's format."""

    model_config = ConfigDict(extra="forbid")

    id: str
    type: Literal["function"]
    function: CalledFunction


class Message(BaseModel):
    """One chat message, as in OpenAI's `messages`."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    #: An assistant turn's calls (OpenAI's format), and a tool message's answer to one.
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """The message's text (its text parts, joined)."""
        if isinstance(self.content, str):
            return self.content
        parts = self.content or ()
        return "".join(
            str((p.model_extra or {}).get("text", "")) for p in parts if p.type == "text"
        )


def _response_format(value: dict[str, Any]) -> dict[str, Any]:
    kind = value.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        raise ValueError("response_format.type is one of text, json_object, json_schema")
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ValueError("response_format.json_schema needs a name and a schema")
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise ValueError("response_format.json_schema.schema is a JSON Schema object")
        problem = schema_problem(schema)
        if problem is not None:
            raise ValueError(f"response_format.json_schema.schema is invalid: {problem}")
    return value


def _tools(value: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for tool in value:
        if tool.get("type") != "function":
            # LangChain sends any other tool type to OpenAI's Responses API, not this one.
            raise ValueError("a tool has type function (custom and built-in tools are not run)")
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValueError("a function tool needs function.name")
    return value


def _only_one(name: str, allowed: object, why: str) -> Any:
    def check(value: object) -> object:
        if value not in (None, allowed):
            raise ValueError(f"{name} must be {allowed!r} or left out: {why}")
        return value

    return AfterValidator(check)


#: The longest embedding a batch may ask for (`dimensions`): OpenAI's largest is 3,072.
MAX_DIMENSIONS = 8192

#: The params a chat model of another provider takes (anthropic, google_genai, ollama); the
#: rest are OpenAI's own.
PORTABLE_PARAMS = frozenset({"temperature", "top_p", "max_tokens", "max_completion_tokens", "stop"})

Penalty = Annotated[float, Field(ge=-2, le=2)]
StopWord = Annotated[str, StringConstraints(min_length=1)]


class BatchParams(BaseModel):
    """OpenAI chat-completion params (or embeddings params) a batch (its defaults) or an item
    (its overrides) carries."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    stop: StopWord | Annotated[list[StopWord], Field(max_length=4)] | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[int, Field(ge=-100, le=100)]] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    reasoning_effort: Annotated[str, StringConstraints(min_length=1, max_length=32)] | None = None
    response_format: Annotated[dict[str, Any], AfterValidator(_response_format)] | None = None
    tools: Annotated[list[dict[str, Any]], AfterValidator(_tools)] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    user: Annotated[str, StringConstraints(max_length=256)] | None = None
    #: Embeddings params (`/v1/embeddings` batches only): the vector's length, and how the
    #: OpenAI output file writes it (`float`, or `base64` of little-endian float32s).
    dimensions: int | None = Field(default=None, ge=1, le=MAX_DIMENSIONS)
    encoding_format: Literal["float", "base64"] | None = None
    #: Accepted only as the no-ops OpenAI files sometimes carry (`n: 1`, `stream: false`).
    n: Annotated[int | None, _only_one("n", 1, "an item has one result")] = None
    stream: Annotated[
        bool | None, _only_one("stream", False, "each result is stored whole when it finishes")
    ] = None

    def provider_kwargs(self) -> dict[str, Any]:
        """What goes to the chat model: the fields given, without the no-ops. `max_tokens` is
        sent as `max_completion_tokens`, its current name (as ChatOpenAI does anyway), so that
        an item's limit overrides the batch's whichever name either used."""
        kwargs = self.model_dump(exclude_none=True, exclude={"n", "stream"})
        if "max_tokens" in kwargs:
            kwargs.setdefault("max_completion_tokens", kwargs["max_tokens"])
            del kwargs["max_tokens"]
        return kwargs


def dump_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Messages as the client sent them (fields not given are left out)."""
    return [m.model_dump(exclude_unset=True) for m in messages]


def has_system(messages: list[dict[str, Any]]) -> bool:
    return any(m.get("role") in SYSTEM_ROLES for m in messages)
