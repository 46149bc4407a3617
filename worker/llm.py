"""Providers and the chain: the offline model, ChatOpenAI, and one prompt -> one result."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import openai
import orjson
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.exceptions import (
    ContextOverflowError,
    ModelAPIError,
    ModelAuthenticationError,
    ModelConnectionError,
    ModelError,
    ModelInvalidRequestError,
    ModelNotFoundError,
    ModelPermissionDeniedError,
    ModelRateLimitError,
    ModelTimeoutError,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    convert_to_messages,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_openai import ChatOpenAI

from shared.chat import JSON_FORMATS, BatchParams, has_system
from shared.json_schemas import CHECK_LIMIT_S, CheckTimedOut, schema_error
from shared.model import PROVIDER_AUTH
from shared.results import ItemOutcome
from shared.schemas import ErrorInfo, Provider, Usage
from shared.settings import Settings
from shared.store import BatchStore
from worker.providers import OTHER_PROVIDERS, provider_call_params

log = logging.getLogger("promptbatch.worker")

OFFLINE_PREFIX = "[offline] You asked: "


class OfflineChatModel(BaseChatModel):
    """A deterministic chat model that needs no network: it echoes the last user message.

    Reply: `[offline] You asked: <prompt>`, cut to `max_tokens` words when given (then
    `finish_reason` is `length`); asked for JSON, `{"you_asked": "<prompt>"}`, whole. Tokens are
    counted as whitespace-separated words, so usage is real and predictable.
    """

    latency_s: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "promptbatch-offline"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return _offline_reply(messages, **kwargs)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return _offline_reply(messages, **kwargs)


def _offline_reply(messages: list[BaseMessage], **params: Any) -> ChatResult:
    prompt = next((str(m.text) for m in reversed(messages) if isinstance(m, HumanMessage)), "")
    words = (OFFLINE_PREFIX + prompt).split()
    limit = params.get("max_completion_tokens") or params.get("max_tokens")
    finish_reason = "stop"
    if (params.get("response_format") or {}).get("type") in JSON_FORMATS:
        reply = json.dumps({"you_asked": prompt}, ensure_ascii=False)  # whole, never cut
    else:
        if limit is not None and len(words) > limit:
            words, finish_reason = words[:limit], "length"
        reply = " ".join(words)
    input_tokens = max(1, sum(len(str(m.text).split()) for m in messages))
    usage = UsageMetadata(
        input_tokens=input_tokens, output_tokens=len(words), total_tokens=input_tokens + len(words)
    )
    message = AIMessage(
        content=reply, usage_metadata=usage, response_metadata={"finish_reason": finish_reason}
    )
    return ChatResult(generations=[ChatGeneration(message=message)])


def build_models(
    settings: Settings, http_client: openai.DefaultAioHttpClient
) -> dict[Provider, BaseChatModel]:
    """The chat models this process can run, built once: offline always, openai if configured."""
    models: dict[Provider, BaseChatModel] = {
        "offline": OfflineChatModel(latency_s=settings.offline_latency_ms / 1000)
    }
    if settings.configured("openai"):
        api_key = settings.openai_api_key or "not-needed"  # local servers (vLLM, Ollama) take any
        models["openai"] = ChatOpenAI(
            model=settings.default_model,
            api_key=api_key,
            base_url=settings.openai_base_url,
            timeout=settings.request_timeout_s,
            max_retries=settings.max_retries,
            http_async_client=http_client,
        )
    for model in models.values():
        pin_signature(type(model))
    return models


def build_batch_api(settings: Settings) -> openai.AsyncOpenAI | None:
    """The client of the provider's Files and Batch API (`provider_batch` mode), if the
    openai provider is configured."""
    if not settings.configured("openai"):
        return None
    key = settings.openai_api_key
    return openai.AsyncOpenAI(
        api_key=key.get_secret_value() if key is not None else "not-needed",
        base_url=settings.openai_base_url,
        timeout=settings.request_timeout_s,
        max_retries=settings.max_retries,
    )


def pin_signature(model_type: type[BaseChatModel]) -> None:
    """LangChain inspects a chat model's `_agenerate` on every call (to see whether it takes a
    `run_manager`): `inspect.signature` of it, about 10% of the offline model's CPU per item.
    `inspect.signature` returns a function's `__signature__` when it has one: it is worked
    out here, once per model class, from the function itself."""
    generate = model_type._agenerate
    if "__signature__" not in vars(generate):
        generate.__signature__ = inspect.signature(generate)  # type: ignore[attr-defined]


def batch_kwargs(
    model: BaseChatModel, model_name: str, params: BatchParams, provider: Provider = "openai"
) -> dict[str, Any]:
    """What every call of a batch passes the chat model: the model name and the batch's params
    (an item's own go over them, `call_kwargs`). Passed to `ainvoke` as keywords rather than
    bound (`model.bind`): a binding costs LangChain a config merge per call. Another
    provider's model was built for its model name (`worker/providers.py`)."""
    kwargs = call_kwargs(model, params.provider_kwargs(), provider)
    return kwargs if provider in OTHER_PROVIDERS else {"model": model_name, **kwargs}


def call_kwargs(
    model: BaseChatModel, params: dict[str, Any], provider: Provider = "openai"
) -> dict[str, Any]:
    """Params as the chat model takes them. ChatOpenAI gets `response_format` in the request
    body as written (`extra_body`): given as a keyword, ChatOpenAI sends the request through
    the SDK's `parse` helper, which refuses non-strict tools beside a JSON format (a request
    OpenAI accepts) and parses nothing a dict format needs. Another provider's model gets
    its own name for the output limit."""
    if provider in OTHER_PROVIDERS:
        return provider_call_params(provider, params)
    if "response_format" not in params or not isinstance(model, ChatOpenAI):
        return params
    kwargs = dict(params)
    kwargs["extra_body"] = {"response_format": kwargs.pop("response_format")}
    return kwargs


def to_messages(system: str | None, prompt: str | list[dict[str, Any]]) -> list[BaseMessage]:
    """The messages of one item: its prompt as the user's message, or its own OpenAI messages,
    led by the batch's system prompt unless the item has a system message of its own. Built
    directly rather than through a prompt template, so braces in a user's text are never read
    as template variables."""
    if isinstance(prompt, str):
        head: list[BaseMessage] = [SystemMessage(content=system)] if system else []
        return [*head, HumanMessage(content=prompt)]
    # An assistant turn that only calls tools may leave content out; LangChain needs the key.
    messages = convert_to_messages(
        [m if "content" in m else {**m, "content": None} for m in prompt]
    )
    if system and not has_system(prompt):
        return [SystemMessage(content=system), *messages]
    return messages


def item_chars(prompt: str | list[dict[str, Any]], system: str | None) -> int:
    """The characters of an item's text (for estimating its tokens before the call)."""
    if isinstance(prompt, str):
        return len(prompt) + len(system or "")
    total = 0 if has_system(prompt) else len(system or "")
    for message in prompt:
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(str(part.get("text", ""))) for part in content)
    return total


