"""The objects of the OpenAI Files and Batch API (`/openai/v1`), field for field as OpenAI's, and
a promptbatch batch seen as one. The same batch is at `/v1/batches/{id}` and at
`/openai/v1/batches/{id}`: only the view differs."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.files import FILE_PREFIX, StoredFile
from shared.output_lines import CompletionTokensDetails, PromptTokensDetails
from shared.schemas import Batch, BatchStatus, Metadata, Mode

CHAT_COMPLETIONS = "/v1/chat/completions"

#: The suffixes of a batch's output and error files' ids: `file-<batch id>-output`. They are
#: made from the batch's results when read, never stored.
OUTPUT, ERRORS = "output", "errors"


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None

    @classmethod
    def of(cls, stored: StoredFile) -> FileObject:
        return cls(
            id=stored.id, bytes=stored.bytes, created_at=stored.created_at,
            filename=stored.filename, purpose=stored.purpose, expires_at=stored.expires_at,
        )  # fmt: skip


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class BatchCreateRequest(BaseModel):
    """`POST /openai/v1/batches`, as the OpenAI SDK sends it."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: str = Field(min_length=1, max_length=64)
    completion_window: str = Field(min_length=1, max_length=16)
    metadata: Metadata = None
    #: Taken, and not applied: a batch's results live `PROMPTBATCH_RESULT_TTL_S` after it ends.
    output_expires_after: dict[str, int | str] | None = None
    #: promptbatch's own (an extra body field): `direct` or `provider_batch`.
    mode: Mode | None = None


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(BaseModel):
    """An error under `/openai/v1`, as OpenAI's."""

    error: OpenAIErrorDetail


class BatchError(BaseModel):
    code: str
    line: int | None = None
    message: str
    param: str | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchRequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchUsage(BaseModel):
    input_tokens: int
    input_tokens_details: PromptTokensDetails
    output_tokens: int
    output_tokens_details: CompletionTokensDetails
    total_tokens: int


OpenAIStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
    "cancelled",
]  # fmt: skip

#: A promptbatch status as OpenAI's: a queued batch is validated already, and waits its turn.
_STATUSES: dict[BatchStatus, OpenAIStatus] = {
    "queued": "in_progress",
    "in_progress": "in_progress",
    "cancelling": "cancelling",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
    "expired": "expired",
}


class OpenAIBatch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str | None
    completion_window: str
    status: OpenAIStatus
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: BatchRequestCounts
    metadata: dict[str, str] | None
    model: str | None
    usage: BatchUsage


class OpenAIBatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIBatch]
    first_id: str | None
    last_id: str | None
    has_more: bool


def result_file_id(batch_id: str, kind: str) -> str:
    """The id of a batch's output (`OUTPUT`) or error (`ERRORS`) file."""
    return f"{FILE_PREFIX}{batch_id}-{kind}"


def result_file(file_id: str) -> tuple[str, str] | None:
    """(batch id, `OUTPUT` or `ERRORS`) of a result file's id; None for any other id."""
    body = file_id.removeprefix(FILE_PREFIX)
    batch_id, _, kind = body.rpartition("-")
    if body == file_id or kind not in (OUTPUT, ERRORS) or not batch_id.startswith("batch_"):
        return None
    return batch_id, kind


def openai_batch(
    batch: Batch, input_file_id: str | None, endpoint: str | None, cancelling_at: int | None
) -> OpenAIBatch:
    """The batch as OpenAI's Batch object (`cancelling_at`: when a cancel was asked for)."""
    counts = batch.request_counts
    final = batch.status in ("completed", "failed", "cancelled", "expired")
    ended = _seconds(batch.finished_at)
    # OpenAI's `failed` is every request that ended without a reply: failed, cancelled, expired.
    unanswered = counts.failed + counts.cancelled + counts.expired
    errors = None
    if batch.error is not None:
        errors = BatchErrors(data=[BatchError(code=batch.error.type, message=batch.error.message)])
    return OpenAIBatch(
        id=batch.id,
        endpoint=endpoint or batch.endpoint,
        errors=errors,
        input_file_id=input_file_id,
        completion_window=batch.completion_window or "24h",
        status=_STATUSES[batch.status],
        output_file_id=result_file_id(batch.id, OUTPUT)
        if final and counts.succeeded + counts.failed
        else None,
        error_file_id=result_file_id(batch.id, ERRORS) if final and unanswered else None,
        created_at=int(batch.created_at.timestamp()),
        in_progress_at=_seconds(batch.started_at or batch.created_at),
        expires_at=_seconds(batch.deadline_at),
        finalizing_at=ended if batch.status == "completed" else None,
        completed_at=ended if batch.status == "completed" else None,
        failed_at=ended if batch.status == "failed" else None,
        expired_at=_seconds(batch.expired_at),
        cancelling_at=cancelling_at,
        cancelled_at=ended if batch.status == "cancelled" else None,
        request_counts=BatchRequestCounts(
            total=counts.total, completed=counts.succeeded, failed=unanswered
        ),
        metadata=batch.metadata,
        model=batch.model,
        usage=BatchUsage(
            input_tokens=batch.usage.input_tokens,
            input_tokens_details=PromptTokensDetails(cached_tokens=batch.usage.cached_tokens),
            output_tokens=batch.usage.output_tokens,
            output_tokens_details=CompletionTokensDetails(
                reasoning_tokens=batch.usage.reasoning_tokens
            ),
            total_tokens=batch.usage.total_tokens,
        ),
    )


def _seconds(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())
