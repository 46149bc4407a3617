"""What the sync and async clients share: request bodies, headers, paths and checks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypedDict, Unpack

from shared.chat import BatchParams
from shared.schemas import FINAL_BATCH_STATUSES, Batch, BatchCreate, PromptItem

DEFAULT_URL = "http://127.0.0.1:8000"
NDJSON = "application/x-ndjson"
JSON_BODY = {"Content-Type": "application/json"}
#: Seconds between two reads of the batch when the server has no events stream.
POLL_S = 0.5

Prompt = str | PromptItem | Mapping[str, str]


def default_headers(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": "promptbatch-client"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


class BatchOptions(TypedDict, total=False):
    """What a submission may say besides its prompts (see `BatchCreate`)."""

    model: str | None
    system: str | None
    params: BatchParams | Mapping[str, Any] | None
    max_concurrency: int | None
    metadata: Mapping[str, str] | None


def batch_request(prompts: Iterable[Prompt], **options: Unpack[BatchOptions]) -> BatchCreate:
    """A `BatchCreate`, validated here so a mistake is reported before anything is sent."""
    if isinstance(prompts, str):
        raise TypeError("prompts is a list of prompts, not one string")
    given = {name: value for name, value in options.items() if value is not None}
    items = [p if isinstance(p, str | PromptItem) else dict(p) for p in prompts]
    return BatchCreate.model_validate({"prompts": items, **given})


def body(request: BatchCreate) -> str:
    return request.model_dump_json(exclude_none=True)


def batch_path(batch_id: str, tail: str = "") -> str:
    return f"/v1/batches/{batch_id}{tail}"


def is_final(batch: Batch) -> bool:
    return batch.status in FINAL_BATCH_STATUSES
