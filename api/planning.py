"""Submission planning: a request body checked against the configured limits and made into the
batch the store writes (items resolved, a template rendered over its rows, defaults applied)."""

from __future__ import annotations

from typing import Any

from api.items import check_endpoint_params, check_params, resolve_input, resolve_items
from api.templates import render_rows
from shared.batches import BatchPlan, ItemRecord
from shared.chat import PORTABLE_PARAMS, BatchParams
from shared.errors import InvalidRequest
from shared.schemas import (
    CHAT,
    EMBEDDINGS,
    MAX_COMPLETION_WINDOW_S,
    MODEL_PROVIDERS,
    BatchCreate,
    Endpoint,
    Mode,
    Provider,
)
from shared.settings import Settings

#: Seconds in each unit a `completion_window` string may end with.
WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 24 * 3600}


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
    embeddings = request.endpoint == EMBEDDINGS
    check_endpoint_params(request.params, embeddings, "params")
    if embeddings:
        _check_embeddings(request)
    if request.system is not None and len(request.system) > settings.max_prompt_chars:
        raise InvalidRequest(
            f"system is longer than {settings.max_prompt_chars} characters.", param="system"
        )
    window = completion_window(request.completion_window)
    provider, model = model_and_provider(request.model, embeddings, settings)
    endpoint = request.endpoint or CHAT
    mode = batch_mode(request.mode, request.max_total_tokens, provider, settings, endpoint)
    system = request.system
    if request.template is not None and request.inputs is not None:
        rendered = render_rows(
            request.template,
            request.inputs,
            settings.max_prompt_chars,
            settings.max_body_bytes,
            hoist=system is None,
        )
        items, system = rendered.items, system or rendered.system
    elif embeddings:
        items = resolve_items(request.prompts or [], settings, resolve_input)
    else:
        items = resolve_items(request.prompts or [], settings)
    if provider not in ("openai", "offline"):
        check_portable(request.params, items, provider)
    return BatchPlan(
        endpoint=endpoint,
        items=items,
        model=model,
        system=system,
        params=request.params,
        max_concurrency=concurrency,
        metadata=request.metadata,
        max_total_tokens=request.max_total_tokens,
        provider=provider,
        mode=mode,
        completion_window=None if window is None else window[0],
        completion_window_s=None if window is None else window[1],
    )


#: What each provider a model name can pick needs set, for the error when it is not.
_NEEDS = {
    "openai": "OPENAI_API_KEY or OPENAI_BASE_URL",
    "anthropic": "ANTHROPIC_API_KEY",
    "google_genai": "GOOGLE_API_KEY",
    "ollama": "OLLAMA_BASE_URL",
}


def model_and_provider(
    model: str | None, embeddings: bool, settings: Settings
) -> tuple[Provider, str]:
    """The provider a batch runs on and its model's name: `"<provider>:<model>"` picks one of
    `MODEL_PROVIDERS` (configured here, else a 422 naming `model`); any other name, colons
    and all (`llama3.1:8b`), is a model of the default provider."""
    default = settings.default_embedding_model if embeddings else settings.default_model
    provider = named_provider(model)
    if provider is None or model is None:
        return settings.resolved_provider, model or default
    name = model.partition(":")[2]
    if not settings.configured(provider):
        raise InvalidRequest(
            f"model {model!r} asks for the {provider} provider, which this service has not "
            f"configured (it needs {_NEEDS[provider]}).",
            param="model",
        )
    if embeddings and provider != "openai":
        raise InvalidRequest(
            f"An /v1/embeddings batch runs on openai (or the offline model); {provider} "
            "models are chat models here.",
            param="model",
        )
    return provider, name


def check_portable(params: BatchParams, items: list[ItemRecord], provider: Provider) -> None:
    """Refuse params another provider's chat model does not take (OpenAI's own: seed,
    response_format, tools...), the batch's and each item's, naming them."""
    portable_params(params.model_dump(exclude_none=True), provider, "params")
    for index, item in enumerate(items):
        if len(item) == 3:
            portable_params(item[2], provider, f"prompts[{index}].params")


def portable_params(params: dict[str, Any], provider: Provider, param: str) -> None:
    """InvalidRequest naming the first of `params` that `provider`'s chat model does not take."""
    for name in params:
        if name not in PORTABLE_PARAMS:
            raise InvalidRequest(
                f"{name} is an OpenAI param; the {provider} provider takes "
                f"{', '.join(sorted(PORTABLE_PARAMS))}.",
                param=f"{param}.{name}",
            )


def named_provider(model: str | None) -> Provider | None:
    """The provider a model name names by its prefix (`anthropic:...`), if it names one."""
    prefix, _, name = (model or "").partition(":")
    return prefix if prefix in MODEL_PROVIDERS and name else None


def batch_mode(
    asked: Mode | None,
    max_total_tokens: int | None,
    provider: Provider,
    settings: Settings,
    endpoint: Endpoint = CHAT,
) -> Mode:
    """The batch's mode (`PROMPTBATCH_DEFAULT_MODE` unless it asks): `provider_batch` needs a
    provider with a Batch API (`openai`: any OpenAI-compatible server with `/v1/files` and
    `/v1/batches`), and no `max_total_tokens` (a provider batch cannot stop midway). A batch
    of another provider runs direct unless it asks (and is refused), and an embeddings batch
    always does."""
    if endpoint == EMBEDDINGS:
        if asked == "provider_batch":
            raise InvalidRequest(
                "An /v1/embeddings batch runs in mode 'direct' (its inputs are grouped into "
                "few calls already).",
                param="mode",
            )
        return "direct"
    mode = asked or (settings.default_mode if provider == settings.resolved_provider else "direct")
    if mode == "direct":
        return mode
    if provider != "openai":
        raise InvalidRequest(
            f"mode 'provider_batch' hands the batch to the provider's Batch API; the "
            f"'{provider}' provider has none here (use 'direct').",
            param="mode",
        )
    if max_total_tokens is not None:
        raise InvalidRequest(
            "max_total_tokens cannot stop a provider batch midway: leave it out, or use "
            "mode 'direct'.",
            param="max_total_tokens",
        )
    return mode


def completion_window(value: int | str | None) -> tuple[str, int] | None:
    """A `completion_window` as `(label, seconds)`: the label `<n><unit>` without leading
    zeros (a number of seconds, or digits alone, reads `<n>s`). InvalidRequest unless it is
    1 second to 7 days."""
    if value is None:
        return None
    text = str(value)
    unit = text[-1] if text and text[-1] in WINDOW_UNITS else "s"
    digits = text[:-1] if text and text[-1] in WINDOW_UNITS else text
    if not (digits.isascii() and digits.isdigit()):
        raise InvalidRequest(
            'completion_window is a number of seconds or a string such as "30m" or "24h".',
            param="completion_window",
        )
    seconds = int(digits) * WINDOW_UNITS[unit]
    if not 1 <= seconds <= MAX_COMPLETION_WINDOW_S:
        raise InvalidRequest(
            f"completion_window is at least 1 second and at most 7 days "
            f"({MAX_COMPLETION_WINDOW_S} s); got {seconds} s.",
            param="completion_window",
        )
    return f"{int(digits)}{unit}", seconds


def _check_embeddings(request: BatchCreate) -> None:
    """What an `/v1/embeddings` batch cannot have: chat's template and system prompt."""
    for name in ("template", "system"):
        if getattr(request, name) is not None:
            raise InvalidRequest(
                f"{name} is for /v1/chat/completions batches; an embeddings batch embeds each "
                "entry of prompts as it is.",
                param=name,
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
