"""The HTTP contract: request and response bodies, and the status names, shared by the API, the
worker and the client (which is why nothing here knows the server's settings)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from shared.chat import BatchParams, Message

# The one place status names are spelt: Python reads them from here, Lua from the header
# `shared/lua.py` generates from here.
BatchStatus = Literal[
    "queued", "in_progress", "completed", "failed", "cancelling", "cancelled", "expired"
]
FinalItemStatus = Literal["succeeded", "failed", "cancelled", "expired"]
ItemStatus = Literal["pending", FinalItemStatus]
BATCH_STATUSES: tuple[BatchStatus, ...] = get_args(BatchStatus)
FINAL_BATCH_STATUSES: frozenset[BatchStatus] = frozenset(
    {"completed", "failed", "cancelled", "expired"}
)
#: Not final yet, in the order a batch passes through them.
ACTIVE_BATCH_STATUSES: tuple[BatchStatus, ...] = tuple(
    s for s in BATCH_STATUSES if s not in FINAL_BATCH_STATUSES
)
#: What an item ends as (it is `pending` until then).
FINAL_ITEM_STATUSES: tuple[FinalItemStatus, ...] = get_args(FinalItemStatus)

#: Where a batch's calls go: an OpenAI-compatible endpoint, the offline model, or another
#: LangChain chat model's provider (picked by a `"<provider>:<model>"` model name).
Provider = Literal["openai", "offline", "anthropic", "google_genai", "ollama"]
#: The service's default provider (`PROMPTBATCH_PROVIDER`).
DefaultProvider = Literal["openai", "offline"]
#: The providers a model name may name as its prefix (`"anthropic:claude-sonnet-4-5"`).
MODEL_PROVIDERS: tuple[Provider, ...] = ("openai", "anthropic", "google_genai", "ollama")
#: How a batch runs: its calls made by the workers, or handed to the provider's Batch API.
Mode = Literal["direct", "provider_batch"]
#: What a batch's items are: chat completions (the default), or texts to embed.
Endpoint = Literal["/v1/chat/completions", "/v1/embeddings"]
CHAT: Endpoint = "/v1/chat/completions"
EMBEDDINGS: Endpoint = "/v1/embeddings"

MAX_CUSTOM_ID = 256
CustomId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_CUSTOM_ID)]


class _Strict(BaseModel):
    """Unknown fields are an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid")


class PromptItem(_Strict):
    """An item: a `prompt` (one user message) or OpenAI `messages`, with optional `params` that
    override the batch's. Exactly one of `prompt` and `messages` (checked when the API plans the
    batch, so that 50,000 items validate in pydantic-core alone)."""

    custom_id: CustomId | None = None
    prompt: str | None = None
    messages: list[Message] | None = Field(default=None, min_length=1)
    #: The text to embed, in an `/v1/embeddings` batch (in place of `prompt`).
    input: str | None = None
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


