"""Request and response bodies of the HTTP contract, shared by the API and the worker."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from shared.chat import BatchParams, Message, dump_messages
from shared.errors import InvalidRequest
from shared.settings import Provider, Settings

BatchStatus = Literal["queued", "in_progress", "completed", "failed", "cancelling", "cancelled"]
ItemStatus = Literal["pending", "succeeded", "failed", "cancelled"]
FINAL_BATCH_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

MAX_CUSTOM_ID = 256
CustomId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_CUSTOM_ID)]


class _Strict(BaseModel):
    """Unknown fields are an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid")


class PromptItem(_Strict):
    """An item: a `prompt` (one user message) or OpenAI `messages`, with optional `params` that
    override the batch's. Exactly one of `prompt` and `messages` (checked in `plan_batch`, so
    that 50,000 items validate in pydantic-core alone)."""

    custom_id: CustomId | None = None
    prompt: str | None = None
    messages: list[Message] | None = Field(default=None, min_length=1)
    params: BatchParams | None = None


#: A prompt is a plain string or a `PromptItem`. A plain union, checked by pydantic-core
#: alone: 50,000 prompts validate in about 2 ms (a Python validator per prompt took 80 ms, on
#: the API's event loop). The API reports a failing prompt's error without the union's branch
#: names (`api/errors.py`).
PromptEntry = str | PromptItem

TemplateRole = Literal["system", "human", "user", "ai", "assistant"]
#: A row's values: what a CSV cell or a JSON scalar can be; inserted literally.
RowValue = str | int | float | bool | None


class PromptTemplate(_Strict):
    """A LangChain `ChatPromptTemplate` with f-string variables: `[role, text]` pairs."""

    messages: list[tuple[TemplateRole, str]] = Field(min_length=1)


class BatchCreate(_Strict):
    prompts: list[PromptEntry] | None = Field(default=None, min_length=1)
    #: In place of `prompts`: a template filled from each row of `inputs`.
    template: PromptTemplate | None = None
    inputs: list[dict[str, RowValue]] | None = Field(default=None, min_length=1)
    model: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    system: str | None = None
    params: BatchParams = Field(default_factory=BatchParams)
    max_concurrency: int | None = Field(default=None, ge=1)
    #: A token budget: once the batch's usage reaches it no new call starts, and the items
    #: not started end `cancelled` (`budget_exceeded`).
    max_total_tokens: int | None = Field(default=None, ge=1)
    metadata: dict[Annotated[str, StringConstraints(max_length=64)], str] | None = Field(
        default=None, max_length=16
    )


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    #: Of the input tokens, those the provider read from its prompt cache.
    cached_tokens: int = 0
    #: Of the output tokens, those a reasoning model spent thinking.
    reasoning_tokens: int = 0

    @classmethod
    def of(
        cls,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
    ) -> Usage:
        return cls(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=input_tokens + output_tokens,
            cached_tokens=cached_tokens,
            reasoning_tokens=reasoning_tokens,
        )


class RequestCounts(BaseModel):
    total: int
    succeeded: int
    failed: int
    cancelled: int
    pending: int


class Pacing(BaseModel):
    """How the provider's rate limits shaped a batch: time its calls waited for their turn
    (summed over calls), and the 429s the provider answered them with (each one retried)."""

    wait_s: float = 0.0
    provider_429s: int = 0


class ErrorInfo(BaseModel):
    type: str
    message: str


class Batch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    status: BatchStatus
    model: str
    provider: Provider
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    #: When a final batch and its results will be deleted (null until final).
    expires_at: datetime | None = None
    request_counts: RequestCounts
    usage: Usage
    pacing: Pacing = Field(default_factory=Pacing)
    max_total_tokens: int | None = None
    metadata: dict[str, str] | None
    error: ErrorInfo | None


class ItemResult(BaseModel):
    index: int
    custom_id: str
    status: ItemStatus
    output: str | None = None
    #: The parsed reply, when the item asked for JSON (`response_format` json_object/json_schema).
    output_json: Any = None
    #: The provider's: `stop`, `length`, `tool_calls`, `content_filter`.
    finish_reason: str | None = None
    #: The reply's tool calls, in OpenAI's format.
    tool_calls: list[dict[str, Any]] | None = None
    refusal: str | None = None
    error: ErrorInfo | None = None
    usage: Usage | None = None


class ResultsPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[ItemResult]
    has_more: bool
    next_after: int | None


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Batch]
    has_more: bool
    next_after: str | None


class ErrorDetail(BaseModel):
    type: str
    message: str
    param: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


