"""OpenAI Batch output files: one result -> one line, as OpenAI's Batch API writes it (a chat
completion, an embedding, the provider's refusal, or an error)."""

from __future__ import annotations

import base64
import struct
from typing import Any, Literal

from pydantic import BaseModel

from shared.schemas import Batch, ItemResult, Usage


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str = "stop"


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails

    @classmethod
    def of(cls, usage: Usage | None) -> CompletionUsage:
        usage = usage or Usage()
        return cls(
            prompt_tokens=usage.input_tokens,
            completion_tokens=usage.output_tokens,
            total_tokens=usage.total_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
            completion_tokens_details=CompletionTokensDetails(
                reasoning_tokens=usage.reasoning_tokens
            ),
        )


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage


class ProviderError(BaseModel):
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None


class ErrorAnswer(BaseModel):
    """The body of a provider's 4xx answer."""

    error: ProviderError


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int = 0
    #: The vector, or base64 of its little-endian float32s (`encoding_format` base64).
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    """The body of an `/v1/embeddings` answer (one input)."""

    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class OutputResponse(BaseModel):
    status_code: int
    request_id: str
    body: ChatCompletion | EmbeddingList | ErrorAnswer


class OutputError(BaseModel):
    code: str
    message: str


class OutputLine(BaseModel):
    """One line of an OpenAI Batch output file: a response, or an error, never both."""

    id: str
    custom_id: str
    response: OutputResponse | None
    error: OutputError | None


def output_line(
    item: ItemResult, batch: Batch, encoding_format: str | None = None
) -> OutputLine | None:
    """The item as OpenAI writes it in a batch output file; None while it is still pending
    (an OpenAI output file holds finished requests only). A failed item is an error line,
    except where the provider answered: its 4xx refusal is the response, with its status, and
    a reply that is not the JSON asked for is written as it came (promptbatch's own results
    mark it `invalid_output`), as OpenAI writes both."""
    if item.status == "pending":
        return None
    line_id = f"batch_req_{batch.id.removeprefix('batch_')}_{item.index}"
    request_id = f"req_{batch.id.removeprefix('batch_')}_{item.index}"
    status = _PROVIDER_STATUS.get(item.error.type) if item.error is not None else None
    if item.status == "failed" and item.error is not None and status is not None:
        refused = ErrorAnswer(error=ProviderError(message=item.error.message, code=item.error.type))
        response = OutputResponse(status_code=status, request_id=request_id, body=refused)
        return OutputLine(id=line_id, custom_id=item.custom_id, response=response, error=None)
    if item.status != "succeeded" and not _answered(item):
        code = item.error.type if item.error else f"batch_{item.status}"
        message = item.error.message if item.error else f"The request was {item.status}."
        return OutputLine(
            id=line_id, custom_id=item.custom_id, response=None,
            error=OutputError(code=code, message=message),
        )  # fmt: skip
    if item.embedding is not None:
        vector: list[float] | str = item.embedding
        if encoding_format == "base64":
            vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        tokens = (item.usage or Usage()).input_tokens
        body = EmbeddingList(
            data=[EmbeddingData(embedding=vector)], model=batch.model,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )  # fmt: skip
        response = OutputResponse(status_code=200, request_id=request_id, body=body)
        return OutputLine(id=line_id, custom_id=item.custom_id, response=response, error=None)
    reply = AssistantMessage(content=item.output, refusal=item.refusal, tool_calls=item.tool_calls)
    completion = ChatCompletion(
        id=f"chatcmpl-{batch.id.removeprefix('batch_')}-{item.index}",
        created=int((batch.finished_at or batch.created_at).timestamp()),
        model=batch.model,
        choices=[Choice(message=reply, finish_reason=item.finish_reason or "stop")],
        usage=CompletionUsage.of(item.usage),
    )
    response = OutputResponse(status_code=200, request_id=request_id, body=completion)
    return OutputLine(id=line_id, custom_id=item.custom_id, response=response, error=None)


#: A failed item's error type when the provider refused the request with a 4xx: its status
#: (`worker/llm.py` names them). The line carries the provider's answer, as OpenAI's do.
_PROVIDER_STATUS = {
    "invalid_request": 400,
    "context_length_exceeded": 400,
    "authentication_error": 401,
    "permission_denied": 403,
    "model_not_found": 404,
    "rate_limited": 429,
}


def _answered(item: ItemResult) -> bool:
    """Whether the provider answered the item (a reply promptbatch refused as invalid_output)."""
    return item.error is not None and item.error.type == "invalid_output"