def _template_of_text(value: object) -> object:
    """A template given as a plain string is one human message (as the Python client takes
    it)."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("template must not be empty")
        return {"messages": [["human", value]]}
    if not isinstance(value, dict | PromptTemplate):
        raise ValueError(
            'template must be a string (one human message) or {"messages": [[role, text], ...]}'
        )
    return value


#: `template`: `{"messages": [[role, text], ...]}`, or a plain string (one human message).
TemplateField = Annotated[
    PromptTemplate,
    BeforeValidator(_template_of_text, json_schema_input_type=str | PromptTemplate),
]


#: The longest `completion_window` a batch may ask for: 7 days, in seconds.
MAX_COMPLETION_WINDOW_S = 7 * 24 * 3600


def _one_window_error(value: object, handler: ValidatorFunctionWrapHandler) -> object:
    """A value that is neither form gets one error saying what both are (not the int's)."""
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError(
            "completion_window",
            'A number of seconds (1 to {max}) or a string such as "30m" or "24h": digits and '
            "one unit (s, m, h or d)",
            {"max": MAX_COMPLETION_WINDOW_S},
        ) from None


#: A completion window: seconds, or a string of digits with one unit (`s`, `m`, `h`, `d`;
#: none means seconds), as OpenAI's `"24h"`. A string's bound is checked at planning.
CompletionWindow = Annotated[
    Annotated[StrictInt, Field(ge=1, le=MAX_COMPLETION_WINDOW_S)]
    | Annotated[str, StringConstraints(pattern=r"^[0-9]{1,9}[smhd]?$")],
    WrapValidator(_one_window_error),
]


#: A batch's metadata: up to 16 pairs, keys of up to 64 characters and values of up to 512
#: (OpenAI's bounds).
Metadata = Annotated[
    dict[
        Annotated[str, StringConstraints(max_length=64)],
        Annotated[str, StringConstraints(max_length=512)],
    ]
    | None,
    Field(max_length=16),
]


class BatchCreate(_Strict):
    #: `/v1/chat/completions` (each entry a prompt; the default) or `/v1/embeddings` (each
    #: entry a text).
    endpoint: Endpoint | None = None
    prompts: list[PromptEntry] | None = Field(default=None, min_length=1)
    #: In place of `prompts`: a template filled from each row of `inputs`.
    template: TemplateField | None = None
    inputs: list[dict[str, RowValue]] | None = Field(default=None, min_length=1)
    model: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    system: str | None = None
    params: BatchParams = Field(default_factory=BatchParams)
    max_concurrency: int | None = Field(default=None, ge=1)
    #: `direct` (calls made here) or `provider_batch` (handed to the provider's Batch API);
    #: default `PROMPTBATCH_DEFAULT_MODE`.
    mode: Mode | None = None
    #: A token budget: once the batch's usage reaches it no new call starts, and the items
    #: not started end `cancelled` (`budget_exceeded`).
    max_total_tokens: int | None = Field(default=None, ge=1)
    #: How long the batch may take, from submission (`"30m"`, `"24h"`, or seconds; 1 s to 7
    #: days). When it passes no new call starts, calls in flight finish and are kept, and the
    #: items left end `expired` (`batch_expired`); the batch ends `expired`. None: no window.
    completion_window: CompletionWindow | None = None
    metadata: Metadata = None


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
    # `expired` has a default (clients of older servers), yet every answer carries it.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    total: int
    succeeded: int
    failed: int
    cancelled: int
    #: Items still pending when the batch's `completion_window` ended (error `batch_expired`).
    expired: int = 0
    pending: int


class Pacing(BaseModel):
    """How the provider's rate limits shaped a batch: time its calls waited for their turn
    (summed over calls), and the 429s the provider answered them with (each one retried)."""

    wait_s: float = 0.0
    provider_429s: int = 0


class ProviderBatchCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class ProviderBatch(BaseModel):
    """One of the provider batches a batch handed to the provider's Batch API runs as."""

    id: str
    status: str
    request_counts: ProviderBatchCounts = Field(default_factory=ProviderBatchCounts)


class ErrorInfo(BaseModel):
    type: str
    message: str


class Batch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    status: BatchStatus
    model: str
    provider: Provider
    endpoint: Endpoint = CHAT
    mode: Mode = "direct"
    #: A batch in `provider_batch` mode: its provider batches as last polled.
    provider_batches: list[ProviderBatch] = Field(default_factory=list)
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    #: When a final batch and its results will be deleted (null until final).
    expires_at: datetime | None = None
    request_counts: RequestCounts
    usage: Usage
    pacing: Pacing = Field(default_factory=Pacing)
    max_total_tokens: int | None = None
    #: The completion window asked for, as `<n><unit>` (`"24h"`; seconds given as a number
    #: read `"3600s"`), or null for none.
    completion_window: str | None = None
    #: When the completion window ends: no new call starts after it (null without a window).
    deadline_at: datetime | None = None
    #: When the batch ended `expired` (null unless it did).
    expired_at: datetime | None = None
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
    #: An `/v1/embeddings` item's vector (in place of `output`); left out of chat results.
    embedding: list[float] | None = Field(default=None, exclude_if=lambda v: v is None)
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