#: An item as stored: `(custom_id, prompt or messages)`, and its own params when it has any.
ItemBody = str | list[dict[str, Any]]
ItemRecord = tuple[str, ItemBody] | tuple[str, ItemBody, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """A validated submission, ready to store: items resolved, defaults and limits applied."""

    items: list[ItemRecord]
    model: str
    system: str | None
    params: BatchParams
    max_concurrency: int
    metadata: dict[str, str] | None
    provider: Provider
    max_total_tokens: int | None = None


def plan_batch(request: BatchCreate, settings: Settings) -> BatchPlan:
    """Apply the configured limits and defaults, render a template over its rows; raise
    InvalidRequest naming the field."""
    _check_source(request)
    count = len(request.prompts or request.inputs or ())
    if count > settings.max_prompts:
        what = "prompts" if request.prompts is not None else "inputs"
        raise InvalidRequest(
            f"A batch holds at most {settings.max_prompts} prompts; got {count}.", param=what
        )
    concurrency = request.max_concurrency or settings.default_concurrency
    if concurrency > settings.max_concurrency:
        raise InvalidRequest(
            f"max_concurrency is at most {settings.max_concurrency}.", param="max_concurrency"
        )
    check_params(request.params, settings, "params")
    if request.system is not None and len(request.system) > settings.max_prompt_chars:
        raise InvalidRequest(
            f"system is longer than {settings.max_prompt_chars} characters.", param="system"
        )
    system = request.system
    if request.template is not None and request.inputs is not None:
        # Imported here: only a template batch needs LangChain's prompts (and the client
        # never does).
        from shared.templates import render_rows

        rendered = render_rows(
            request.template, request.inputs, settings.max_prompt_chars, hoist=system is None
        )
        items, system = rendered.items, system or rendered.system
    else:
        items = _resolve_items(request.prompts or [], settings)
    return BatchPlan(
        items=items,
        model=request.model or settings.default_model,
        system=system,
        params=request.params,
        max_concurrency=concurrency,
        metadata=request.metadata,
        max_total_tokens=request.max_total_tokens,
        provider=settings.resolved_provider,
    )


def _check_source(request: BatchCreate) -> None:
    """Items come from `prompts`, or from a `template` filled from `inputs`: one of the two."""
    if request.prompts is not None:
        if request.template is not None or request.inputs is not None:
            raise InvalidRequest(
                "Give prompts, or a template with inputs, not both.", param="template"
            )
    elif request.template is None and request.inputs is None:
        raise InvalidRequest("A batch needs prompts (or a template with inputs).", param="prompts")
    elif request.template is None:
        raise InvalidRequest("inputs are the rows of a template: give one.", param="template")
    elif request.inputs is None:
        raise InvalidRequest("A template needs inputs: the rows to fill it.", param="inputs")


def check_params(params: BatchParams, settings: Settings, param: str) -> None:
    """Refuse params beyond the configured ceilings."""
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(params, name)
        if value is not None and value > settings.max_output_tokens:
            raise InvalidRequest(
                f"{name} is at most {settings.max_output_tokens}.", param=f"{param}.{name}"
            )


def _resolve_items(prompts: list[PromptEntry], settings: Settings) -> list[ItemRecord]:
    items: list[ItemRecord] = []
    seen = UniqueIds("prompts")
    for index, entry in enumerate(prompts):
        param = f"prompts[{index}]"
        if isinstance(entry, str):
            check_prompt(entry, settings.max_prompt_chars, param)
            items.append((seen.add(None, index), entry))
            continue
        custom_id = seen.add(entry.custom_id, index)
        body = _item_body(entry, settings.max_prompt_chars, param)
        if entry.params is None:
            items.append((custom_id, body))
            continue
        check_params(entry.params, settings, f"{param}.params")
        own = entry.params.provider_kwargs()
        items.append((custom_id, body, own) if own else (custom_id, body))
    return items


def _item_body(item: PromptItem, max_chars: int, param: str) -> ItemBody:
    if item.prompt is None and item.messages is None:
        raise InvalidRequest("An item needs a prompt (or messages).", param=f"{param}.prompt")
    if item.prompt is not None and item.messages is not None:
        raise InvalidRequest("An item has a prompt or messages, not both.", param=param)
    if item.prompt is not None:
        check_prompt(item.prompt, max_chars, f"{param}.prompt")
        return item.prompt
    assert item.messages is not None
    check_messages(item.messages, max_chars, f"{param}.messages")
    return dump_messages(item.messages)


def check_prompt(prompt: str, max_chars: int, param: str) -> None:
    if not prompt.strip():
        raise InvalidRequest("A prompt must not be empty.", param=param)
    if len(prompt) > max_chars:
        raise InvalidRequest(f"A prompt is at most {max_chars} characters.", param=param)


def check_messages(messages: list[Message], max_chars: int, param: str) -> None:
    """What OpenAI requires of a conversation that a schema cannot say."""
    for number, message in enumerate(messages):
        where = f"{param}[{number}]"
        if message.content is None and not (message.role == "assistant" and message.tool_calls):
            raise InvalidRequest(
                f"A {message.role} message needs content.", param=f"{where}.content"
            )
        if message.role == "tool" and not message.tool_call_id:
            raise InvalidRequest(
                "A tool message needs the tool_call_id it answers.", param=f"{where}.tool_call_id"
            )
        for n, part in enumerate(message.content if isinstance(message.content, list) else ()):
            problem = part.payload_error()
            if problem is not None:
                raise InvalidRequest(problem, param=f"{where}.content[{n}].{part.type}")
        if message.tool_calls is not None and message.role != "assistant":
            raise InvalidRequest(
                "Only an assistant message has tool_calls.", param=f"{where}.tool_calls"
            )
    if sum(len(m.text()) for m in messages) > max_chars:
        raise InvalidRequest(
            f"An item's messages hold at most {max_chars} characters.", param=param
        )


class UniqueIds:
    """The custom_ids of a batch so far: each one once, an item's index when it names none."""

    def __init__(self, field: str) -> None:
        self._field = field
        self._seen: set[str] = set()

    def add(self, custom_id: str | None, index: int) -> str:
        custom_id = custom_id if custom_id is not None else str(index)
        if custom_id in self._seen:
            raise InvalidRequest(
                f"custom_id {custom_id!r} appears twice in the batch.",
                param=f"{self._field}[{index}].custom_id",
            )
        self._seen.add(custom_id)
        return custom_id
