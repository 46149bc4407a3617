"""The promptbatch Python client: `Client`/`AsyncClient` submit prompts (or a template and its
rows) and return a batch handle to wait on and read results from, streamed, as flat rows too."""

from promptbatch.aio import AsyncBatch, AsyncClient
from promptbatch.errors import APIConnectionError, APIError, PromptbatchError
from promptbatch.inputs import read_batch_file, read_rows
from promptbatch.sync import Batch, Client
from shared.chat import BatchParams, Message
from shared.output_lines import OutputLine
from shared.schemas import BatchCreate, BatchList, ItemResult, PromptItem, PromptTemplate

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
    "Message",
    "OutputLine",
    "PromptItem",
    "PromptTemplate",
    "PromptbatchError",
    "read_batch_file",
    "read_rows",
]
