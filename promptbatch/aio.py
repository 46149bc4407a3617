"""The asyncio client: `await AsyncClient(url).submit(prompts)` returns an `AsyncBatch`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import nullcontext
from types import TracebackType
from typing import Any, Unpack

import httpx
from rich.console import Console

from promptbatch import _requests as req
from promptbatch import _retry
from promptbatch.display import BatchProgress
from promptbatch.errors import check, reaching
from promptbatch.events import awatch
from promptbatch.rows import check_columns, flat_row, input_columns, result_columns
from shared import schemas
from shared.output_lines import OutputLine, output_line
from shared.schemas import BatchCreate, BatchList, ItemResult, RowValue


class AsyncClient:
    """`Client` for asyncio. Close it when done (or use `async with AsyncClient(...) as pb:`).
    Submits and reads are retried as `Client`'s are (`max_retries`, `retry_backoff_s`)."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        http: httpx.AsyncClient | None = None,
        max_retries: int = _retry.MAX_RETRIES,
        retry_backoff_s: float = _retry.BACKOFF_S,
    ) -> None:
        _retry.check_options(max_retries, retry_backoff_s)
        self.http = http or httpx.AsyncClient(
            base_url=req.base_url(base_url), headers=req.default_headers(api_key), timeout=timeout
        )
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def submit(
        self,
        prompts: Iterable[req.Prompt] | None = None,
        *,
        template: req.Template | None = None,
        inputs: Iterable[req.Row] | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[req.BatchOptions],
    ) -> AsyncBatch:
        """Submit one batch: `prompts` (strings, or `{"custom_id", "prompt" or "messages",
        "params"}`), or a `template` (a human message's text, `(role, text)` pairs or a
        `PromptTemplate`) filled from each row of `inputs`. `options` are `endpoint`, `model`,
        `system`, `params`, `max_concurrency` and `metadata`. `idempotency_key` (default: a
        fresh random one) is sent with every attempt: the same key and body give the same
        batch."""
        request = req.batch_request(prompts, template=template, inputs=inputs, **options)
        return await self.create(request, idempotency_key=idempotency_key)

    async def create(
        self, request: BatchCreate, *, idempotency_key: str | None = None
    ) -> AsyncBatch:
        """Submit a batch built as the API's own `BatchCreate` body (see `submit`)."""
        headers = req.submit_headers(idempotency_key)
        response = await self._send(
            "POST", "/v1/batches", retry=True, content=req.body(request), headers=headers
        )
        info = schemas.Batch.model_validate_json(response.content)
        return AsyncBatch(self, info, inputs=request.inputs)

    async def get(self, batch_id: str) -> AsyncBatch:
        """The batch with this id, as it is now."""
        return AsyncBatch(self, await self._read(batch_id))

    async def retry(self, batch_id: str, *, include: Iterable[str] = ()) -> AsyncBatch:
        """Run a final batch's failed items again in place (see `AsyncBatch.retry`); returns its
        handle, running again."""
        path = req.batch_path(batch_id, "/retry")
        response = await self._send("POST", path, params=req.retry_params(include))
        return AsyncBatch(self, schemas.Batch.model_validate_json(response.content))

    async def list(self, *, limit: int = 20, after: str | None = None) -> BatchList:
        """Batches, newest first; pass `next_after` as `after` for the next page."""
        query: dict[str, str | int] = {"limit": limit} | ({"after": after} if after else {})
        response = await self._send("GET", "/v1/batches", retry=True, params=query)
        return BatchList.model_validate_json(response.content)

    async def _send(
        self, method: str, path: str, *, retry: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """One request, checked; with `retry`, sent again as `Client._send` does."""
        if not retry:
            return await self._attempt(method, path, **kwargs)
        retrying = _retry.async_retrying(self.max_retries, self.retry_backoff_s)
        response: httpx.Response = await retrying(self._attempt, method, path, **kwargs)
        return response

    async def _attempt(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with reaching(self.http.base_url):
            return check(await self.http.request(method, path, **kwargs))

    async def _read(self, batch_id: str) -> schemas.Batch:
        response = await self._send("GET", req.batch_path(batch_id), retry=True)
        return schemas.Batch.model_validate_json(response.content)


class AsyncBatch:
    """A submitted batch. `info` is its last snapshot (status, counts, usage)."""

    def __init__(
        self,
        client: AsyncClient,
        info: schemas.Batch,
        *,
        inputs: Sequence[Mapping[str, RowValue]] | None = None,
    ) -> None:
        self.client = client
        self.info = info
        #: The rows of a template batch, as submitted (None for a handle from `get`).
        self.inputs = inputs

    def __repr__(self) -> str:
        return f"<AsyncBatch {self.id} {self.info.status}>"

    @property
    def id(self) -> str:
        return self.info.id

    async def refresh(self) -> schemas.Batch:
        self.info = await self.client._read(self.id)
        return self.info

    async def wait(
        self, *, progress: bool = False, console: Console | None = None, poll_s: float = req.POLL_S
    ) -> AsyncBatch:
        """Wait until the batch is final, with a live progress bar when `progress`."""
        bar = BatchProgress(console) if progress else None
        with reaching(self.client.http.base_url), bar or nullcontext():
            async for snapshot in awatch(self.client.http, self.id, poll_s):
                self.info = snapshot
                if bar is not None:
                    bar.update(snapshot)
        return self

    async def results(self) -> AsyncIterator[ItemResult]:
        """Every item in input order, streamed: one line read at a time, never all at once."""
        http, path = self.client.http, req.batch_path(self.id, "/results")
        headers = {"Accept": req.NDJSON}
        with reaching(http.base_url):
            async with http.stream("GET", path, headers=headers) as response:
                if response.is_error:
                    await response.aread()
                    check(response)
                async for line in response.aiter_lines():
                    if line:
                        yield ItemResult.model_validate_json(line)

    async def rows(self) -> AsyncIterator[dict[str, Any]]:
        """One flat dict per item, in input order, streamed: its input row's columns (when this
        handle was submitted with `inputs`), else `custom_id`; then `output`, `status`, `error`
        (`"<type>: <message>"`), `output_json` and `finish_reason`; an `/v1/embeddings`
        batch's: `embedding` (a list of floats), `status` and `error`. For `pd.DataFrame(...)`."""
        if self.inputs is not None:
            check_columns(input_columns(self.inputs))
        async for item in self.results():
            yield flat_row(item, self.inputs, result_columns(self.info))

    async def openai_results(self) -> AsyncIterator[OutputLine]:
        """Finished items as OpenAI Batch output lines (pending items are left out)."""
        async for item in self.results():
            if (line := output_line(item, self.info)) is not None:
                yield line

    async def retry(self, include: Iterable[str] = ()) -> schemas.Batch:
        """Run this final batch's failed items again in place, and its `cancelled` or
        `expired` ones when `include` names them; succeeded items are kept, never sent again.
        The batch is running again: `await wait()` for its new end. An APIError 409 if it is
        not final or has nothing to retry. Not sent again after a broken connection (it may
        have been done): read the batch to see."""
        self.info = (await self.client.retry(self.id, include=include)).info
        return self.info

    async def cancel(self) -> schemas.Batch:
        """Ask the batch to stop: no new items start; finished results are kept."""
        response = await self.client._send("POST", req.batch_path(self.id, "/cancel"))
        self.info = schemas.Batch.model_validate_json(response.content)
        return self.info