def rate_limited(exc: BaseException) -> bool:
    """Whether a call failed only because the provider said "later" (429, or Anthropic's 529
    overloaded). A 429 for an exhausted quota or billing limit is not "later": waiting would
    not help."""
    status = getattr(exc, "status_code", None)
    if status == OVERLOADED:
        return True  # Anthropic's "overloaded": later, as a 429
    if not (isinstance(exc, ModelRateLimitError) or status == 429):
        return False
    body = getattr(exc, "body", None)
    error = body.get("error", body) if isinstance(body, dict) else None
    code = error.get("code") or error.get("type") if isinstance(error, dict) else None
    return code not in _NOT_LATER


#: Anthropic's status for "overloaded, try later".
OVERLOADED = 529

#: 429 codes that mean "no", not "later" (OpenAI's for a key out of credit or quota).
_NOT_LATER = frozenset({"insufficient_quota", "billing_hard_limit_reached"})


#: Where replies are checked against their JSON Schemas: off the event loop, since a check may
#: take up to `CHECK_LIMIT_S`. Eight threads share the GIL in turns, so a reply that checks in
#: a millisecond is checked within milliseconds even while slow ones hold other threads (and a
#: schema that ran out of time once gets a tenth of it from then on).
_CHECKS = ThreadPoolExecutor(8, thread_name_prefix="reply-check")


async def checked_outcome(
    result: BaseMessage | BaseException, response_format: dict[str, Any] | None
) -> ItemOutcome:
    """`outcome_of`, in a thread of `_CHECKS` when the reply is to match a JSON Schema."""
    if isinstance(result, BaseException) or (response_format or {}).get("type") != "json_schema":
        return outcome_of(result, response_format)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_CHECKS, outcome_of, result, response_format)


def outcome_of(
    result: BaseMessage | BaseException, response_format: dict[str, Any] | None = None
) -> ItemOutcome:
    """One item's result from what the chat model returned for it: the reply with what the
    provider said of it, parsed (and checked against the schema) when it asked for JSON."""
    if isinstance(result, BaseException):
        return ItemOutcome(status="failed", error=error_info(result))
    tool_calls = _tool_calls(result) if isinstance(result, AIMessage) else None
    refusal = result.additional_kwargs.get("refusal")
    text = str(result.text)
    outcome = ItemOutcome(
        status="succeeded",
        output=text if text or not (tool_calls or refusal) else None,
        usage=_usage(result.usage_metadata) if isinstance(result, AIMessage) else None,
        finish_reason=finish_reason(result.response_metadata),
        tool_calls=tool_calls,
        refusal=refusal if isinstance(refusal, str) else None,
    )
    kind = (response_format or {}).get("type")
    if kind not in JSON_FORMATS or outcome.output is None:
        return outcome
    return _parsed(outcome, text, response_format if kind == "json_schema" else None)


#: Other providers' reasons a reply ended, as OpenAI names them (Anthropic's `stop_reason`,
#: Gemini's `finish_reason`, Ollama's `done_reason`).
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
}


