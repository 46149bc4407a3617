"""Providers and the chain: the offline model, ChatOpenAI, and one prompt -> one result."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
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
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_openai import ChatOpenAI

from shared.schemas import BatchParams, ErrorInfo, Usage
from shared.settings import Provider, Settings
from shared.store import ItemOutcome

OFFLINE_PREFIX = "[offline] You asked: "


class OfflineChatModel(BaseChatModel):
    """A deterministic chat model that needs no network: it echoes the last user message.

    Reply: `[offline] You asked: <prompt>`, cut to `max_tokens` words when given. Tokens are
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
        return _offline_reply(messages, kwargs.get("max_tokens"))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        return _offline_reply(messages, kwargs.get("max_tokens"))


def _offline_reply(messages: list[BaseMessage], max_tokens: int | None) -> ChatResult:
    prompt = next((str(m.text) for m in reversed(messages) if isinstance(m, HumanMessage)), "")
    words = (OFFLINE_PREFIX + prompt).split()
    if max_tokens is not None:
        words = words[:max_tokens]
    reply = " ".join(words)
    input_tokens = max(1, sum(len(str(m.text).split()) for m in messages))
    usage = UsageMetadata(
        input_tokens=input_tokens, output_tokens=len(words), total_tokens=input_tokens + len(words)
    )
    message = AIMessage(content=reply, usage_metadata=usage)
    return ChatResult(generations=[ChatGeneration(message=message)])


def build_models(
    settings: Settings, http_client: openai.DefaultAsyncHttpxClient
) -> dict[Provider, BaseChatModel]:
    """The chat models this process can run, built once: offline always, openai if configured."""
    models: dict[Provider, BaseChatModel] = {
        "offline": OfflineChatModel(latency_s=settings.offline_latency_ms / 1000)
    }
    if settings.openai_api_key is not None or settings.openai_base_url is not None:
        api_key = settings.openai_api_key or "not-needed"  # local servers (vLLM, Ollama) take any
        models["openai"] = ChatOpenAI(
            model=settings.default_model,
            api_key=api_key,
            base_url=settings.openai_base_url,
            timeout=settings.request_timeout_s,
            max_retries=settings.max_retries,
            http_async_client=http_client,
        )
    return models


def build_chain(
    model: BaseChatModel, model_name: str, system: str | None, params: BatchParams
) -> Runnable[str, BaseMessage]:
    """Optional system prompt + the user's prompt -> the chat model, with the batch's params."""

    def messages(prompt: str) -> list[BaseMessage]:
        return to_messages(system, prompt)

    return RunnableLambda(messages) | bind_model(model, model_name, params)


def bind_model(
    model: BaseChatModel, model_name: str, params: BatchParams
) -> Runnable[list[BaseMessage], BaseMessage]:
    """The chat model with the batch's model name and sampling parameters."""
    return model.bind(model=model_name, **params.model_dump(exclude_none=True))


def to_messages(system: str | None, prompt: str) -> list[BaseMessage]:
    """The messages of one item. Built directly rather than through a prompt template, so
    braces in a user's text are never read as template variables."""
    head: list[BaseMessage] = [SystemMessage(content=system)] if system else []
    return [*head, HumanMessage(content=prompt)]


def outcome_of(result: BaseMessage | BaseException) -> ItemOutcome:
    """One item's result from what the chain returned for it."""
    if isinstance(result, BaseException):
        return ItemOutcome(status="failed", error=error_info(result))
    usage = result.usage_metadata if isinstance(result, AIMessage) else None
    return ItemOutcome(
        status="succeeded",
        output=str(result.text),
        usage=Usage.of(usage["input_tokens"], usage["output_tokens"]) if usage else None,
    )


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
