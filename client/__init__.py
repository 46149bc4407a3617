"""The promptbatch Python client: `Client`/`AsyncClient` submit prompts and return a batch handle
to wait on (with a progress bar) and read results from, streamed; typed with the API's schemas."""

from client.aio import AsyncBatch, AsyncClient
from client.errors import APIConnectionError, APIError, PromptbatchError
from client.inputs import read_batch_file
from client.sync import Batch, Client
from shared.chat import BatchParams
from shared.openai_format import OutputLine
from shared.schemas import BatchCreate, BatchList, ItemResult, PromptItem

__all__ = [
    "APIConnectionError",
    "APIError",
    "AsyncBatch",
    "AsyncClient",
    "Batch",
    "BatchCreate",
    "BatchList",
    "BatchParams",
    "Client",
    "ItemResult",
    "OutputLine",
    "PromptItem",
    "PromptbatchError",
    "read_batch_file",
]
