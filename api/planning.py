"""Submission planning: a request body checked against the configured limits and made into the
batch the store writes (items resolved, a template rendered over its rows, defaults applied)."""

from __future__ import annotations

from api.items import check_params, resolve_items
from api.templates import render_rows
from shared.batches import BatchPlan
from shared.errors import InvalidRequest
from shared.schemas import MAX_COMPLETION_WINDOW_S, BatchCreate, Mode
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
    if request.system is not None and len(request.system) > settings.max_prompt_chars:
        raise InvalidRequest(
            f"system is longer than {settings.max_prompt_chars} characters.", param="system"
        )
    window = completion_window(request.completion_window)
    mode = batch_mode(request.mode, request.max_total_tokens, settings)
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
    else:
        items = resolve_items(request.prompts or [], settings)
    return BatchPlan(
        items=items,
        model=request.model or settings.default_model,
        system=system,
        params=request.params,
        max_concurrency=concurrency,
        metadata=request.metadata,
        max_total_tokens=request.max_total_tokens,
        provider=settings.resolved_provider,
        mode=mode,
        completion_window=None if window is None else window[0],
        completion_window_s=None if window is None else window[1],
    )


def batch_mode(asked: Mode | None, max_total_tokens: int | None, settings: Settings) -> Mode:
    """The batch's mode (`PROMPTBATCH_DEFAULT_MODE` unless it asks): `provider_batch` needs a
    provider with a Batch API (`openai`: any OpenAI-compatible server with `/v1/files` and
    `/v1/batches`), and no `max_total_tokens` (a provider batch cannot stop midway)."""
    mode = asked or settings.default_mode
    if mode == "direct":
        return mode
    if settings.resolved_provider != "openai":
        raise InvalidRequest(
            f"mode 'provider_batch' hands the batch to the provider's Batch API; the "
            f"'{settings.resolved_provider}' provider has none (use 'direct').",
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
