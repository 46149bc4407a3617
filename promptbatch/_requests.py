"""What the sync and async clients share: request bodies, headers, paths and checks."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict, Unpack

from shared.chat import BatchParams
from shared.schemas import (
    FINAL_BATCH_STATUSES,
    Batch,
    BatchCreate,
    Endpoint,
    PromptItem,
    PromptTemplate,
)

DEFAULT_URL = "http://127.0.0.1:8000"


def base_url(given: str | None) -> str:
    """The API's URL: the one given, else `PROMPTBATCH_URL` (as the command line reads it),
    else `DEFAULT_URL`."""
    return given or os.environ.get("PROMPTBATCH_URL") or DEFAULT_URL


NDJSON = "application/x-ndjson"
JSON_BODY = {"Content-Type": "application/json"}
#: Seconds between two reads of the batch when the server has no events stream.
POLL_S = 0.5

#: A string, a `PromptItem`, or a mapping of its fields (`prompt` or `messages`, and `params`).
Prompt = str | PromptItem | Mapping[str, Any]
#: One human message's text, `(role, text)` pairs as LangChain's `ChatPromptTemplate` takes, or
#: a `PromptTemplate`.
Template = str | Sequence[tuple[str, str]] | PromptTemplate
#: A template's row: its variables (and optionally its `custom_id`), as from `csv.DictReader`.
Row = Mapping[str, Any]


def submit_headers(idempotency_key: str | None) -> dict[str, str]:
    """A submission's headers: its JSON body, and the `Idempotency-Key` (the one given, else a
    fresh random one) that makes a repeat of it, a retry, return the batch the first made."""
    key = uuid.uuid4().hex if idempotency_key is None else idempotency_key
    return {**JSON_BODY, "Idempotency-Key": key}


def default_headers(api_key: str | None) -> dict[str, str]:
    """A client's headers; its key is the one given, else `PROMPTBATCH_API_KEY`."""
    headers = {"User-Agent": "promptbatch-client"}
    api_key = api_key or os.environ.get("PROMPTBATCH_API_KEY")
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


class BatchOptions(TypedDict, total=False):
    """What a submission may say besides its prompts (see `BatchCreate`)."""

    #: `/v1/chat/completions` (the default) or `/v1/embeddings` (each prompt a text to embed).
    endpoint: Endpoint | None
    model: str | None
    system: str | None
    params: BatchParams | Mapping[str, Any] | None
    max_concurrency: int | None
    metadata: Mapping[str, str] | None


def batch_request(
    prompts: Iterable[Prompt] | None = None,
    *,
    template: Template | None = None,
    inputs: Iterable[Row] | None = None,
    **options: Unpack[BatchOptions],
) -> BatchCreate:
    """A `BatchCreate` of prompts, or of a template and its rows, validated here so a mistake is
    reported before anything is sent."""
    given: dict[str, Any] = {name: value for name, value in options.items() if value is not None}
    if prompts is not None:
        if template is not None or inputs is not None:
            raise TypeError("give prompts, or a template with inputs, not both")
        if isinstance(prompts, str):
            raise TypeError("prompts is a list of prompts, not one string")
        given["prompts"] = [p if isinstance(p, str | PromptItem) else dict(p) for p in prompts]
    elif template is None or inputs is None:
        raise TypeError("submit needs prompts, or a template with inputs (its rows)")
    else:
        if isinstance(inputs, str | Mapping):
            raise TypeError("inputs is an iterable of rows (mappings), not one row")
        given["template"] = prompt_template(template)
        given["inputs"] = [dict(row) for row in inputs]
    return BatchCreate.model_validate(given)


def prompt_template(template: Template) -> PromptTemplate:
    """A template as the API takes it; a string is one human message."""
    if isinstance(template, PromptTemplate):
        return template
    if isinstance(template, str):
        return PromptTemplate(messages=[("human", template)])
    if isinstance(template, Sequence):
        return PromptTemplate.model_validate({"messages": list(template)})
    raise TypeError(
        "template is a string, a list of (role, text) pairs or a PromptTemplate, "
        f"not {type(template).__name__}"
    )


def body(request: BatchCreate) -> str:
    return request.model_dump_json(exclude_none=True)


def batch_path(batch_id: str, tail: str = "") -> str:
    return f"/v1/batches/{batch_id}{tail}"


def retry_params(include: Iterable[str]) -> dict[str, str]:
    """The query of a retry: `include` (`cancelled`, `expired`) comma-separated, if any."""
    if isinstance(include, str):
        include = [include]
    named = ",".join(dict.fromkeys(include))
    return {"include": named} if named else {}


def is_final(batch: Batch) -> bool:
    return batch.status in FINAL_BATCH_STATUSES