def finish_reason(metadata: dict[str, Any]) -> str | None:
    """Why the reply ended, in OpenAI's words (`stop`, `length`, `tool_calls`,
    `content_filter`), whichever provider said it."""
    said = (
        metadata.get("finish_reason") or metadata.get("stop_reason") or metadata.get("done_reason")
    )
    if not isinstance(said, str):
        return None
    return _FINISH_REASONS.get(said, said)


def _parsed(outcome: ItemOutcome, text: str, json_schema: dict[str, Any] | None) -> ItemOutcome:
    """The outcome with its reply as JSON, or failed as `invalid_output` (its text kept)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        why = _STOPPED_EARLY.get(outcome.finish_reason or "", f"({exc})")
        return _invalid(outcome, f"The reply is not valid JSON {why}.")
    schema = (json_schema or {}).get("json_schema", {}).get("schema")
    if isinstance(schema, dict):
        try:
            problem = schema_error(schema, value)
        except CheckTimedOut:
            why = f"The reply could not be checked against the schema within {CHECK_LIMIT_S:g} s."
            return _invalid(outcome, why)
        if problem is not None:
            return _invalid(outcome, f"The reply does not match the schema: {problem}")
    return replace(outcome, output_json=value)


#: Why a reply can be incomplete JSON, by its finish_reason.
_STOPPED_EARLY = {
    "length": "(it was cut at max_tokens: finish_reason length)",
    "content_filter": "(the provider's content filter stopped it: finish_reason content_filter)",
}


def _invalid(outcome: ItemOutcome, message: str) -> ItemOutcome:
    return replace(
        outcome, status="failed", error=ErrorInfo(type="invalid_output", message=message)
    )


def _usage(usage: UsageMetadata | None) -> Usage | None:
    if usage is None:
        return None
    cached = (usage.get("input_token_details") or {}).get("cache_read") or 0
    reasoning = (usage.get("output_token_details") or {}).get("reasoning") or 0
    return Usage.of(usage["input_tokens"], usage["output_tokens"], cached, reasoning)


def _tool_calls(message: AIMessage) -> list[dict[str, Any]] | None:
    """The reply's tool calls in OpenAI's format (arguments as JSON text)."""
    calls: list[dict[str, Any]] = [
        _openai_call(call["id"], call["name"], json.dumps(call["args"], ensure_ascii=False))
        for call in message.tool_calls
    ]
    calls += [
        _openai_call(call["id"], call["name"], call["args"]) for call in message.invalid_tool_calls
    ]
    return calls or None


def _openai_call(call_id: str | None, name: str | None, arguments: str | None) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


_ERROR_TYPES: tuple[tuple[type[ModelError], str], ...] = (
    (ContextOverflowError, "context_length_exceeded"),
    (ModelInvalidRequestError, "invalid_request"),
    (ModelAuthenticationError, "authentication_error"),
    (ModelPermissionDeniedError, "permission_denied"),
    (ModelNotFoundError, "model_not_found"),
    (ModelRateLimitError, "rate_limited"),
    (ModelTimeoutError, "timeout"),
    (ModelConnectionError, "connection_error"),
    (ModelAPIError, "provider_error"),
)


_STATUS_TYPES = {
    400: "invalid_request",
    401: "authentication_error",
    403: "permission_denied",
    404: "model_not_found",
    408: "timeout",
    429: "rate_limited",
}


def refusal_error(status: object, body: dict[str, Any]) -> ErrorInfo:
    """A request the provider answered with an error status in a batch's error file: named as
    `error_info` names a call's, with the provider's own message."""
    error = body.get("error")
    said = error.get("message") if isinstance(error, dict) else None
    kind = _STATUS_TYPES.get(status, "provider_error") if isinstance(status, int) else None
    message = said if isinstance(said, str) and said else f"The provider answered {status}."
    return ErrorInfo(type=kind or "provider_error", message=message)


def error_info(exc: BaseException) -> ErrorInfo:
    """A failed item's error: the provider's own message when it gave one."""
    kind = next((name for cls, name in _ERROR_TYPES if isinstance(exc, cls)), None)
    status = getattr(exc, "status_code", None)
    if kind is None and isinstance(status, int):
        kind = _STATUS_TYPES.get(status, "provider_error")
    if kind is None:
        kind = "provider_error" if isinstance(exc, ModelError) else "internal_error"
    body = getattr(exc, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str) or not message:
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return ErrorInfo(type=kind, message=message)


#: Error types of a provider refusing the key itself: every other call would be refused alike.
REFUSED_KEY = frozenset({"authentication_error", "permission_denied"})


async def halt_refused(store: BatchStore, batch_id: str, error: ErrorInfo) -> None:
    """Halt a batch whose provider refused its key (`BatchStore.halt`): it ends failed
    `provider_auth` with the provider's message, rather than paying a refused call per item."""
    message = (
        f"The provider refused this batch's calls ({error.type}), so no more were sent. "
        f"It said: {error.message}"
    )
    if await store.halt(batch_id, ErrorInfo(type=PROVIDER_AUTH, message=message)):
        log.error("batch %s: halted, the provider refused its calls (%s)", batch_id, error.type)
