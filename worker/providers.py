"""Chat models of the other LangChain providers a batch can name (`"anthropic:<model>"`,
`"google_genai:<model>"`, `"ollama:<model>"`), built through LangChain's `init_chat_model`
from each provider's own settings, one per model name and kept for the process's next
batches of it."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from importlib.util import find_spec
from typing import Any

from langchain.chat_models import init_chat_model
from langchain_core.language_models import BaseChatModel

from shared.schemas import Provider
from shared.settings import Settings

#: Providers whose models are built here (openai and offline are `worker/llm.py`'s).
OTHER_PROVIDERS: tuple[Provider, ...] = ("anthropic", "google_genai", "ollama")
#: What each one calls the output-token limit (promptbatch's `max_completion_tokens`).
_OUTPUT_LIMIT = {
    "anthropic": "max_tokens",
    "google_genai": "max_output_tokens",
    "ollama": "num_predict",
}
#: The LangChain package of each (an extra: `promptbatch[anthropic]` and so on).
_PACKAGES = {"anthropic": "langchain_anthropic", "google_genai": "langchain_google_genai",
             "ollama": "langchain_ollama"}  # fmt: skip
#: Most models of these providers a process keeps built at once.
MOST_MODELS = 32


def provider_settings(provider: Provider, settings: Settings) -> dict[str, Any]:
    """`init_chat_model` keywords for `provider`, from its own variables."""
    common: dict[str, Any] = {"max_retries": settings.max_retries}
    if provider == "anthropic":
        key = settings.anthropic_api_key
        found = {"api_key": key.get_secret_value() if key is not None else None,
                 "timeout": settings.request_timeout_s, **common}  # fmt: skip
        if settings.anthropic_base_url is not None:
            found["base_url"] = settings.anthropic_base_url
        return found
    if provider == "google_genai":
        key = settings.google_api_key
        return {"google_api_key": key.get_secret_value() if key is not None else None,
                "timeout": settings.request_timeout_s, **common}  # fmt: skip
    if provider == "ollama":  # its client waits for ever unless told
        return {
            "base_url": settings.ollama_base_url,
            "client_kwargs": {"timeout": settings.request_timeout_s},
        }
    raise ValueError(f"not a provider built here: {provider}")


def provider_call_params(provider: Provider, params: dict[str, Any]) -> dict[str, Any]:
    """A call's params as `provider`'s LangChain model takes them: the output limit under its
    own name. ChatOllama takes them all as one `options` object (which replaces its own
    defaults), not as keywords."""
    renamed = dict(params)
    if "max_completion_tokens" in renamed:
        renamed[_OUTPUT_LIMIT[provider]] = renamed.pop("max_completion_tokens")
    if provider == "ollama" and renamed:
        return {"options": renamed}
    return renamed


#: A hook on the responses of a provider's HTTP client (the worker's: metrics, pacing).
ResponseHook = Callable[[Any], Awaitable[None]]


class ProviderModels:
    """The chat models of the other providers this process has built, by (provider, model).
    An Anthropic model's HTTP client gets `on_response` (as the OpenAI one has it), so that
    pacing learns its `anthropic-ratelimit-*` headers and its 429s are counted."""

    def __init__(self, settings: Settings, on_response: ResponseHook | None = None) -> None:
        self._settings = settings
        self._on_response = on_response
        self._built: OrderedDict[tuple[Provider, str], BaseChatModel] = OrderedDict()

    def offered(self) -> list[Provider]:
        """The providers this process is configured for and has the package of."""
        return [p for p in OTHER_PROVIDERS if self.runs(p)]

    def runs(self, provider: Provider) -> bool:
        """Whether this process can run `provider`'s models: configured, package installed
        (a worker without it hands the batch's chunks to one that has it)."""
        return self._settings.configured(provider) and find_spec(_PACKAGES[provider]) is not None

    def get(self, provider: Provider, model: str) -> BaseChatModel:
        key = (provider, model)
        found = self._built.get(key)
        if found is None:
            config = provider_settings(provider, self._settings)
            found = init_chat_model(model, model_provider=provider, **config)
            if provider == "anthropic" and self._on_response is not None:
                _hook(found, self._on_response)
            self._built[key] = found
            if len(self._built) > MOST_MODELS:
                self._built.popitem(last=False)
        self._built.move_to_end(key)
        return found


def _hook(model: BaseChatModel, on_response: ResponseHook) -> None:
    """Add `on_response` to the httpx client under a ChatAnthropic (shared by its models of the
    same server, so added once)."""
    hooks = model._async_client._client.event_hooks["response"]  # type: ignore[attr-defined]
    if on_response not in hooks:
        hooks.append(on_response)
